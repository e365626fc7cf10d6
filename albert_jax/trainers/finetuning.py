"""Fine-tuning on GLUE, SQuAD, RACE and your own files, the trainer behind `python -m albert_jax.finetune`.

`finetune` reads top to bottom, built from the same core as pretraining:
mesh → vocabulary, backbone and data → model (backbone from
`config.init_checkpoint`, task head fresh), AdamW and sharding → resume →
the loop (`loop.run`) with dev evaluation keeping the best checkpoint → final
predictions of the best checkpoint.

The training order is a function of (seed, step): every epoch is a seeded
permutation of the training rows, cut into global batches (the last partial
batch dropped, as the original's `drop_remainder`), grouped by length within
megabatches when `config.task.length_buckets` cuts batches to their rows'
length (`tasks.buckets`; training, evaluation and prediction alike). Resuming
therefore needs only the train state, and reproduces the uninterrupted run.

The workdir holds:
  config.json          the model config and the task (`checkpoints.load(WORKDIR)` gives the best parameters)
  experiment.json      the full experiment config of the latest start
  spiece.model         the vocabulary
  checkpoints/<step>/  orbax: the train state (resume)
  best/<step>/         orbax: the parameters with the best dev score so far, and the scores
  metrics.jsonl        training metrics, and dev scores after every evaluation
  tensorboard/         TensorBoard event files
  eval_results.json    the final dev scores of the best checkpoint (and its step)
  prediction files     GLUE <task>_<split>.tsv (dev) and submission files (test), SQuAD
                       predictions.json (v2.0: + null_odds.json and the official scores,
                       evaluate-v2.0.json; the XLNet head: + nbest_predictions.json),
                       RACE race_<split>.tsv, your own files classify_<split>.jsonl and tag_<split>.<conll|jsonl>
"""

import functools
import json
import operator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax.linen import partitioning as nn_partitioning

from albert_jax import checkpoints, config_lib, sharding, storage, tasks
from albert_jax import model as model_lib
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.storage import write_text_atomic
from albert_jax.tasks import buckets as buckets_lib
from albert_jax.tools import flops as flops_lib
from albert_jax.trainers import checkpointing, core, loop
from albert_jax.trainers.core import TrainingError
from albert_jax.trainers.metric_writer import MetricWriter

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The XLNet-style span head also reads where an answer may lie, and in training the gold start (teacher forcing).
XLNET_INPUTS = (*INPUTS, "p_mask")


# ---------------------------------------------------------------------------
# The model and its loss.


def task_model(spec: tasks.TaskSpec, model_config: model_lib.AlbertConfig, task_config=None) -> nn.Module:
  """The head model of a task; its `albert` submodule has the pretraining backbone's layout.

  `task_config` (config.task) gives the XLNet span head its beam sizes.
  """
  n_top = (
    {"start_n_top": task_config.start_n_top, "end_n_top": task_config.end_n_top} if spec.head == "span_xlnet" else {}
  )
  return model_lib.for_head(spec.head, model_config, spec.num_labels, **n_top)


def model_inputs(head: str, training: bool) -> tuple[str, ...]:
  """The batch columns a head's model reads, in training or in prediction."""
  if head == "span_xlnet":
    return (*XLNET_INPUTS, "start_positions") if training else XLNET_INPUTS
  return INPUTS


def task_losses(head: str, outputs, batch, answerability_loss_weight: float | None = None) -> dict[str, jax.Array]:
  """Sums and denominators: the loss (and, for classifiers, the correct predictions) over the batch.

  Classification and multiple choice: cross-entropy. Tagging: cross-entropy
  per labelled token (each word's first piece; `label` -100 elsewhere, as
  Hugging Face's ignore index), averaged over the batch's labelled tokens.
  Regression (STS-B): squared error. Spans: the mean of the start and end cross-entropies; the
  XLNet span head adds `answerability_loss_weight` (config.task) x the binary
  cross-entropy of its answerability logit against "no answer in this
  window" (the original's 0.5 x sigmoid cross-entropy).
  """
  if head == "span_xlnet":
    nll = lambda log_probs, positions: -jnp.take_along_axis(log_probs, positions[:, None], -1)[:, 0]
    per_example = 0.5 * (
      nll(outputs["start_log_probs"], batch["start_positions"]) + nll(outputs["end_log_probs"], batch["end_positions"])
    )
    labels = batch["is_impossible"].astype(jnp.float32)
    per_example += answerability_loss_weight * optax.sigmoid_binary_cross_entropy(outputs["cls_logits"], labels)
    return {"loss_sum": jnp.sum(per_example), "count": jnp.asarray(per_example.shape[0], jnp.float32)}
  if head == "span":
    xent = optax.softmax_cross_entropy_with_integer_labels
    per_example = 0.5 * (
      xent(outputs["start_logits"], batch["start_positions"]) + xent(outputs["end_logits"], batch["end_positions"])
    )
    return {"loss_sum": jnp.sum(per_example), "count": jnp.asarray(per_example.shape[0], jnp.float32)}
  labels = batch["label"]
  if head == "tagging":
    labelled = labels >= 0
    per_token = optax.softmax_cross_entropy_with_integer_labels(outputs, jnp.where(labelled, labels, 0))
    return {
      "loss_sum": jnp.sum(jnp.where(labelled, per_token, 0.0)),
      "count": jnp.sum(labelled).astype(jnp.float32),
      "correct": jnp.sum(labelled & (jnp.argmax(outputs, -1) == labels)).astype(jnp.float32),
    }
  if head == "regression":
    per_example = jnp.square(outputs.reshape(-1) - labels)
    return {"loss_sum": jnp.sum(per_example), "count": jnp.asarray(labels.shape[0], jnp.float32)}
  per_example = optax.softmax_cross_entropy_with_integer_labels(outputs, labels)
  return {
    "loss_sum": jnp.sum(per_example),
    "count": jnp.asarray(labels.shape[0], jnp.float32),
    "correct": jnp.sum(jnp.argmax(outputs, -1) == labels).astype(jnp.float32),
  }


def token_counts(model_config: model_lib.AlbertConfig, batch) -> dict[str, jax.Array]:
  """Sums over a batch for the log: real tokens, computed tokens (padding included), and the training FLOPs of the
  real tokens (each sequence at its own length: what MFU counts, so padding is not counted as useful work)."""
  lengths = jnp.sum(batch["attention_mask"], -1).astype(jnp.float32)  # per sequence (RACE: per choice)
  flops = flops_lib.train_flops_per_step(model_config, 1, lengths, 0, full_last_layer=True)
  return {
    "real_tokens": jnp.sum(lengths),
    "tokens": jnp.asarray(batch["input_ids"].size, jnp.float32),
    "flops": jnp.sum(flops),
  }


def _apply(model, head, params, batch, rng=None):
  return model.apply(
    {"params": params},
    **{k: batch[k] for k in model_inputs(head, training=rng is not None)},
    deterministic=rng is None,
    rngs=None if rng is None else {"dropout": rng},
  )


def denominators(batch, head: str = "classification"):
  """What `total_loss` divides by, for a whole batch: its examples (tagging: its labelled tokens, at least 1)."""
  if head == "tagging":
    return {"count": jnp.maximum(jnp.sum(batch["label"] >= 0), 1).astype(jnp.float32)}
  return {"count": jnp.asarray(batch["input_ids"].shape[0], jnp.float32)}


def total_loss(sums):
  return sums["loss_sum"] / sums["count"]


def summarize(sums: dict[str, float]) -> dict[str, float]:
  out = {"loss": sums["loss_sum"] / max(sums["count"], 1.0)}
  if "correct" in sums:
    out["accuracy"] = sums["correct"] / max(sums["count"], 1.0)
  return out


def describe(values: dict[str, float]) -> str:
  return "  ".join(f"{k} {values[k]:.4f}" for k in ("loss", "accuracy") if k in values)


def build(
  config, model_config: model_lib.AlbertConfig, spec: tasks.TaskSpec, input_shape: tuple[int, ...], mesh, rules
) -> core.Setup:
  """The task model, AdamW and the sharded init / train / predict steps (`core.build`); `eval_step` predicts.

  `input_shape` is one example's input_ids shape: (T,), or (choices, T).
  """
  model = task_model(spec, model_config, config.task)
  init_params = lambda r: model.init(r, jnp.zeros((1, *input_shape), jnp.int32))["params"]
  loss_options = (
    {"answerability_loss_weight": config.task.answerability_loss_weight} if spec.head == "span_xlnet" else {}
  )
  return core.build(
    config,
    init_params,
    metric_sums=lambda params, batch, rng: {
      **task_losses(spec.head, _apply(model, spec.head, params, batch, rng), batch, **loss_options),
      **token_counts(model_config, batch),
    },
    total_loss=total_loss,
    denominators=functools.partial(denominators, head=spec.head),
    eval_fn=lambda params, batch: _apply(model, spec.head, params, batch),
    mesh=mesh,
    rules=rules,
  )


# ---------------------------------------------------------------------------
# Vocabulary, backbone, data and predictions.


def load_vocabulary(config, workdir: epath.Path) -> tokenizer_lib.Tokenizer:
  """config.task.vocab, else the checkpoint's own vocabulary; copied to WORKDIR/spiece.model."""
  source = config.task.vocab or (config.init_checkpoint and checkpoints.find_vocab(config.init_checkpoint))
  if not source:
    where = f"{config.init_checkpoint} has no spiece.model" if config.init_checkpoint else "no init_checkpoint is set"
    raise TrainingError(
      f"No vocabulary: {where}. Set --config.task.vocab to the SentencePiece model the backbone "
      "was trained with (e.g. the official ALBERT spiece.model)."
    )
  source = storage.path(source)
  if not source.is_file():
    raise TrainingError(f"config.task.vocab={str(source)!r} does not exist; point it at a SentencePiece model.")
  target = workdir / "spiece.model"
  if jax.process_index() == 0 and source != target:
    storage.copy(source, target)
  core.sync("vocabulary")
  return tokenizer_lib.Tokenizer(target)


def load_backbone(config, tokenizer) -> tuple[model_lib.AlbertConfig, Any]:
  """The model config and the pretrained `AlbertForPreTraining` params (None for a random init).

  The shape comes from the checkpoint; dropout, dtype and remat from
  `config.model` (`config_lib.FINETUNING_MODEL_FIELDS`).
  """
  if config.init_checkpoint:
    pretrained_config, params = checkpoints.load(config.init_checkpoint)
    runtime = {k: config.model[k] for k in config_lib.FINETUNING_MODEL_FIELDS}
    model_config = pretrained_config.replace(**runtime)
    logging.info("Backbone from %s: %s", config.init_checkpoint, model_config)
  else:
    model_config, params = config_lib.model_config(config), None
    if model_config.vocab_size == 0:  # 0 = the size of the vocabulary in use
      model_config = model_config.replace(vocab_size=tokenizer.vocab_size)
    logging.warning(
      "config.init_checkpoint is empty: the backbone is randomly initialised (an ablation, not fine-tuning)."
    )
  core.check_model_fits(
    model_config,
    tokenizer,
    "task.max_seq_length",
    config.task.max_seq_length,
    "use the vocabulary the backbone was trained with (--config.task.vocab)",
  )
  return model_config, params


def matching_head(config, spec: tasks.TaskSpec, pretrained) -> tuple[str, ...]:
  """The head modules to take from config.init_checkpoint with the backbone: none (a fresh head) unless it holds a
  fine-tuned head of this task's kind (a fine-tuning workdir, or a Hugging Face directory of the head's class) with
  the same labels."""
  modules = checkpoints.task_head(pretrained) if pretrained is not None else ()
  info = checkpoints.head_info(config.init_checkpoint) if modules else None
  if info is None:
    return ()
  labelled = spec.head in ("classification", "tagging") and info.labels and spec.label_names
  if info.head != spec.head or (labelled and tuple(info.labels) != tuple(spec.label_names)):
    logging.info(
      "%s holds a %s head with labels %s; %s needs a %s head with labels %s: the head starts fresh.",
      config.init_checkpoint,
      info.head,
      info.labels,
      spec.name,
      spec.head,
      spec.label_names,
    )
    return ()
  logging.info("The %s head (%s) comes from %s too.", info.head, ", ".join(modules), config.init_checkpoint)
  return modules


def with_backbone(state: core.TrainState, pretrained, state_shardings, heads: tuple[str, ...] = ()) -> core.TrainState:
  """`state` with its `albert` parameters (and those of the `heads` modules) replaced by the pretrained ones,
  placed in their shards.

  The pretraining-only parts (MLM and SOP heads, the pooler for span
  heads) are left out; a missing or misshapen tensor is an error.
  """

  def take(fresh, loaded, shardings, path):
    if isinstance(fresh, dict):
      return {
        k: take(fresh[k], loaded.get(k) if isinstance(loaded, dict) else None, shardings[k], f"{path}/{k}")
        for k in fresh
      }
    if loaded is None or tuple(np.shape(loaded)) != tuple(fresh.shape):
      found = "missing" if loaded is None else f"of shape {tuple(np.shape(loaded))}"
      raise TrainingError(f"init_checkpoint parameter {path} is {found}; the task model needs {tuple(fresh.shape)}.")
    return jax.device_put(np.asarray(loaded, fresh.dtype), shardings)

  taken = {
    name: take(state.params[name], pretrained["params"][name], state_shardings.params[name], name)
    for name in ("albert", *heads)
  }
  return state.replace(params={**state.params, **taken})


@functools.lru_cache(maxsize=2)
def _epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batches_per_epoch(num_examples: int, batch_size: int) -> int:
  if num_examples < batch_size:
    raise TrainingError(
      f"The training split has {num_examples} examples, fewer than batch_size={batch_size}; "
      "lower the batch size or use more data."
    )
  return num_examples // batch_size


def batch_rows(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Rows of the training set in the global batch of `step` (0-based): seeded per-epoch permutations."""
  epoch, i = divmod(step, batches_per_epoch(num_examples, batch_size))
  return _epoch_order(num_examples, seed, epoch)[i * batch_size : (i + 1) * batch_size]


def task_metadata(config, spec: tasks.TaskSpec) -> dict[str, Any]:
  """What the workdir's config.json says of the task, for `predict` and `export` to rebuild the head.

  task, head and num_labels (`tasks.TaskSpec`); id2label, the name of each
  output (None for span heads); max_seq_length; text_fields where the task
  reads named columns (your own files).
  """
  meta = {
    "task": spec.name,
    "head": spec.head,
    "num_labels": spec.num_labels,
    "id2label": None if spec.label_names is None else list(spec.label_names),
    "max_seq_length": int(config.task.max_seq_length),
  }
  if spec.name == "classify":
    meta["text_fields"] = list(tasks.classify.text_fields(config.task))
  return meta


class TrainBatches:
  """`next_batch` of fine-tuning: step -> the global batch of that step, cut to its length bucket.

  Without buckets the rows are `batch_rows`'. With buckets, each epoch's
  permutation is regrouped by length (`buckets.epoch_order`, its shuffle
  seeded by (seed, epoch)), so the plan is the same on every process and
  mesh and after a resume.
  """

  def __init__(self, data: tasks.TaskData, config):
    self.features, self.batch_size, self.seed = data.features, config.batch_size, config.seed
    self.buckets = buckets_lib.resolve(config.task)
    self.lengths = buckets_lib.row_lengths(data.features)
    self.per_epoch = batches_per_epoch(len(data), self.batch_size)
    self.epoch, self.order = -1, None

  def rows(self, step: int) -> np.ndarray:
    if not self.buckets:
      return batch_rows(len(self.lengths), self.batch_size, self.seed, step)
    epoch, i = divmod(step, self.per_epoch)
    if epoch != self.epoch:
      order = _epoch_order(len(self.lengths), self.seed, epoch)[: self.per_epoch * self.batch_size]
      rng = np.random.default_rng([self.seed, epoch, 1])
      self.epoch, self.order = epoch, buckets_lib.epoch_order(order, self.lengths, self.batch_size, rng)
    return self.order[i * self.batch_size : (i + 1) * self.batch_size]

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    rows = self.rows(step)
    return buckets_lib.batch({k: v[rows] for k, v in self.features.items()}, self.buckets)


def predict(setup: core.Setup, params, data: tasks.TaskData, batch_size: int, mesh, inputs=INPUTS, buckets=()) -> Any:
  """The head's outputs for every row of `data`, in order, as numpy (the last batch padded, then trimmed).

  Every process holds all the rows and feeds those its devices hold (`sharding.local_rows`), so the replicated
  outputs come back in the rows' order on any mesh.

  `inputs`: the columns the head reads (`model_inputs(head, training=False)`).
  `buckets` (`buckets.resolve(config.task)`): the rows are run longest first,
  each batch cut to its length bucket, and outputs with a token axis padded
  back to `max_seq_length` with zeros (no post-processing reads past a row's
  tokens).
  """
  features = {k: data.features[k] for k in inputs}
  n = len(data)
  order = np.argsort(-buckets_lib.row_lengths(data.features), kind="stable") if buckets else np.arange(n)
  full = None
  outputs = []
  for start in range(0, n, batch_size):
    rows = {k: v[order[start : start + batch_size]] for k, v in features.items()}
    pad = batch_size - len(rows["input_ids"])
    rows = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]) for k, v in rows.items()}
    if full is None:  # the outputs' shapes at max_seq_length
      full = jax.eval_shape(setup.eval_step, params, rows)
    batch = sharding.local_rows(buckets_lib.batch(rows, buckets), mesh)
    out = jax.device_get(setup.eval_step(params, sharding.global_batch(batch, mesh)))
    out = jax.tree.map(lambda x, f: np.pad(x, [(0, b - a) for a, b in zip(x.shape, f.shape)]), out, full)
    outputs.append(jax.tree.map(operator.itemgetter(slice(0, batch_size - pad)), out))
  outputs = jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)
  return jax.tree.map(operator.itemgetter(np.argsort(order)), outputs)


def evaluate(config, setup: core.Setup, params, eval_data: dict[str, tasks.TaskData], mesh) -> dict[str, dict]:
  """The task's official scores on every evaluation split."""
  inputs = model_inputs(tasks.get_spec(config.task).head, training=False)
  return {
    split: tasks.evaluate(
      config.task,
      predict(setup, params, data, config.eval_batch_size, mesh, inputs, buckets_lib.resolve(config.task)),
      data,
    )
    for split, data in eval_data.items()
  }


def _load_splits(config, tokenizer, splits, optional: bool) -> dict[str, tasks.TaskData]:
  """Loaded splits by name; with `optional`, splits whose files are absent are skipped (GLUE test sets)."""
  loaded = {}
  for split in splits:
    try:
      loaded[split] = tasks.load_task(config.task, tokenizer, split)
    except FileNotFoundError as e:
      if not optional:
        raise
      logging.info("No %s predictions: %s", split, e)
  return loaded


# ---------------------------------------------------------------------------
# The trainer.


def finetune(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Fine-tunes as configured, resuming from the newest checkpoint in `workdir`.

  Returns:
    {'best_step': step, <eval split>: scores of the best checkpoint}, also
    written to WORKDIR/eval_results.json; {} when preempted.
  """
  # Mesh.
  workdir, mesh, rules = core.start(config, workdir)
  if config.eval_batch_size % sharding.data_parallel_size(mesh):
    raise TrainingError(
      f"config.eval_batch_size={config.eval_batch_size} is not divisible by the data-parallel "
      f"size {sharding.data_parallel_size(mesh)}; choose a multiple."
    )

  # Vocabulary, backbone and data.
  spec = tasks.get_spec(config.task)
  buckets_lib.resolve(config.task)  # a bad config.task.length_buckets is refused before any work
  tokenizer = load_vocabulary(config, workdir)
  model_config, pretrained = load_backbone(config, tokenizer)
  if jax.process_index() == 0:
    # The albert_jax checkpoint format plus the task: `checkpoints.load(WORKDIR)` reads the best parameters.
    meta = {"format": checkpoints.FORMAT, "format_version": checkpoints.FORMAT_VERSION, **task_metadata(config, spec)}
    write_text_atomic(workdir / "config.json", json.dumps({**meta, "model": model_config.to_dict()}, indent=2))
    write_text_atomic(workdir / "experiment.json", config.to_json_best_effort(indent=2, sort_keys=True))
  train_data = tasks.load_task(config.task, tokenizer, spec.train_split)
  eval_data = _load_splits(config, tokenizer, spec.eval_splits, optional=False)

  # Model, optimizer and sharding.
  setup = build(config, model_config, spec, train_data.features["input_ids"].shape[1:], mesh, rules)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))

    # Checkpoints: resume from the newest; the best dev parameters are kept apart.
    manager = checkpointing.checkpoint_manager(workdir / "checkpoints", ("state",), config.keep_checkpoints)
    best = BestCheckpoint(checkpointing.checkpoint_manager(workdir / "best", ("params", "scores"), 1), spec)
    state = _initial_state(setup, manager, init_rng, pretrained, matching_head(config, spec, pretrained))
    del pretrained

    # The loop.
    logging.info(
      "Fine-tuning %s from %s: %d training rows, %d steps of %d; %d device(s), mesh %s.",
      spec.name,
      config.init_checkpoint or "a random init",
      len(train_data),
      config.num_train_steps,
      config.batch_size,
      jax.device_count(),
      dict(mesh.shape),
    )
    writer = MetricWriter(workdir)
    train_batches = TrainBatches(train_data, config)

    def evaluate_and_keep_best(state):
      scores = evaluate(config, setup, state.params, eval_data, mesh)
      best.update(int(jax.device_get(state.step)), scores, state.params)
      return scores

    trainer = loop.Trainer(
      setup=setup,
      next_batch=lambda step: sharding.local_rows(train_batches(step), mesh),
      save_items=lambda state: dict(state=ocp.args.StandardSave(state)),
      summarize=summarize,
      describe=describe,
      evaluate=evaluate_and_keep_best,
      tokens_per_batch=config.batch_size * train_data.features["input_ids"][0].size,
      workdir=workdir,
    )
    outcome = loop.run(config, trainer, state, mesh, manager, writer, dropout_rng)
    best.manager.wait_until_finished()
    writer.close()
    results = (
      {}
      if outcome.preempted
      else _final_predictions(config, spec, setup, outcome.state, best.manager, eval_data, tokenizer, mesh, workdir)
    )
    manager.close()
    best.manager.close()
  return results


def _initial_state(setup: core.Setup, manager, init_rng, pretrained, heads: tuple[str, ...]) -> core.TrainState:
  """The newest checkpoint's state; else a fresh one with the pretrained backbone (and `heads`), if any, put in."""
  restored = checkpointing.restore_newest(
    manager, checkpointing.composite(dict(state=ocp.args.StandardRestore(setup.abstract_state)))
  )
  if restored is not None:
    return restored["state"]
  state = setup.init(init_rng)
  return state if pretrained is None else with_backbone(state, pretrained, setup.state_shardings, heads)


class BestCheckpoint:
  """The parameters with the best dev score so far, kept apart in WORKDIR/best (survives a resume)."""

  def __init__(self, manager, spec: tasks.TaskSpec):
    self.manager, self.spec = manager, spec
    step = manager.latest_step()
    self.best = (
      None if step is None else manager.restore(step, args=ocp.args.Composite(scores=ocp.args.JsonRestore()))["scores"]
    )

  def update(self, step: int, scores: dict[str, dict[str, float]], params):
    score = scores[self.spec.eval_splits[0]][self.spec.main_metric]
    if self.best is None or _better(score, self.best["score"]):
      self.best = {"step": step, "score": score}
      self.manager.save(
        step,
        args=ocp.args.Composite(params=ocp.args.StandardSave(params), scores=ocp.args.JsonSave(self.best)),
        force=True,
      )
      # Kept before the loop saves the step: a run stopped after that save resumes past this evaluation.
      self.manager.wait_until_finished()


def _better(score: float, best: float) -> bool:
  """Higher is better; an undefined score (NaN: Pearson of constant predictions) is worse than any other."""
  return not np.isnan(score) and (np.isnan(best) or score > best)


def _final_predictions(config, spec, setup, state, best_manager, eval_data, tokenizer, mesh, workdir):
  """Dev scores and prediction files of the best checkpoint (the last state when none was kept), test files."""
  best_step = best_manager.latest_step()
  params = state.params
  if best_step is not None:
    params = best_manager.restore(
      best_step, args=ocp.args.Composite(params=ocp.args.StandardRestore(setup.abstract_state.params))
    )["params"]
  results = {"best_step": int(jax.device_get(state.step)) if best_step is None else best_step}
  test_data = _load_splits(config, tokenizer, spec.test_splits, optional=True)
  for split, data in {**eval_data, **test_data}.items():
    inputs = model_inputs(spec.head, training=False)
    outputs = predict(setup, params, data, config.eval_batch_size, mesh, inputs, buckets_lib.resolve(config.task))
    if split in eval_data or spec.head == "multiple_choice":  # RACE's test set is labelled
      results[split] = tasks.evaluate(config.task, outputs, data)
    if jax.process_index() == 0:
      with storage.local_mirror(workdir) as folder:  # the task writers write local files; a bucket gets copies
        paths = tasks.write_predictions(config.task, outputs, data, str(folder.local))
      logging.info("Wrote %s", ", ".join(str(folder.target_of(p)) for p in paths))
  if jax.process_index() == 0:
    write_text_atomic(workdir / "eval_results.json", json.dumps(results, indent=2, sort_keys=True))
  logging.info(
    "Best checkpoint (step %d): %s",
    results["best_step"],
    json.dumps({k: v for k, v in results.items() if k != "best_step"}),
  )
  return results

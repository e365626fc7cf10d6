"""ALBERT pretraining (MLM + SOP), the trainer behind `python -m albert_jax.train`.

`train_and_evaluate` reads top to bottom: mesh → vocabulary and data → model,
optimizer and sharding → resume (or `init_checkpoint`) → the loop (`loop.run`,
shared with fine-tuning) → the final checkpoint. What is particular to
pretraining is here: the MLM + sentence loss as metric sums, the streaming
data, continued pretraining from any checkpoint, and the shared layer gathered
once per step under FSDP. The same code runs on one CPU, simulated CPU
devices, a GPU box and a TPU pod.

`config.sentence_objective` is the paper's Table 5 ablation: 'sop' (ALBERT's
sentence order), 'nsp' (BERT's next sentence) or 'none' (MLM only: the sentence
head gets no gradient). Evaluation reports MLM, SOP and NSP accuracy whatever
the objective, each sentence task on its own held-out pairs, so each run fills
one row of the table.

`config.init_checkpoint=SRC` continues pretraining from any checkpoint
`checkpoints.load` reads: the model shape and vocabulary come from SRC (a model
field set on the command line must agree with it), the heads SRC lacks start
from the run's seed and the log names them, the optimizer is new and the step
starts at 0, held-out metrics are logged at step 0 (SRC's own) and the starting
state is saved as checkpoint 0, so that a restart resumes the workdir and never
reads SRC again.

The workdir holds:
  config.json         the model config (albert_jax checkpoint format, so tools can read the workdir)
  experiment.json     the full experiment config of the latest start
  spiece.model        the vocabulary (copied, or trained on the corpus)
  checkpoints/<step>/ orbax: the train state and every process's data-iterator position
  metrics.jsonl       one JSON object per log and eval step
  tensorboard/        TensorBoard event files
  data/               prepared ArrayRecord datasets
"""

import dataclasses
import json
import pathlib
from collections.abc import Callable, Collection

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util
from flax.linen import partitioning as nn_partitioning

from albert_jax import checkpoints, config_lib, sharding, storage
from albert_jax import model as model_lib
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.data import pipeline, vocab
from albert_jax.storage import write_text_atomic
from albert_jax.tools import flops as flops_lib
from albert_jax.trainers import checkpointing, core, loop
from albert_jax.trainers.core import TrainingError
from albert_jax.trainers.metric_writer import MetricWriter

# ---------------------------------------------------------------------------
# The loss.


OBJECTIVES = (*pipeline.SENTENCE_TASKS, "none")


def pretraining_losses(outputs, batch, sentence_task: str | None = "sop"):
  """Sums and denominators of the MLM loss and accuracy, and of the sentence head's on `sentence_task`'s pairs
  (named after it: 'sop_loss_sum', ...; None: MLM only)."""
  mlm_logits = outputs["mlm_logits"]
  labels = batch["masked_lm_ids"]
  weights = batch["masked_lm_weights"].astype(jnp.float32)
  mlm_xent = optax.softmax_cross_entropy_with_integer_labels(mlm_logits, labels)
  sums = {
    "mlm_loss_sum": jnp.sum(mlm_xent * weights),
    "mlm_correct": jnp.sum((jnp.argmax(mlm_logits, -1) == labels) * weights),
    "mlm_count": jnp.sum(weights),
  }
  if sentence_task:
    sentence_labels = batch["sentence_order_label"]
    sentence_xent = optax.softmax_cross_entropy_with_integer_labels(outputs["sop_logits"], sentence_labels)
    correct = jnp.argmax(outputs["sop_logits"], -1) == sentence_labels
    sums[f"{sentence_task}_loss_sum"] = jnp.sum(sentence_xent)
    sums[f"{sentence_task}_correct"] = jnp.sum(correct).astype(jnp.float32)
    sums[f"{sentence_task}_count"] = jnp.asarray(sentence_labels.shape[0], jnp.float32)
  return sums


def training_task(objective: str) -> str | None:
  """The sentence task whose loss a run with `config.sentence_objective=objective` trains (None: MLM only)."""
  return None if objective == "none" else objective


def training_pairs(objective: str) -> str:
  """The sentence pairs a run trains with: its task's ('none' trains on SOP pairs, their labels unused)."""
  return training_task(objective) or "sop"


def _apply(model, params, batch, rng=None):
  return model.apply(
    {"params": params},
    batch["input_ids"],
    batch["input_mask"],
    batch["token_type_ids"],
    batch["masked_lm_positions"],
    deterministic=rng is None,
    rngs=None if rng is None else {"dropout": rng},
  )


def denominators(batch, sentence_task: str | None = "sop"):
  """What `total_loss` divides by, for a whole batch: masked tokens (they differ from sequence to sequence) and
  sequences."""
  counts = {"mlm_count": jnp.sum(batch["masked_lm_weights"].astype(jnp.float32))}
  if sentence_task:
    counts[f"{sentence_task}_count"] = jnp.asarray(batch["sentence_order_label"].shape[0], jnp.float32)
  return counts


def total_loss(sums):
  """MLM cross-entropy per masked token plus the sentence task's cross-entropy per sequence, as ALBERT sums them
  (MLM alone when the sums hold no sentence task)."""
  loss = sums["mlm_loss_sum"] / jnp.maximum(sums["mlm_count"], 1.0)
  for task in pipeline.SENTENCE_TASKS:
    if f"{task}_count" in sums:
      loss = loss + sums[f"{task}_loss_sum"] / sums[f"{task}_count"]
  return loss


def summarize(sums: dict[str, float], objective: str = "sop") -> dict[str, float]:
  """Per-example metrics from summed metrics (sums plus denominators); 'loss' is the trained objective's."""
  mlm_count = max(sums["mlm_count"], 1.0)
  out = {"mlm_loss": sums["mlm_loss_sum"] / mlm_count, "mlm_accuracy": sums["mlm_correct"] / mlm_count}
  for task in pipeline.SENTENCE_TASKS:
    if f"{task}_count" in sums:
      count = max(sums[f"{task}_count"], 1.0)
      out[f"{task}_loss"] = sums[f"{task}_loss_sum"] / count
      out[f"{task}_accuracy"] = sums[f"{task}_correct"] / count
  out["loss"] = out["mlm_loss"] + out.get(f"{objective}_loss", 0.0)
  return out


def describe(values: dict[str, float]) -> str:
  text = f"loss {values['loss']:.4f}  mlm {values['mlm_loss']:.4f} (acc {values['mlm_accuracy']:.3f})"
  for task in pipeline.SENTENCE_TASKS:
    if f"{task}_loss" in values:
      text += f"  {task} {values[f'{task}_loss']:.4f} (acc {values[f'{task}_accuracy']:.3f})"
  return text


# ---------------------------------------------------------------------------
# Setup.


def shared_layer_gather(model_config: model_lib.AlbertConfig, param_shardings) -> Callable:
  """params -> params with the shared layer's weights constrained whole over 'fsdp' (still split over 'tensor').

  Under FSDP, XLA:TPU does not hoist the all-gather of a loop-invariant weight
  out of the scanned layer loop: it gathers the one shared layer again for
  every layer, forward and backward, and all-reduces its gradient once per
  layer. Gathering before the loop moves that traffic to once per step (one
  all-gather in, one reduce-scatter of the summed gradient out), at the cost
  of one layer's weights and gradient held whole per device. Stacked
  per-layer or per-group parameters stay sharded: gathering them would undo
  FSDP.
  """

  def is_shared(path) -> bool:
    keys = [str(getattr(k, "key", k)) for k in path]
    if "encoder" not in keys:
      return False
    broadcast = model_config.sharing == "all" and model_config.num_hidden_groups == 1
    return (broadcast and "layer_group" in keys) or any(k.startswith("shared_") for k in keys)

  def gather(path, x, s):
    if not is_shared(path) or "fsdp" not in jax.tree.leaves(tuple(s.spec)):
      return x
    spec = jax.sharding.PartitionSpec(*(sharding.without_axis(e, "fsdp") for e in s.spec))
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(s.mesh, spec))

  return lambda params: jax.tree.map_with_path(gather, params, param_shardings)


def build(config, model_config: model_lib.AlbertConfig, mesh, rules) -> core.Setup:
  """AlbertForPreTraining, LAMB and the sharded init / train / eval steps (`core.build`); the loss is
  `config.sentence_objective`'s."""
  model = model_lib.AlbertForPreTraining(model_config)
  init_params = lambda r: model.init(r, jnp.zeros((1, config.data.max_seq_length), jnp.int32))["params"]
  task = training_task(config.sentence_objective)
  return core.build(
    config,
    init_params,
    metric_sums=lambda params, batch, rng: pretraining_losses(_apply(model, params, batch, rng), batch, task),
    total_loss=total_loss,
    denominators=lambda batch: denominators(batch, task),
    # The sentence head scored on whatever pairs the batch holds; `evaluate` names the scores by the pairs' task.
    eval_fn=lambda params, batch: pretraining_losses(_apply(model, params, batch), batch, "sop"),
    mesh=mesh,
    rules=rules,
    prepare_params=lambda shardings: shared_layer_gather(model_config, shardings),
  )


def _model_config(config, tokenizer, source_config=None, command_line=()) -> model_lib.AlbertConfig:
  """`config.model`, or with init_checkpoint its model (`_continued_model`); checked against the vocabulary."""
  if source_config is not None:
    model_config = _continued_model(config, source_config, command_line)
    vocabulary_fix = f"use the vocabulary {config.init_checkpoint} was trained with"
  else:
    model_config = config_lib.model_config(config)
    if config.model.vocab_size == 0:  # 0 = the size of the vocabulary in use (e.g. one trained on the corpus)
      model_config = model_config.replace(vocab_size=tokenizer.vocab_size)
    vocabulary_fix = f"set --config.model.vocab_size={tokenizer.vocab_size} (or 0 to follow the vocabulary)"
  core.check_model_fits(model_config, tokenizer, "data.max_seq_length", config.data.max_seq_length, vocabulary_fix)
  return model_config


def _continued_model(config, source_config, command_line) -> model_lib.AlbertConfig:
  """init_checkpoint's model shape with this run's dropout, dtype, remat and attention
  (`config_lib.FINETUNING_MODEL_FIELDS`, as fine-tuning takes them). A shape field set on the command line
  (`command_line`: 'model.hidden_size', ...) that disagrees with the checkpoint is an error: the experiment file's
  shape is replaced silently, the user's own flag is not."""
  runtime = config_lib.FINETUNING_MODEL_FIELDS
  source_values = source_config.to_dict()
  for name in command_line:
    field = name.removeprefix("model.")
    if name.startswith("model.") and field in source_values and field not in runtime:
      if config.model[field] != source_values[field]:
        raise TrainingError(
          f"--config.model.{field}={config.model[field]!r} disagrees with config.init_checkpoint="
          f"{config.init_checkpoint}, whose {field} is {source_values[field]!r}: the model comes from the checkpoint; "
          f"drop --config.model.{field} (or pretrain from scratch without init_checkpoint)."
        )
  return source_config.replace(**{k: config.model[k] for k in runtime})


def _starting_point(config, workdir: pathlib.Path, manager) -> tuple[model_lib.AlbertConfig | None, dict | None]:
  """What config.init_checkpoint gives this start: (its model config, its params) when the run starts from it;
  (the workdir's model config, None) when the workdir has a checkpoint to resume (SRC is not read again);
  (None, None) without init_checkpoint."""
  if not config.init_checkpoint:
    return None, None
  if manager.all_steps():
    logging.info("%s has checkpoints: resuming it (init_checkpoint is not read again).", workdir)
    saved = json.loads((workdir / "config.json").read_text())["model"]
    return model_lib.AlbertConfig.from_dict(saved), None
  model_config, params = checkpoints.load(config.init_checkpoint, complete=False)
  logging.info("Continuing pretraining from %s at step 0 with a new optimizer.", config.init_checkpoint)
  return model_config, params


def with_source_params(state: core.TrainState, params, state_shardings, source: str, seed: int) -> core.TrainState:
  """`state` (freshly initialised) with every parameter `params` has, placed in its shards; the parameters the
  source lacks (a head: the SOP classifier of an `AlbertForMaskedLM` directory, the MLM head of a fine-tuning
  workdir) keep their initialisation, and the log names them. A tensor of another shape is an error."""
  fresh = traverse_util.flatten_dict(state.params, sep="/")
  loaded = traverse_util.flatten_dict(params["params"], sep="/")
  places = traverse_util.flatten_dict(state_shardings.params, sep="/")
  for path, value in loaded.items():
    if path in fresh and tuple(np.shape(value)) != tuple(fresh[path].shape):
      raise TrainingError(
        f"init_checkpoint parameter {path} has shape {tuple(np.shape(value))}; the model needs "
        f"{tuple(fresh[path].shape)}."
      )
  missing = sorted({path.rsplit("/", 1)[0] for path in fresh if path not in loaded})
  if missing:
    logging.warning("%s has no %s: initialised fresh (config.seed=%d).", source, ", ".join(missing), seed)
  unused = sorted({path.rsplit("/", 1)[0] for path in loaded if path not in fresh})
  if unused:
    logging.info("Not used from %s (no place in AlbertForPreTraining): %s.", source, ", ".join(unused))
  merged = {
    path: jax.device_put(np.asarray(loaded[path], value.dtype), places[path]) if path in loaded else value
    for path, value in fresh.items()
  }
  return state.replace(params=traverse_util.unflatten_dict(merged, sep="/"))


def _check_workdir_model(workdir: pathlib.Path, model_config: model_lib.AlbertConfig):
  """Refuse to resume a workdir trained with another model shape, naming the fields that differ."""
  config_file = workdir / "config.json"
  if config_file.exists() and (workdir / "checkpoints").exists():
    saved = json.loads(config_file.read_text()).get("model", {})
    current = model_config.to_dict()
    shape_fields = [
      f.name
      for f in dataclasses.fields(model_lib.AlbertConfig)
      if f.name
      not in (
        "dtype",
        "remat_policy",
        "scan_unroll",
        "attention",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "classifier_dropout_prob",
      )
    ]
    differ = [
      f"{k}: checkpoint {saved.get(k)!r} vs config {current[k]!r}"
      for k in shape_fields
      if k in saved and saved[k] != current[k]
    ]
    if differ:
      raise TrainingError(
        f"{workdir} holds checkpoints of another model ({'; '.join(differ)}). Use a new --workdir "
        "or the matching config."
      )


def _write_workdir_config(workdir, config, model_config):
  if jax.process_index() == 0:
    write_text_atomic(
      workdir / "config.json",
      json.dumps(
        {"format": checkpoints.FORMAT, "format_version": checkpoints.FORMAT_VERSION, "model": model_config.to_dict()},
        indent=2,
        sort_keys=True,
      ),
    )
    write_text_atomic(workdir / "experiment.json", config.to_json_best_effort(indent=2, sort_keys=True))


def _vocabulary(config, workdir: pathlib.Path, init_checkpoint: str = "") -> tokenizer_lib.Tokenizer:
  """The run's vocabulary in WORKDIR/spiece.model: the one shipped with `init_checkpoint`, else copied from
  config.data.vocab, or trained on the corpus."""
  target = workdir / "spiece.model"
  if not target.exists():
    shipped = init_checkpoint and checkpoints.find_vocab(init_checkpoint)
    if init_checkpoint and not shipped and not config.data.vocab:
      raise TrainingError(
        f"config.init_checkpoint={init_checkpoint} has no spiece.model; set --config.data.vocab to the "
        "SentencePiece model it was trained with."
      )
    if jax.process_index() == 0:
      if shipped:
        storage.copy(shipped, target)
      else:
        vocab.write(config.data, target)
  core.sync("vocabulary")
  return tokenizer_lib.Tokenizer(target)


# ---------------------------------------------------------------------------
# The trainer.


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, command_line: Collection[str] = ()
) -> dict[str, float]:
  """Pretrains as configured, resuming from the newest checkpoint in `workdir`; returns the last metrics.

  `command_line` names the config fields set on the command line ('model.hidden_size', ...: what
  `config_flags.get_override_values` gives); with init_checkpoint, a model field among them must agree with it.
  """
  if config.sentence_objective not in OBJECTIVES:
    raise ValueError(f"config.sentence_objective={config.sentence_objective!r}: use one of {OBJECTIVES}.")
  # Mesh.
  workdir, mesh, rules = core.start(config, workdir)
  manager = checkpointing.checkpoint_manager(workdir / "checkpoints", ("state", "data_iter"), config.keep_checkpoints)
  source_config, source_params = _starting_point(config, workdir, manager)

  # Vocabulary and data.
  tokenizer = _vocabulary(config, workdir, config.init_checkpoint if source_params is not None else "")
  model_config = _model_config(config, tokenizer, source_config, command_line)
  _check_workdir_model(workdir, model_config)
  _write_workdir_config(workdir, config, model_config)
  data_dir = config.data.data_dir or str(workdir / "data")
  if jax.process_index() == 0:  # prepare once, before the other processes read
    pipeline.document_source(config.data, tokenizer, "train", data_dir)
  core.sync("data")
  pairs = training_pairs(config.sentence_objective)
  # This process reads the data shards whose rows its devices hold (not necessarily consecutive ones on a pod).
  num_shards, shards = sharding.data_shards(mesh, config.batch_size, config.data.num_shards)
  stream = lambda split, task=pairs: pipeline.make_process_iterator(
    config.data,
    tokenizer,
    config.batch_size,
    config.seed,
    split,
    num_shards=num_shards,
    shards=shards,
    data_dir=data_dir,
    model_vocab_size=model_config.vocab_size,
    sentence_task=task,
  )
  train_iter = stream("train")

  # Model, optimizer and sharding.
  setup = build(config, model_config, mesh, rules)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))

    # Checkpoints: resume from the newest complete one; else start from init_checkpoint or a random init.
    restored = checkpointing.restore_newest(
      manager,
      checkpointing.composite(
        dict(
          state=ocp.args.StandardRestore(setup.abstract_state), data_iter=grain.checkpoint.CheckpointRestore(train_iter)
        )
      ),
    )
    state = setup.init(init_rng) if restored is None else restored["state"]
    if restored is None and source_params is not None:
      state = with_source_params(state, source_params, setup.state_shardings, config.init_checkpoint, config.seed)

    # The loop.
    step_flops = flops_lib.train_flops_per_step(
      model_config, config.batch_size, config.data.max_seq_length, config.data.max_predictions_per_seq
    )
    c = model_config
    logging.info(
      "Model %s: %d layers sharing %s, hidden %d, embedding %d, %d pieces, %s; %d device(s), mesh %s; "
      "%.3g FLOPs per step; sentence objective %s (experiment.json has the whole config).",
      config.model.preset,
      c.num_hidden_layers,
      c.sharing,
      c.hidden_size,
      c.embedding_size,
      c.vocab_size,
      c.dtype,
      jax.device_count(),
      dict(mesh.shape),
      step_flops,
      config.sentence_objective,
    )
    writer = MetricWriter(workdir)
    trainer = loop.Trainer(
      setup=setup,
      next_batch=loop.batches(train_iter),
      save_items=lambda state: dict(
        state=ocp.args.StandardSave(state), data_iter=grain.checkpoint.CheckpointSave(train_iter)
      ),
      summarize=lambda sums: summarize(sums, config.sentence_objective),
      describe=describe,
      evaluate=lambda state: evaluate(config, stream, setup.eval_step, state.params, mesh),
      tokens_per_batch=config.batch_size * config.data.max_seq_length,
      flops_per_step=step_flops,
      workdir=workdir,
    )
    if restored is None and source_params is not None:
      for name, scores in (trainer.evaluate(state) if config.eval_every_steps else {}).items():  # SRC's own scores
        logging.info("%s at step 0 (init_checkpoint): %s", name, " ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        writer.write(0, name, scores)
      # The starting point as step 0: from here on a restart resumes the workdir and never reads SRC again.
      manager.save(0, args=checkpointing.composite(trainer.save_items(state)), force=True)
    outcome = loop.run(config, trainer, state, mesh, manager, writer, dropout_rng)
    manager.close()
    writer.close()
  return outcome.last


def evaluate(config, stream: Callable, eval_step, params, mesh) -> dict[str, dict[str, float]]:
  """{'eval': held-out MLM metrics (on the pairs the run trains with) and the sentence head's SOP and NSP metrics,
  each task on its own held-out pairs}, over `config.eval_batches` batches of each (the same each time).

  The sums do not depend on where each row lands on the mesh; the rows are fed where the devices hold them all the
  same (`stream` reads `sharding.data_shards`), as in training.
  """
  mlm_pairs = training_pairs(config.sentence_objective)
  sums = {}
  for task in pipeline.SENTENCE_TASKS:
    try:
      eval_iter = stream("validation", task)
    except ValueError as e:
      logging.warning("No evaluation: %s", e)
      return {}
    totals = None
    for _ in range(config.eval_batches):
      batch_sums = jax.device_get(eval_step(params, sharding.global_batch(next(eval_iter), mesh)))
      totals = batch_sums if totals is None else {k: totals[k] + batch_sums[k] for k in batch_sums}
    for k, v in totals.items():
      if task == mlm_pairs or not k.startswith("mlm_"):
        sums[k.replace("sop_", f"{task}_")] = float(v)
  return {"eval": summarize(sums, config.sentence_objective)}

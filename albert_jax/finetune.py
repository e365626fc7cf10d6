"""Fine-tuning on GLUE, SQuAD and RACE: `python -m albert_jax.finetune --config=experiments/glue.py:sst2 --workdir=DIR`.

One readable trainer, top to bottom, built from the same pieces as
pretraining (`trainer_lib`): mesh → vocabulary and data → model (backbone
from `config.init_checkpoint`, task head fresh) → sharding → AdamW update →
checkpoints → dev evaluation → best checkpoint → final predictions.

The training order is a function of (seed, step): every epoch is a seeded
permutation of the training rows, cut into global batches (the last partial
batch dropped, as the original's `drop_remainder`). Resuming therefore needs
only the train state, and reproduces the uninterrupted run.

The workdir holds:
  experiment.json      the full experiment config of the latest start
  spiece.model         the vocabulary
  checkpoints/<step>/  orbax: the train state (resume)
  best/<step>/         orbax: the parameters with the best dev score so far, and the scores
  metrics.jsonl        training metrics, and dev scores after every evaluation
  tensorboard/         TensorBoard event files
  eval_results.json    the final dev scores of the best checkpoint (and its step)
  prediction files     GLUE <task>_<split>.tsv (dev) and submission files (test), SQuAD
                       predictions.json (+ null_odds.json for v2.0), RACE race_<split>.tsv
"""

import functools
import json
import pathlib
import shutil
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax.linen import partitioning as nn_partitioning

from albert_jax import checkpoints
from albert_jax import config_lib
from albert_jax import model as model_lib
from albert_jax import optim
from albert_jax import sharding
from albert_jax import tasks
from albert_jax import tokenizer as tokenizer_lib
from albert_jax import trainer_lib
from albert_jax.trainer_lib import TrainingError

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# ---------------------------------------------------------------------------
# The pure steps.

def task_model(spec: tasks.TaskSpec, model_config: model_lib.AlbertConfig) -> nn.Module:
  """The head model of a task; its `albert` submodule has the pretraining backbone's layout."""
  if spec.head == "span":
    return model_lib.AlbertForQuestionAnswering(model_config)
  if spec.head == "multiple_choice":
    return model_lib.AlbertForMultipleChoice(model_config)
  return model_lib.AlbertForSequenceClassification(model_config, spec.num_labels)


def task_losses(head: str, outputs, batch) -> dict[str, jax.Array]:
  """Sums and denominators: the loss (and, for classifiers, the correct predictions) over the batch.

  Classification and multiple choice: cross-entropy. Regression (STS-B):
  squared error. Spans: the mean of the start and end cross-entropies.
  """
  if head == "span":
    xent = optax.softmax_cross_entropy_with_integer_labels
    per_example = 0.5 * (xent(outputs["start_logits"], batch["start_positions"])
                         + xent(outputs["end_logits"], batch["end_positions"]))
    return {"loss_sum": jnp.sum(per_example), "count": jnp.asarray(per_example.shape[0], jnp.float32)}
  labels = batch["label"]
  if head == "regression":
    per_example = jnp.square(outputs.reshape(-1) - labels)
    return {"loss_sum": jnp.sum(per_example), "count": jnp.asarray(labels.shape[0], jnp.float32)}
  per_example = optax.softmax_cross_entropy_with_integer_labels(outputs, labels)
  return {"loss_sum": jnp.sum(per_example), "count": jnp.asarray(labels.shape[0], jnp.float32),
          "correct": jnp.sum(jnp.argmax(outputs, -1) == labels).astype(jnp.float32)}


def _apply(model, params, batch, deterministic, rng=None):
  return model.apply({"params": params}, *(batch[k] for k in INPUTS), deterministic=deterministic,
                     rngs=None if rng is None else {"dropout": rng})


def make_train_step(model, head: str, tx, schedule, grad_accum_steps: int = 1):
  """The pure `train_step(state, batch, rng) -> (state, metrics)`; a non-finite step is skipped and reported."""

  def train_step(state: trainer_lib.TrainState, batch, rng):
    dropout_rng = jax.random.fold_in(rng, state.step)

    def grad_fn(params, micro):
      def loss_fn(p):
        sums = task_losses(head, _apply(model, p, micro, False, dropout_rng), micro)
        return sums["loss_sum"] / sums["count"], sums
      grads, sums = jax.grad(loss_fn, has_aux=True)(params)
      return sums, grads

    sums, grads = optim.accumulate_gradients(grad_fn, state.params, batch, grad_accum_steps)
    new_state, grad_norm, nonfinite = trainer_lib.apply_gradients(state, grads, tx, sums["loss_sum"] / sums["count"])
    return new_state, dict(sums, grad_norm=grad_norm, learning_rate=schedule(state.step), nonfinite=nonfinite)

  return train_step


def make_predict_step(model):
  return lambda params, batch: _apply(model, params, batch, True)


class Setup(NamedTuple):
  """Everything compiled for one task model on one mesh."""
  model: nn.Module
  schedule: optax.Schedule
  abstract_state: Any  # ShapeDtypeStructs carrying their shardings (for restoring)
  state_shardings: Any
  init: Callable  # rng -> sharded TrainState (a fresh backbone; see `with_backbone`)
  train_step: Callable  # jitted (state, batch, rng) -> (state, metrics), state donated
  predict_step: Callable  # jitted (params, batch) -> the head's outputs, replicated


def build(config, model_config: model_lib.AlbertConfig, spec: tasks.TaskSpec, input_shape: tuple[int, ...],
          mesh, rules) -> Setup:
  """Task model, AdamW, and the sharded init / train / predict steps (as `train.build` for pretraining).

  `input_shape` is one example's input_ids shape: (T,), or (choices, T).
  """
  model = task_model(spec, model_config)
  init_params = lambda r: model.init(r, jnp.zeros((1, *input_shape), jnp.int32))["params"]
  abstract_params = jax.eval_shape(init_params, jax.random.PRNGKey(0))
  tx, schedule = optim.make_optimizer(config, stacked_layers=optim.stacked_layers_mask(abstract_params))
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    sharded = trainer_lib.shard_train_state(init_params, tx, mesh, rules)
    batch_sharding = sharding.batch_sharding(mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    train_step = jax.jit(make_train_step(model, spec.head, tx, schedule, config.grad_accum_steps),
                         in_shardings=(sharded.shardings, batch_sharding, replicated),
                         out_shardings=(sharded.shardings, replicated), donate_argnums=0)
    predict_step = jax.jit(make_predict_step(model), in_shardings=(sharded.shardings.params, batch_sharding),
                           out_shardings=replicated)
  return Setup(model, schedule, sharded.abstract, sharded.shardings, sharded.init, train_step, predict_step)


# ---------------------------------------------------------------------------
# Setup helpers.

def load_vocabulary(config, workdir: pathlib.Path) -> tokenizer_lib.Tokenizer:
  """config.task.vocab, else the checkpoint's own vocabulary; copied to WORKDIR/spiece.model."""
  source = config.task.vocab or (config.init_checkpoint and checkpoints.find_vocab(config.init_checkpoint))
  if not source:
    where = f"{config.init_checkpoint} has no spiece.model" if config.init_checkpoint else "no init_checkpoint is set"
    raise TrainingError(f"No vocabulary: {where}. Set --config.task.vocab to the SentencePiece model the backbone "
                        "was trained with (e.g. the official ALBERT spiece.model).")
  source = pathlib.Path(source)
  if not source.is_file():
    raise TrainingError(f"config.task.vocab={str(source)!r} does not exist; point it at a SentencePiece model.")
  target = workdir / "spiece.model"
  if jax.process_index() == 0 and source.resolve() != target.resolve():
    shutil.copyfile(source, target)
  trainer_lib.sync("vocabulary")
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
    logging.warning("config.init_checkpoint is empty: the backbone is randomly initialised (an ablation, not "
                    "fine-tuning).")
  if model_config.vocab_size != tokenizer.vocab_size:
    raise TrainingError(f"The model has vocab_size={model_config.vocab_size} but the vocabulary "
                        f"{tokenizer.model_path} has {tokenizer.vocab_size} pieces; use the vocabulary the backbone "
                        "was trained with (--config.task.vocab).")
  if config.task.max_seq_length > model_config.max_position_embeddings:
    raise TrainingError(f"config.task.max_seq_length={config.task.max_seq_length} exceeds the model's "
                        f"max_position_embeddings={model_config.max_position_embeddings}; lower it.")
  return model_config, params


def with_backbone(state: trainer_lib.TrainState, pretrained, state_shardings) -> trainer_lib.TrainState:
  """`state` with its `albert` parameters replaced by the pretrained ones, placed in their shards.

  The pretraining-only parts (MLM and SOP heads, the pooler for span
  heads) are left out; a missing or misshapen tensor is an error.
  """
  def take(fresh, loaded, shardings, path):
    if isinstance(fresh, dict):
      return {k: take(fresh[k], loaded.get(k) if isinstance(loaded, dict) else None, shardings[k], f"{path}/{k}")
              for k in fresh}
    if loaded is None or tuple(np.shape(loaded)) != tuple(fresh.shape):
      found = "missing" if loaded is None else f"of shape {tuple(np.shape(loaded))}"
      raise TrainingError(f"init_checkpoint parameter {path} is {found}; the task model needs {tuple(fresh.shape)}.")
    return jax.device_put(np.asarray(loaded, fresh.dtype), shardings)

  albert = take(state.params["albert"], pretrained["params"]["albert"], state_shardings.params["albert"], "albert")
  return state.replace(params={**state.params, "albert": albert})


@functools.lru_cache(maxsize=2)
def _epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_rows(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Rows of the training set in the global batch of `step` (0-based): seeded per-epoch permutations."""
  per_epoch = num_examples // batch_size
  if per_epoch == 0:
    raise TrainingError(f"The training split has {num_examples} examples, fewer than batch_size={batch_size}; "
                        "lower the batch size or use more data.")
  epoch, i = divmod(step, per_epoch)
  return _epoch_order(num_examples, seed, epoch)[i * batch_size:(i + 1) * batch_size]


def _local(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's share of a global batch (every process holds all the data; each feeds its own rows)."""
  n = len(rows["input_ids"]) // jax.process_count()
  return {k: v[jax.process_index() * n:(jax.process_index() + 1) * n] for k, v in rows.items()}


def predict(setup: Setup, params, data: tasks.TaskData, batch_size: int, mesh) -> Any:
  """The head's outputs for every row of `data`, in order, as numpy (the last batch padded, then trimmed)."""
  features = {k: data.features[k] for k in INPUTS}
  n = len(data)
  outputs = []
  for start in range(0, n, batch_size):
    rows = {k: v[start:start + batch_size] for k, v in features.items()}
    pad = batch_size - len(rows["input_ids"])
    rows = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]) for k, v in rows.items()}
    out = jax.device_get(setup.predict_step(params, sharding.global_batch(_local(rows), mesh)))
    outputs.append(jax.tree.map(lambda x: x[:batch_size - pad], out))
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)


def evaluate(config, setup: Setup, params, eval_data: dict[str, tasks.TaskData], mesh) -> dict[str, dict]:
  """The task's official scores on every evaluation split."""
  return {split: tasks.evaluate(config.task, predict(setup, params, data, config.eval_batch_size, mesh), data)
          for split, data in eval_data.items()}


def summarize(sums: dict[str, float]) -> dict[str, float]:
  out = {"loss": sums["loss_sum"] / max(sums["count"], 1.0)}
  if "correct" in sums:
    out["accuracy"] = sums["correct"] / max(sums["count"], 1.0)
  return out


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
  config_lib.check(config)
  sharding.maybe_initialize_distributed(config)
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)

  # Mesh.
  mesh, rules = trainer_lib.setup_mesh(config)
  if config.eval_batch_size % sharding.data_parallel_size(mesh):
    raise TrainingError(f"config.eval_batch_size={config.eval_batch_size} is not divisible by the data-parallel "
                        f"size {sharding.data_parallel_size(mesh)}; choose a multiple.")

  # Vocabulary, backbone and data.
  spec = tasks.get_spec(config.task)
  tokenizer = load_vocabulary(config, workdir)
  model_config, pretrained = load_backbone(config, tokenizer)
  if jax.process_index() == 0:
    (workdir / "experiment.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  train_data = tasks.load_task(config.task, tokenizer, spec.train_split)
  eval_data = _load_splits(config, tokenizer, spec.eval_splits, optional=False)
  train_rows = len(train_data)

  # Model, optimizer and sharding.
  setup = build(config, model_config, spec, train_data.features["input_ids"].shape[1:], mesh, rules)
  main_split, main_metric = spec.eval_splits[0], spec.main_metric
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))

    # Checkpoints: resume from the newest; the best dev parameters are kept apart.
    manager = trainer_lib.checkpoint_manager(workdir / "checkpoints", ("state",), config.keep_checkpoints)
    best_manager = trainer_lib.checkpoint_manager(workdir / "best", ("params", "scores"), 1)
    restored = trainer_lib.restore_newest(manager, ocp.args.Composite(
        state=ocp.args.StandardRestore(setup.abstract_state)))
    if restored is not None:
      state = restored["state"]
    else:
      state = setup.init(init_rng)
      if pretrained is not None:
        state = with_backbone(state, pretrained, setup.state_shardings)
    del pretrained
    step = int(jax.device_get(state.step))
    best = _best_scores(best_manager)

    def save():
      manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)

    # The loop.
    writer = trainer_lib.MetricWriter(workdir)
    preemption = trainer_lib.Preemption()
    logging.info("Fine-tuning %s from %s: %d training rows, %d steps of %d; %d devices, mesh %s.", spec.name,
                 config.init_checkpoint or "a random init", train_rows, config.num_train_steps, config.batch_size,
                 jax.device_count(), dict(mesh.shape))
    pending, timer, run_start = [], time.perf_counter(), time.perf_counter()
    start_step, preempted = step, False
    while step < config.num_train_steps:
      if preemption.stop_now(manager, step):
        preemption.save_before_exit(manager, step, save)
        preempted = True
        break
      rows = batch_rows(train_rows, config.batch_size, config.seed, step)
      batch = {k: v[rows] for k, v in train_data.features.items()}
      state, metrics = setup.train_step(state, sharding.global_batch(_local(batch), mesh), dropout_rng)
      step += 1
      if int(metrics["nonfinite"]):
        trainer_lib.check_nonfinite(step, config.nan_policy, manager,
                                    float(metrics["loss_sum"] / metrics["count"]), float(metrics["grad_norm"]))
      pending.append(metrics)
      if step % config.checkpoint_every_steps == 0:
        save()
      if step % config.log_every_steps == 0 or step == config.num_train_steps:
        host = jax.device_get(pending)
        sums = {k: sum(float(m[k]) for m in host) for k in host[0]}
        values = dict(summarize(sums), grad_norm=float(host[-1]["grad_norm"]),
                      learning_rate=float(host[-1]["learning_rate"]), skipped_steps=sums["nonfinite"],
                      steps_per_second=len(host) / (time.perf_counter() - timer))
        logging.info("step %d/%d  %s", step, config.num_train_steps,
                     "  ".join(f"{k} {v:.4g}" for k, v in values.items()))
        writer.write(step, "train", values)
        pending, timer = [], time.perf_counter()
      if config.eval_every_steps and (step % config.eval_every_steps == 0 or step == config.num_train_steps):
        scores = evaluate(config, setup, state.params, eval_data, mesh)
        for split, values in scores.items():
          logging.info("%s at step %d: %s", split, step, " ".join(f"{k} {v:.4f}" for k, v in values.items()))
          writer.write(step, split, values)
        score = scores[main_split][main_metric]
        if best is None or _better(score, best["score"]):
          best = {"step": step, "score": score}
          best_manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(state.params),
                                                          scores=ocp.args.JsonSave(best)), force=True)
    if not preempted and manager.latest_step() != step:
      save()  # the final state, whatever the checkpoint interval
    manager.wait_until_finished()
    best_manager.wait_until_finished()
    writer.close()
    results = {} if preempted else _final_predictions(config, spec, setup, state, best_manager, eval_data,
                                                      tokenizer, mesh, workdir)
    manager.close()
    best_manager.close()
  logging.info("Finished at step %d (%d steps in %s).", step, step - start_step,
               trainer_lib.duration(time.perf_counter() - run_start))
  return results


def _better(score: float, best: float) -> bool:
  """Higher is better; an undefined score (NaN: Pearson of constant predictions) is worse than any other."""
  return not np.isnan(score) and (np.isnan(best) or score > best)


def _best_scores(best_manager) -> dict[str, float] | None:
  """{'step', 'score'} of the kept best checkpoint, or None."""
  step = best_manager.latest_step()
  if step is None:
    return None
  return best_manager.restore(step, args=ocp.args.Composite(scores=ocp.args.JsonRestore()))["scores"]


def _final_predictions(config, spec, setup, state, best_manager, eval_data, tokenizer, mesh, workdir):
  """Dev scores and prediction files of the best checkpoint (the last state when none was kept), test files."""
  best_step = best_manager.latest_step()
  params = state.params
  if best_step is not None:
    params = best_manager.restore(best_step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(setup.abstract_state.params)))["params"]
  results = {"best_step": int(jax.device_get(state.step)) if best_step is None else best_step}
  test_data = _load_splits(config, tokenizer, spec.test_splits, optional=True)
  for split, data in {**eval_data, **test_data}.items():
    outputs = predict(setup, params, data, config.eval_batch_size, mesh)
    if split in eval_data or spec.head == "multiple_choice":  # RACE's test set is labelled
      results[split] = tasks.evaluate(config.task, outputs, data)
    if jax.process_index() == 0:
      paths = tasks.write_predictions(config.task, outputs, data, workdir)
      logging.info("Wrote %s", ", ".join(str(p) for p in paths))
  if jax.process_index() == 0:
    (workdir / "eval_results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
  logging.info("Best checkpoint (step %d): %s", results["best_step"],
               json.dumps({k: v for k, v in results.items() if k != "best_step"}))
  return results


if __name__ == "__main__":
  from absl import flags
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "Fine-tuning config, e.g. experiments/glue.py:sst2 (add ',tiny' for a CPU smoke run).",
      lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and predictions.")
  flags.mark_flags_as_required(["config", "workdir"])
  from albert_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run(lambda: trainer_lib.run_main(lambda: finetune(_CONFIG.value, _WORKDIR.value)), errors=(TrainingError,))

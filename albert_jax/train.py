"""ALBERT pretraining (MLM + SOP): `python -m albert_jax.train --config=experiments/tiny.py --workdir=DIR`.

One readable trainer, top to bottom: mesh → data → model → sharding → update
→ checkpoint → eval. The same code runs on one CPU, simulated CPU devices, a
GPU box and a TPU pod. `train_step(state, batch, rng)` is pure; the loop
around it does the I/O.

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
import shutil
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import grain
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
from albert_jax import flops as flops_lib
from albert_jax import model as model_lib
from albert_jax import optim
from albert_jax import pretraining_data
from albert_jax import sharding
from albert_jax import tokenizer as tokenizer_lib
from albert_jax import trainer_lib
from albert_jax.trainer_lib import TrainingError, TrainState  # pylint: disable=unused-import  (public names)


# ---------------------------------------------------------------------------
# The pure step.

def pretraining_losses(outputs, batch):
  """Sums and denominators of the MLM and SOP losses and accuracies."""
  mlm_logits = outputs["mlm_logits"]
  labels = batch["masked_lm_ids"]
  weights = batch["masked_lm_weights"].astype(jnp.float32)
  mlm_xent = optax.softmax_cross_entropy_with_integer_labels(mlm_logits, labels)
  sop_labels = batch["sentence_order_label"]
  sop_xent = optax.softmax_cross_entropy_with_integer_labels(outputs["sop_logits"], sop_labels)
  return {
      "mlm_loss_sum": jnp.sum(mlm_xent * weights),
      "mlm_correct": jnp.sum((jnp.argmax(mlm_logits, -1) == labels) * weights),
      "mlm_count": jnp.sum(weights),
      "sop_loss_sum": jnp.sum(sop_xent),
      "sop_correct": jnp.sum(jnp.argmax(outputs["sop_logits"], -1) == sop_labels).astype(jnp.float32),
      "sop_count": jnp.asarray(sop_labels.shape[0], jnp.float32),
  }


def _apply(model, params, batch, deterministic, rng=None):
  return model.apply(
      {"params": params}, batch["input_ids"], batch["input_mask"], batch["token_type_ids"],
      batch["masked_lm_positions"], deterministic=deterministic, rngs=None if rng is None else {"dropout": rng})


def _total_loss(sums):
  """MLM cross-entropy per masked token plus SOP cross-entropy per sequence, as ALBERT sums them."""
  return sums["mlm_loss_sum"] / jnp.maximum(sums["mlm_count"], 1.0) + sums["sop_loss_sum"] / sums["sop_count"]


def make_train_step(model, tx, schedule, grad_accum_steps: int = 1, nan_at_step: int = -1,
                    prepare_params: Callable = lambda params: params, nan_value: str = "nan"):
  """The pure `train_step(state, batch, rng) -> (state, metrics)` for this model and optimizer.

  A non-finite loss or gradient leaves the state untouched (the update is
  skipped) and is reported in `metrics['nonfinite']`; the loop decides whether
  to stop. `nan_at_step` >= 0 injects a `nan_value` ('nan' or 'inf') loss at
  that step (fault-injection tests only). `prepare_params` maps the
  parameters before the forward pass (`shared_layer_gather`).
  """
  injected = float(nan_value)

  def train_step(state: TrainState, batch, rng):
    dropout_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params, micro):
      sums = pretraining_losses(_apply(model, prepare_params(params), micro, False, dropout_rng), micro)
      return _total_loss(sums), sums

    grad_fn = jax.grad(loss_fn, has_aux=True)
    sums, grads = optim.accumulate_gradients(lambda p, b: grad_fn(p, b)[::-1], state.params, batch,
                                             grad_accum_steps)
    loss = _total_loss(sums)
    if nan_at_step >= 0:  # the loss the update is judged by; the gradients stay those of the real loss
      loss = jnp.where(state.step == nan_at_step, injected, loss)
    new_state, grad_norm, nonfinite = trainer_lib.apply_gradients(state, grads, tx, loss)
    metrics = dict(sums, grad_norm=grad_norm, learning_rate=schedule(state.step), nonfinite=nonfinite)
    return new_state, metrics

  return train_step


def make_eval_step(model):
  def eval_step(params, batch):
    return pretraining_losses(_apply(model, params, batch, True), batch)
  return eval_step


def summarize(sums: dict[str, float]) -> dict[str, float]:
  """Per-example metrics from summed metrics (sums plus denominators)."""
  mlm_count, sop_count = max(sums["mlm_count"], 1.0), max(sums["sop_count"], 1.0)
  out = {
      "mlm_loss": sums["mlm_loss_sum"] / mlm_count,
      "mlm_accuracy": sums["mlm_correct"] / mlm_count,
      "sop_loss": sums["sop_loss_sum"] / sop_count,
      "sop_accuracy": sums["sop_correct"] / sop_count,
  }
  out["loss"] = out["mlm_loss"] + out["sop_loss"]
  return out


# ---------------------------------------------------------------------------
# Setup helpers.

def _model_config(config, tokenizer) -> model_lib.AlbertConfig:
  model_config = config_lib.model_config(config)
  if config.model.vocab_size == 0:  # 0 = the size of the vocabulary in use (e.g. one trained on the corpus)
    model_config = model_config.replace(vocab_size=tokenizer.vocab_size)
  if model_config.vocab_size != tokenizer.vocab_size:
    raise TrainingError(
        f"config.model.vocab_size={model_config.vocab_size} but the vocabulary {tokenizer.model_path} has "
        f"{tokenizer.vocab_size} pieces; set --config.model.vocab_size={tokenizer.vocab_size} (or 0 to follow "
        "the vocabulary).")
  if config.data.max_seq_length > model_config.max_position_embeddings:
    raise TrainingError(f"config.data.max_seq_length={config.data.max_seq_length} exceeds "
                        f"config.model.max_position_embeddings={model_config.max_position_embeddings}.")
  return model_config


def prepare_tokenizer(config, workdir: pathlib.Path) -> tokenizer_lib.Tokenizer:
  """The run's vocabulary in WORKDIR/spiece.model: copied from config.data.vocab, or trained on the corpus."""
  target = workdir / "spiece.model"
  if jax.process_index() == 0 and not target.exists():
    if config.data.vocab:
      shutil.copyfile(config.data.vocab, target)
    elif config.data.source == "builtin":
      from albert_jax import builtin_corpus
      builtin_corpus.write_vocab(target, config.data.vocab_size, seed=config.data.get("builtin_seed", 0))
    elif config.data.source == "files":
      from albert_jax import tfds_builders
      files = [pathlib.Path(f) for f in tfds_builders.expand_files(config.data.files)]
      tokenizer_lib.train_vocab(files, target, config.data.vocab_size, text_format=config.data.format or None)
    else:
      raise TrainingError(f"config.data.source={config.data.source!r} needs a vocabulary: set config.data.vocab to "
                          "a SentencePiece model (e.g. the official ALBERT spiece.model).")
  trainer_lib.sync("vocabulary")
  return tokenizer_lib.Tokenizer(target)


def _check_workdir_model(workdir: pathlib.Path, model_config: model_lib.AlbertConfig):
  """Refuse to resume a workdir trained with another model shape, naming the fields that differ."""
  config_file = workdir / "config.json"
  if config_file.exists() and (workdir / "checkpoints").exists():
    saved = json.loads(config_file.read_text()).get("model", {})
    current = model_config.to_dict()
    shape_fields = [f.name for f in dataclasses.fields(model_lib.AlbertConfig)
                    if f.name not in ("dtype", "remat_policy", "scan_unroll", "hidden_dropout_prob",
                                      "attention_probs_dropout_prob", "classifier_dropout_prob")]
    differ = [f"{k}: checkpoint {saved.get(k)!r} vs config {current[k]!r}" for k in shape_fields
              if k in saved and saved[k] != current[k]]
    if differ:
      raise TrainingError(f"{workdir} holds checkpoints of another model ({'; '.join(differ)}). Use a new --workdir "
                          "or the matching config.")


def _write_workdir_config(workdir, config, model_config):
  if jax.process_index() == 0:
    trainer_lib.write_text_atomic(workdir / "config.json", json.dumps(
        {"format": checkpoints.FORMAT, "format_version": checkpoints.FORMAT_VERSION, "model": model_config.to_dict()},
        indent=2, sort_keys=True))
    trainer_lib.write_text_atomic(workdir / "experiment.json", config.to_json_best_effort(indent=2, sort_keys=True))


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

  def without_fsdp(spec_entry):
    names = (spec_entry,) if isinstance(spec_entry, str) else tuple(spec_entry or ())
    kept = tuple(n for n in names if n != "fsdp")
    return kept[0] if len(kept) == 1 else (kept or None)

  def gather(path, x, s):
    if not is_shared(path) or "fsdp" not in jax.tree.leaves(tuple(s.spec)):
      return x
    spec = jax.sharding.PartitionSpec(*(without_fsdp(e) for e in s.spec))
    return jax.lax.with_sharding_constraint(x, jax.sharding.NamedSharding(s.mesh, spec))

  return lambda params: jax.tree.map_with_path(gather, params, param_shardings)


class Setup(NamedTuple):
  """Everything compiled for one model on one mesh."""
  model: nn.Module
  schedule: optax.Schedule
  abstract_state: Any  # ShapeDtypeStructs carrying their shardings (for restoring)
  state_shardings: Any
  init: Callable  # rng -> sharded TrainState
  train_step: Callable  # jitted (state, batch, rng) -> (state, metrics), state donated
  eval_step: Callable  # jitted (params, batch) -> metric sums


def build(config, model_config: model_lib.AlbertConfig, mesh, rules) -> Setup:
  """Model, LAMB, and the sharded init / train / eval steps: abstract init → logical specs → mesh shardings.

  Parameters are created directly in their shards; nothing unsharded is
  materialised. Call the jitted functions under `jax.set_mesh(mesh)` and
  `nn_partitioning.axis_rules(rules)`.
  """
  model = model_lib.AlbertForPreTraining(model_config)
  seq_len = config.data.max_seq_length
  init_params = lambda r: model.init(r, jnp.zeros((1, seq_len), jnp.int32))["params"]
  abstract_params = jax.eval_shape(init_params, jax.random.PRNGKey(0))
  tx, schedule = optim.make_optimizer(config, stacked_layers=optim.stacked_layers_mask(abstract_params))
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    sharded = trainer_lib.shard_train_state(init_params, tx, mesh, rules)
    state_shardings = sharded.shardings
    batch_sharding = sharding.batch_sharding(mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    train_step = jax.jit(
        make_train_step(model, tx, schedule, config.grad_accum_steps, config.get("nan_at_step", -1),
                        shared_layer_gather(model_config, state_shardings.params), config.get("nan_value", "nan")),
        in_shardings=(state_shardings, batch_sharding, replicated), out_shardings=(state_shardings, replicated),
        donate_argnums=0)
    eval_step = jax.jit(make_eval_step(model), in_shardings=(state_shardings.params, batch_sharding),
                        out_shardings=replicated)
  return Setup(model, schedule, sharded.abstract, state_shardings, sharded.init, train_step, eval_step)


# ---------------------------------------------------------------------------
# The trainer.

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Pretrains as configured, resuming from the newest checkpoint in `workdir`; returns the last metrics."""
  config_lib.check(config)
  sharding.maybe_initialize_distributed(config)
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)

  # Mesh.
  mesh, rules = trainer_lib.setup_mesh(config)

  # Data.
  tokenizer = prepare_tokenizer(config, workdir)
  model_config = _model_config(config, tokenizer)
  _check_workdir_model(workdir, model_config)
  _write_workdir_config(workdir, config, model_config)
  data_dir = config.data.data_dir or str(workdir / "data")
  data_kwargs = dict(data_dir=data_dir, model_vocab_size=model_config.vocab_size)
  if jax.process_index() == 0:  # prepare once, before the other processes read
    pretraining_data.document_source(config.data, tokenizer, "train", data_dir)
  trainer_lib.sync("data")
  train_iter = pretraining_data.make_process_iterator(
      config.data, tokenizer, config.batch_size, config.seed, "train", num_shards=config.data.num_shards,
      **data_kwargs)

  # Model, optimizer and sharding.
  setup = build(config, model_config, mesh, rules)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    train_step, eval_step = setup.train_step, setup.eval_step
    seq_len = config.data.max_seq_length
    rng = jax.random.PRNGKey(config.seed)
    init_rng, dropout_rng = jax.random.split(rng)

    # Checkpoints: resume from the newest complete one.
    manager = trainer_lib.checkpoint_manager(workdir / "checkpoints", ("state", "data_iter"),
                                             config.keep_checkpoints)
    restored = trainer_lib.restore_newest(manager, ocp.args.Composite(
        state=ocp.args.StandardRestore(setup.abstract_state),
        data_iter=grain.checkpoint.CheckpointRestore(train_iter)))
    state = setup.init(init_rng) if restored is None else restored["state"]
    step = int(jax.device_get(state.step))

    def save():  # asynchronous; the loop decides when (orbax's own policy would also save the first step)
      manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 data_iter=grain.checkpoint.CheckpointSave(train_iter)), force=True)

    # The loop.
    writer = trainer_lib.MetricWriter(workdir)
    preemption = trainer_lib.Preemption()
    step_flops = flops_lib.train_flops_per_step(model_config, config.batch_size, seq_len,
                                                config.data.max_predictions_per_seq)
    peak = flops_lib.device_peak_flops()
    peak_total = peak if jax.devices()[0].platform == "cpu" else (peak and peak * jax.device_count())
    c = model_config
    logging.info("Model %s: %d layers sharing %s, hidden %d, embedding %d, %d pieces, %s; %d devices, mesh %s; "
                 "%.3g FLOPs per step (experiment.json has the whole config).", config.model.get("preset", ""),
                 c.num_hidden_layers, c.sharing, c.hidden_size, c.embedding_size, c.vocab_size, c.dtype,
                 jax.device_count(), dict(mesh.shape), step_flops)
    pending, last = [], {}
    start_step, timer = step, time.perf_counter()
    run_start = timer
    while step < config.num_train_steps:
      if preemption.stop_now(manager, step):
        preemption.save_before_exit(manager, step, save)
        break
      batch = sharding.global_batch(next(train_iter), mesh)
      state, metrics = train_step(state, batch, dropout_rng)
      step += 1
      if int(metrics["nonfinite"]):
        trainer_lib.check_nonfinite(step, config.nan_policy, manager, float(summarize(jax.device_get(metrics))["loss"]),
                                    float(metrics["grad_norm"]))
      pending.append(metrics)
      if step % config.checkpoint_every_steps == 0:
        save()
      if step % config.log_every_steps == 0 or step == config.num_train_steps:
        host = jax.device_get(pending)
        sums = {k: sum(float(m[k]) for m in host) for k in host[0]}
        elapsed = time.perf_counter() - timer
        steps_done = len(host)
        last = summarize(sums)
        last.update(
            grad_norm=float(host[-1]["grad_norm"]), learning_rate=float(host[-1]["learning_rate"]),
            skipped_steps=sums["nonfinite"], steps_per_second=steps_done / elapsed,
            tokens_per_second=steps_done * config.batch_size * seq_len / elapsed)
        if peak_total:
          last["mfu"] = steps_done * step_flops / elapsed / peak_total
        eta = (config.num_train_steps - step) / last["steps_per_second"]
        logging.info("step %d/%d  loss %.4f  mlm %.4f (acc %.3f)  sop %.4f (acc %.3f)  lr %.3g  |g| %.3g  "
                     "%.0f tokens/s  MFU %s  ETA %s", step, config.num_train_steps, last["loss"], last["mlm_loss"],
                     last["mlm_accuracy"], last["sop_loss"], last["sop_accuracy"], last["learning_rate"],
                     last["grad_norm"], last["tokens_per_second"],
                     f"{100 * last['mfu']:.1f}%" if "mfu" in last else "n/a", trainer_lib.duration(eta))
        writer.write(step, "train", last)
        pending, timer = [], time.perf_counter()
      if config.eval_every_steps and (step % config.eval_every_steps == 0 or step == config.num_train_steps):
        results = evaluate(config, tokenizer, eval_step, state.params, mesh, data_kwargs)
        if results:
          logging.info("eval at step %d: %s", step, " ".join(f"{k} {v:.4f}" for k, v in results.items()))
          writer.write(step, "eval", results)
          last.update({f"eval_{k}": v for k, v in results.items()})
    if not preemption.requested and manager.latest_step() != step:
      save()  # the final state, whatever the checkpoint interval
    manager.wait_until_finished()
    manager.close()
    writer.close()
  logging.info("Finished at step %d (%d steps in %s).", step, step - start_step,
               trainer_lib.duration(time.perf_counter() - run_start))
  return last


def evaluate(config, tokenizer, eval_step, params, mesh, data_kwargs) -> dict[str, float]:
  """MLM and SOP metrics over `config.eval_batches` batches of the held-out split (the same batches each time)."""
  try:
    eval_iter = pretraining_data.make_process_iterator(
        config.data, tokenizer, config.batch_size, config.seed, "validation", num_shards=config.data.num_shards,
        **data_kwargs)
  except ValueError as e:
    logging.warning("No evaluation: %s", e)
    return {}
  totals = None
  for _ in range(config.eval_batches):
    sums = jax.device_get(eval_step(params, sharding.global_batch(next(eval_iter), mesh)))
    totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
  return summarize({k: float(v) for k, v in totals.items()})


if __name__ == "__main__":
  from absl import flags
  from ml_collections import config_flags

  _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config, e.g. experiments/tiny.py.",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the vocabulary.")
  _COMPILE_ONLY = flags.DEFINE_bool(
      "compile_only", False, "Compile this exact train step and report per-device memory, FLOPs and collectives "
      "(albert_jax.compile_check); train nothing, read no data, write nothing to --workdir.")
  _TOPOLOGY = flags.DEFINE_string("topology", "", "With --compile_only: the TPU slice to compile for from any host, "
                                  "e.g. v3:16x16 or v4:4x4x4 (needs libtpu); '' = this machine's devices.")
  flags.mark_flags_as_required(["config", "workdir"])

  def _main():
    if _COMPILE_ONLY.value:
      from albert_jax import compile_check  # pylint: disable=g-import-not-at-top  (it imports this module)
      compile_check.main(_CONFIG.value, _TOPOLOGY.value, "")
    else:
      trainer_lib.run_main(lambda: train_and_evaluate(_CONFIG.value, _WORKDIR.value))

  from albert_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run(_main, errors=(TrainingError,))

"""ALBERT pretraining (MLM + SOP), the trainer behind `python -m albert_jax.train`.

`train_and_evaluate` reads top to bottom: mesh → vocabulary and data → model,
optimizer and sharding → resume → the loop (`loop.run`, shared with
fine-tuning) → the final checkpoint. What is particular to pretraining is
here: the MLM + SOP loss as metric sums, the streaming data, and the shared
layer gathered once per step under FSDP. The same code runs on one CPU,
simulated CPU devices, a GPU box and a TPU pod.

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
from collections.abc import Callable

import grain
import jax
import jax.numpy as jnp
import ml_collections
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax.linen import partitioning as nn_partitioning

from albert_jax import checkpoints, config_lib, sharding
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


def denominators(batch):
  """What `total_loss` divides by, for a whole batch: masked tokens (they differ from sequence to sequence) and
  sequences."""
  return {
    "mlm_count": jnp.sum(batch["masked_lm_weights"].astype(jnp.float32)),
    "sop_count": jnp.asarray(batch["sentence_order_label"].shape[0], jnp.float32),
  }


def total_loss(sums):
  """MLM cross-entropy per masked token plus SOP cross-entropy per sequence, as ALBERT sums them."""
  return sums["mlm_loss_sum"] / jnp.maximum(sums["mlm_count"], 1.0) + sums["sop_loss_sum"] / sums["sop_count"]


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


def describe(values: dict[str, float]) -> str:
  return (
    f"loss {values['loss']:.4f}  mlm {values['mlm_loss']:.4f} (acc {values['mlm_accuracy']:.3f})  "
    f"sop {values['sop_loss']:.4f} (acc {values['sop_accuracy']:.3f})"
  )


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
  """AlbertForPreTraining, LAMB and the sharded init / train / eval steps (`core.build`)."""
  model = model_lib.AlbertForPreTraining(model_config)
  init_params = lambda r: model.init(r, jnp.zeros((1, config.data.max_seq_length), jnp.int32))["params"]
  return core.build(
    config,
    init_params,
    metric_sums=lambda params, batch, rng: pretraining_losses(_apply(model, params, batch, rng), batch),
    total_loss=total_loss,
    denominators=denominators,
    eval_fn=lambda params, batch: pretraining_losses(_apply(model, params, batch), batch),
    mesh=mesh,
    rules=rules,
    prepare_params=lambda shardings: shared_layer_gather(model_config, shardings),
  )


def _model_config(config, tokenizer) -> model_lib.AlbertConfig:
  model_config = config_lib.model_config(config)
  if config.model.vocab_size == 0:  # 0 = the size of the vocabulary in use (e.g. one trained on the corpus)
    model_config = model_config.replace(vocab_size=tokenizer.vocab_size)
  core.check_model_fits(
    model_config,
    tokenizer,
    "data.max_seq_length",
    config.data.max_seq_length,
    f"set --config.model.vocab_size={tokenizer.vocab_size} (or 0 to follow the vocabulary)",
  )
  return model_config


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


def _vocabulary(config, workdir: pathlib.Path) -> tokenizer_lib.Tokenizer:
  """The run's vocabulary in WORKDIR/spiece.model: copied from config.data.vocab, or trained on the corpus."""
  target = workdir / "spiece.model"
  if jax.process_index() == 0 and not target.exists():
    vocab.write(config.data, target)
  core.sync("vocabulary")
  return tokenizer_lib.Tokenizer(target)


# ---------------------------------------------------------------------------
# The trainer.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Pretrains as configured, resuming from the newest checkpoint in `workdir`; returns the last metrics."""
  # Mesh.
  workdir, mesh, rules = core.start(config, workdir)

  # Vocabulary and data.
  tokenizer = _vocabulary(config, workdir)
  model_config = _model_config(config, tokenizer)
  _check_workdir_model(workdir, model_config)
  _write_workdir_config(workdir, config, model_config)
  data_dir = config.data.data_dir or str(workdir / "data")
  if jax.process_index() == 0:  # prepare once, before the other processes read
    pipeline.document_source(config.data, tokenizer, "train", data_dir)
  core.sync("data")
  stream = lambda split: pipeline.make_process_iterator(
    config.data,
    tokenizer,
    config.batch_size,
    config.seed,
    split,
    num_shards=config.data.num_shards,
    data_dir=data_dir,
    model_vocab_size=model_config.vocab_size,
  )
  train_iter = stream("train")

  # Model, optimizer and sharding.
  setup = build(config, model_config, mesh, rules)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(config.seed))

    # Checkpoints: resume from the newest complete one.
    manager = checkpointing.checkpoint_manager(workdir / "checkpoints", ("state", "data_iter"), config.keep_checkpoints)
    restored = checkpointing.restore_newest(
      manager,
      checkpointing.composite(
        dict(
          state=ocp.args.StandardRestore(setup.abstract_state), data_iter=grain.checkpoint.CheckpointRestore(train_iter)
        )
      ),
    )
    state = setup.init(init_rng) if restored is None else restored["state"]

    # The loop.
    step_flops = flops_lib.train_flops_per_step(
      model_config, config.batch_size, config.data.max_seq_length, config.data.max_predictions_per_seq
    )
    c = model_config
    logging.info(
      "Model %s: %d layers sharing %s, hidden %d, embedding %d, %d pieces, %s; %d device(s), mesh %s; "
      "%.3g FLOPs per step (experiment.json has the whole config).",
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
    )
    writer = MetricWriter(workdir)
    trainer = loop.Trainer(
      setup=setup,
      next_batch=loop.batches(train_iter),
      save_items=lambda state: dict(
        state=ocp.args.StandardSave(state), data_iter=grain.checkpoint.CheckpointSave(train_iter)
      ),
      summarize=summarize,
      describe=describe,
      evaluate=lambda state: evaluate(config, stream, setup.eval_step, state.params, mesh),
      tokens_per_batch=config.batch_size * config.data.max_seq_length,
      flops_per_step=step_flops,
      workdir=workdir,
    )
    outcome = loop.run(config, trainer, state, mesh, manager, writer, dropout_rng)
    manager.close()
    writer.close()
  return outcome.last


def evaluate(config, stream: Callable, eval_step, params, mesh) -> dict[str, dict[str, float]]:
  """{'eval': MLM and SOP metrics} over `config.eval_batches` batches of the held-out split (the same each time)."""
  try:
    eval_iter = stream("validation")
  except ValueError as e:
    logging.warning("No evaluation: %s", e)
    return {}
  totals = None
  for _ in range(config.eval_batches):
    sums = jax.device_get(eval_step(params, sharding.global_batch(next(eval_iter), mesh)))
    totals = sums if totals is None else {k: totals[k] + sums[k] for k in sums}
  return {"eval": summarize({k: float(v) for k, v in totals.items()})}

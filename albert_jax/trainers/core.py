"""The trainer core that pretraining and fine-tuning share: the train state, its sharded setup, the step factory.

Each trainer (`pretraining`, `finetuning`) supplies its model, its loss as
metric sums, and its data; everything a user relies on behaving the same in
both is written here once, or in `loop` (the loop and its periodic actions),
`checkpointing` (orbax, resume, preemption) and `metric_writer`.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from etils import epath
from flax.linen import partitioning as nn_partitioning
from jax.experimental import multihost_utils

from albert_jax import config_lib, optim, sharding, storage
from albert_jax.trainers import profiling


class TrainingError(RuntimeError):
  """A run that cannot go on; the message says why and what to do."""


class CheckpointWriteError(TrainingError):
  """A checkpoint could not be written. orbax's background threads may then wait forever (a read-only disk), so
  the command line exits without waiting for them."""


def first_line(e: BaseException) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0]


def root_cause(e: BaseException) -> str:
  """The first line of the innermost exception behind `e` (orbax wraps the file error that says what is wrong)."""
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  return f"{type(e).__name__}: {first_line(e)}"


def peer_lost(e: BaseException) -> bool:
  """Whether `e` says that another process of a multi-process run is gone (a collective or barrier failed)."""
  return jax.distributed.is_initialized() and any(
    sign in str(e)
    for sign in (
      "Connection closed by peer",
      "Connection reset by peer",
      "heartbeat timeout",
      "Barrier timed out",
      "Barrier failed",
      "Gloo",
      "coordination service",
    )
  )


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def setup_mesh(config) -> tuple[jax.sharding.Mesh, Any]:
  """The device mesh and logical axis rules of `config`, checking that the batch splits over the mesh."""
  devices = jax.devices()
  if config.debug.interleave_processes:
    devices = sharding.interleave_processes(devices)
  mesh = sharding.create_mesh(config.mesh, devices)
  rules = sharding.axis_rules(config)
  if config.batch_size % sharding.data_parallel_size(mesh):
    raise TrainingError(
      f"config.batch_size={config.batch_size} is not divisible by the data-parallel size "
      f"{sharding.data_parallel_size(mesh)} (mesh data x fsdp); choose a multiple."
    )
  return mesh, rules


def start(config, workdir: str) -> tuple[epath.Path, jax.sharding.Mesh, Any]:
  """What every run does first: check the config, join the other processes, make the workdir, build the mesh.

  The workdir may be local or in a bucket (`gs://`); it is checked writable here, before any work, so that a
  bucket that does not exist or a path without write permission ends the run with one line at once.
  """
  config_lib.check(config)
  profiling.check_profile_steps(config.get("profile_steps"))
  profiling.use_compilation_cache(config.get("compilation_cache_dir", ""))  # before anything compiles
  sharding.maybe_initialize_distributed(config)
  workdir = storage.check_writable(workdir, "--workdir")
  return (workdir, *setup_mesh(config))


def check_model_fits(model_config, tokenizer, length_field: str, length: int, vocabulary_fix: str):
  """The model embeds every piece of the vocabulary and every position of the run's sequences, or says what to set."""
  if model_config.vocab_size != tokenizer.vocab_size:
    raise TrainingError(
      f"The model has vocab_size={model_config.vocab_size} but the vocabulary {tokenizer.model_path} has "
      f"{tokenizer.vocab_size} pieces; {vocabulary_fix}."
    )
  if length > model_config.max_position_embeddings:
    raise TrainingError(
      f"config.{length_field}={length} exceeds the model's max_position_embeddings="
      f"{model_config.max_position_embeddings}; lower it."
    )


def sync(name: str):
  """A barrier over processes (a no-op for one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


class ShardedState(NamedTuple):
  """The train state's layout on the mesh, and how to create it there."""

  abstract: Any  # ShapeDtypeStructs carrying their shardings (restore targets)
  shardings: Any  # NamedShardings, the structure of the unboxed TrainState
  init: Callable  # jitted rng -> TrainState, created directly in its shards


def shard_train_state(init_params: Callable, tx: optax.GradientTransformation, mesh, rules) -> ShardedState:
  """Abstract init → logical specs → mesh shardings → a jitted init; nothing unsharded is materialised.

  Args:
    init_params: rng -> the model's `nn.Partitioned`-boxed params.
    tx: the optimizer (its moments inherit the parameters' boxes).
    mesh, rules: from `setup_mesh`; call this under `jax.set_mesh(mesh)` and
      `nn_partitioning.axis_rules(rules)`.
  """

  def create(rng):
    params = init_params(rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

  abstract = jax.eval_shape(create, jax.eval_shape(jax.random.PRNGKey, 0))  # abstract key: no device touched
  shardings = sharding.logical_shardings(abstract, mesh, rules)
  init = jax.jit(lambda r: nn.unbox(create(r)), out_shardings=shardings)
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), sharding.unboxed(abstract), shardings
  )
  return ShardedState(abstract, shardings, init)


def apply_gradients(state: TrainState, grads, tx: optax.GradientTransformation, loss):
  """One optimizer update, skipped when the loss or the gradient is not finite.

  A skipped update keeps the parameters and the optimizer's moments, but its step counters (every `count`
  of the optimizer state: the schedule's, Adam's) move on with `state.step`, so that the learning rate
  applied after a skip is the one logged for that step and still reaches 0 at the last step.

  Returns:
    (new state, global gradient norm, 1 if the update was skipped else 0);
    the loop decides whether a skipped step stops the run
    (`check_nonfinite`).
  """
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  counter = lambda path: bool(path) and getattr(path[-1], "name", None) == "count"
  opt_state = jax.tree.map_with_path(
    lambda path, n, o: n if counter(path) else jnp.where(finite, n, o), opt_state, state.opt_state
  )
  new_state = TrainState(step=state.step + 1, params=keep(params, state.params), opt_state=opt_state)
  return new_state, grad_norm, (~finite).astype(jnp.int32)


# ---------------------------------------------------------------------------
# The step: each trainer supplies its loss as metric sums.

MetricSums = Callable[[Any, dict[str, jax.Array], jax.Array], dict[str, jax.Array]]


def loss_gradients(
  metric_sums: MetricSums,
  total_loss: Callable[[dict[str, jax.Array]], jax.Array],
  denominators: Callable[[dict[str, jax.Array]], dict[str, jax.Array]],
  params,
  batch,
  rng: jax.Array,
  grad_accum_steps: int = 1,
  prepare_params: Callable[[Any], Any] = lambda params: params,
  batch_axes: tuple[str, ...] = sharding.BATCH_AXES,
):
  """(metric sums, gradient of the total loss) of one global batch, over `grad_accum_steps` microbatches.

  Exactly the full-batch gradient: the batch's denominators (masked tokens,
  sequences) are counted first, and each microbatch's loss is its loss sums
  divided by those, so that the microbatch gradients add up to the gradient
  of the full batch's loss (`optim.accumulate_gradients`; `total_loss` must
  be linear in the sums that depend on the parameters, as sums over
  examples divided by counts are). Every microbatch draws its own dropout
  masks, and the gradient is reduced over the batch axes once.
  """
  counts = denominators(batch)
  # The parameters are prepared (e.g. the shared layer gathered whole) once per step, outside the microbatch
  # loop; their gradient flows back through the same preparation once.
  prepared, restore = jax.vjp(prepare_params, params)

  def grads_and_sums(p, micro, micro_rng):
    def loss_fn(p):
      sums = metric_sums(p, micro, micro_rng)
      return total_loss({**sums, **counts}), sums

    grads, sums = jax.grad(loss_fn, has_aux=True)(p)
    return sums, grads

  sums, grads = optim.accumulate_gradients(grads_and_sums, prepared, batch, rng, grad_accum_steps, batch_axes)
  return sums, restore(grads)[0]


def make_train_step(
  metric_sums: MetricSums,
  total_loss: Callable[[dict[str, jax.Array]], jax.Array],
  denominators: Callable[[dict[str, jax.Array]], dict[str, jax.Array]],
  tx: optax.GradientTransformation,
  schedule: optax.Schedule,
  grad_accum_steps: int = 1,
  prepare_params: Callable[[Any], Any] = lambda params: params,
):
  """The pure `train_step(state, batch, rng) -> (state, metrics)` of a trainer.

  Args:
    metric_sums: (params, batch, dropout_rng) -> the trainer's metrics as sums
      over the batch with their denominators (losses, correct predictions,
      counts), so that microbatches and logging intervals add up exactly.
    total_loss: the metric sums -> the scalar whose gradient is taken.
    denominators: batch -> the counts `total_loss` divides by (those of the
      metric sums that do not depend on the parameters), for the whole batch.
    tx, schedule: the optimizer and its learning-rate schedule.
    grad_accum_steps: microbatches per update (`loss_gradients`).
    prepare_params: maps the parameters before the forward pass (pretraining
      gathers the shared layer once per step under FSDP).

  A non-finite loss or gradient leaves the state untouched (the update is
  skipped) and is reported in `metrics['nonfinite']`; the loop decides
  whether to stop.
  """

  def train_step(state: TrainState, batch, rng):
    dropout_rng = jax.random.fold_in(rng, state.step)
    sums, grads = loss_gradients(
      metric_sums, total_loss, denominators, state.params, batch, dropout_rng, grad_accum_steps, prepare_params
    )
    new_state, grad_norm, nonfinite = apply_gradients(state, grads, tx, total_loss(sums))
    return new_state, dict(sums, grad_norm=grad_norm, learning_rate=schedule(state.step), nonfinite=nonfinite)

  return train_step


class Setup(NamedTuple):
  """Everything compiled for one model on one mesh; call the jitted functions under `jax.set_mesh(mesh)`."""

  schedule: optax.Schedule
  abstract_state: Any  # ShapeDtypeStructs carrying their shardings (restore targets)
  state_shardings: Any
  init: Callable  # rng -> TrainState, created directly in its shards
  train_step: Callable  # jitted (state, batch, rng) -> (state, metrics); the state is donated
  eval_step: Callable  # jitted (params, batch) -> the trainer's evaluation outputs, replicated


def build(
  config,
  init_params: Callable,
  metric_sums: MetricSums,
  total_loss: Callable,
  denominators: Callable,
  eval_fn: Callable,
  mesh,
  rules,
  prepare_params: Callable[[Any], Callable] | None = None,
) -> Setup:
  """The optimizer, and the sharded init / train / eval steps: abstract init → logical specs → mesh shardings.

  Args:
    config: the experiment config (optimizer fields, grad_accum_steps).
    init_params: rng -> the model's `nn.Partitioned`-boxed parameters.
    metric_sums, total_loss, denominators: the trainer's loss (see `make_train_step`).
    eval_fn: (params, batch) -> what evaluation needs (metric sums, or the
      head's outputs).
    mesh, rules: from `setup_mesh`.
    prepare_params: param shardings -> the `prepare_params` of the step.
  """
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):  # traced for the mesh's platform (attention kernel)
    abstract_params = jax.eval_shape(init_params, jax.eval_shape(jax.random.PRNGKey, 0))  # no device touched
    tx, schedule = optim.make_optimizer(config, stacked_layers=optim.stacked_layers_mask(abstract_params))
    sharded = shard_train_state(init_params, tx, mesh, rules)
    prepare = prepare_params(sharded.shardings.params) if prepare_params else (lambda params: params)
    step_fn = make_train_step(metric_sums, total_loss, denominators, tx, schedule, config.grad_accum_steps, prepare)
    batch_sharding = sharding.batch_sharding(mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    train_step = jax.jit(
      step_fn,
      in_shardings=(sharded.shardings, batch_sharding, replicated),
      out_shardings=(sharded.shardings, replicated),
      donate_argnums=0,
    )
    eval_step = jax.jit(eval_fn, in_shardings=(sharded.shardings.params, batch_sharding), out_shardings=replicated)
  return Setup(schedule, sharded.abstract, sharded.shardings, sharded.init, train_step, eval_step)

"""What the pretraining and fine-tuning trainers share, so that both behave the same.

`train.py` (pretraining) and `finetune.py` (GLUE, SQuAD, RACE) are each one
readable loop, top to bottom. The pieces whose behaviour a user relies on in
both live here once: the mesh, the sharded train state, the update with its
non-finite guard, orbax checkpoints with resume and preemption, the metric
writer, and the command-line error handling.
"""

import json
import logging as logging_std
import pathlib
import signal
import threading
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from albert_jax import sharding


class TrainingError(RuntimeError):
  """A run that cannot go on; the message says why and what to do."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


# ---------------------------------------------------------------------------
# Mesh and sharded state.

def setup_mesh(config) -> tuple[jax.sharding.Mesh, Any]:
  """The device mesh and logical axis rules of `config`, checking that the batch splits over the mesh."""
  mesh = sharding.create_mesh(config.mesh)
  rules = sharding.axis_rules(config)
  if config.batch_size % sharding.data_parallel_size(mesh):
    raise TrainingError(f"config.batch_size={config.batch_size} is not divisible by the data-parallel size "
                        f"{sharding.data_parallel_size(mesh)} (mesh data x fsdp); choose a multiple.")
  return mesh, rules


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
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          sharding.unboxed(abstract), shardings)
  return ShardedState(abstract, shardings, init)


def apply_gradients(state: TrainState, grads, tx: optax.GradientTransformation, loss):
  """One optimizer update, skipped (state unchanged) when the loss or the gradient is not finite.

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
  new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                         opt_state=keep(opt_state, state.opt_state))
  return new_state, grad_norm, (~finite).astype(jnp.int32)


def check_nonfinite(step: int, nan_policy: str, manager: ocp.CheckpointManager, loss: float, grad_norm: float):
  """After a skipped update: stop with the last good checkpoint (nan_policy 'stop') or warn ('skip')."""
  if nan_policy == "stop":
    manager.wait_until_finished()
    raise TrainingError(
        f"Non-finite loss or gradient at step {step} (loss={loss}, grad_norm={grad_norm}). The update was not "
        f"applied and training stopped; the last good checkpoint is step {manager.latest_step()}. Lower the "
        "learning rate or inspect the data, or set --config.nan_policy=skip to skip such steps.")
  logging.warning("Non-finite loss at step %d: update skipped (nan_policy=skip).", step)


# ---------------------------------------------------------------------------
# Checkpoints.

def checkpoint_manager(directory: pathlib.Path, item_names: tuple[str, ...], max_to_keep: int,
                       **options) -> ocp.CheckpointManager:
  """An orbax manager with asynchronous saves; the loop decides when to save (always `force=True`)."""
  return ocp.CheckpointManager(directory, item_names=item_names, options=ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, enable_async_checkpointing=True, **options))


def restore_newest(manager: ocp.CheckpointManager, args: ocp.args.Composite):
  """The newest checkpoint that restores completely (a Composite), or None; damaged newer ones are skipped."""
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored = manager.restore(step, args=args)
      logging.info("Resumed from checkpoint at step %d.", step)
      return restored
    except Exception as e:  # pylint: disable=broad-except
      logging.error("Checkpoint at step %d cannot be restored (%s: %s); trying an older one.", step,
                    type(e).__name__, e)
  if manager.all_steps():
    raise TrainingError(f"No checkpoint in {manager.directory} could be restored; see the errors above. Move the "
                        "damaged step folders away or start a new --workdir.")
  return None


class Preemption:
  """SIGTERM sets a flag; the loop saves a checkpoint at the current step and exits cleanly."""

  def __init__(self):
    self.requested = False
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the current step, then exiting.")
    self.requested = True

  def stop_now(self, manager: ocp.CheckpointManager, step: int) -> bool:
    """True when SIGTERM arrived here or orbax saw a preemption on any host."""
    return self.requested or manager.reached_preemption(step)


# ---------------------------------------------------------------------------
# Metrics and logs.

class MetricWriter:
  """Metrics to metrics.jsonl and TensorBoard event files (tensorboardX: no TensorFlow needed), process 0 only."""

  def __init__(self, workdir: pathlib.Path):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    self._jsonl = open(workdir / "metrics.jsonl", "a")
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(workdir / "tensorboard"))
    except ImportError:
      logging.warning("tensorboardX is not installed; TensorBoard event files are not written.")
      self._tb = None

  def write(self, step: int, prefix: str, values: dict[str, float]):
    if not self._active:
      return
    self._jsonl.write(json.dumps({"step": step, **{f"{prefix}/{k}": float(v) for k, v in values.items()}}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(f"{prefix}/{k}", float(v), step)
      self._tb.flush()

  def close(self):
    if self._active:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


class _QuietLibraries(logging_std.Filter):
  """Drops the INFO chatter of orbax and tensorflow_datasets (dozens of lines per checkpoint); warnings pass."""

  def filter(self, record):
    noisy = any(lib in record.pathname for lib in ("/orbax/", "/tensorflow_datasets/", "/etils/"))
    return record.levelno >= logging_std.WARNING or not noisy


def quiet_library_logs():
  logging.get_absl_handler().addFilter(_QuietLibraries())


def duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def run_main(argv, run: Callable[[], Any]):
  """The body of an entry point: user errors end as one `error: ...` line, not a traceback."""
  if len(argv) > 1:
    raise SystemExit(f"Unexpected arguments: {argv[1:]}")
  quiet_library_logs()
  try:
    run()
  except (TrainingError, ValueError, OSError) as e:  # CheckpointError is a ValueError
    logging.debug("Stopped by", exc_info=True)
    raise SystemExit(f"error: {e}") from None

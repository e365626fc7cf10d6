"""What the pretraining and fine-tuning trainers share, so that both behave the same.

`train.py` (pretraining) and `finetune.py` (GLUE, SQuAD, RACE) are each one
readable loop, top to bottom. The pieces whose behaviour a user relies on in
both live here once: the mesh, the sharded train state, the update with its
non-finite guard, orbax checkpoints with resume and preemption, the metric
writer, and the command-line error handling.
"""

import contextlib
import errno
import json
import logging as logging_std
import os
import pathlib
import signal
import sys
import threading
import time
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from albert_jax import sharding


class TrainingError(RuntimeError):
  """A run that cannot go on; the message says why and what to do."""


class CheckpointWriteError(TrainingError):
  """A checkpoint could not be written. orbax's background threads may then wait forever (a read-only disk), so
  the command line exits without waiting for them."""


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

class CheckpointManager(ocp.CheckpointManager):
  """orbax's manager, whose failed writes (a full or read-only disk) end as a `TrainingError` saying what to do.

  orbax writes a step into a temporary folder and renames it when complete,
  and deletes old steps only after a new one is complete: a failed write
  leaves every checkpoint already written intact.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._check_writable()  # before any training: a read-only disk is found at once, not at the first save

  def save(self, step, *args, **kwargs):
    self._check_writable()  # orbax waits forever when it cannot create the step folder: fail here first
    with self._explained_errors():
      return super().save(step, *args, **kwargs)

  def _check_writable(self):
    with self._explained_errors():
      probe = self.directory / f".write-check-{jax.process_index()}"
      probe.write_text("ok")
      probe.unlink()

  def wait_until_finished(self):
    with self._explained_errors():
      return super().wait_until_finished()

  @contextlib.contextmanager
  def _explained_errors(self):
    try:
      yield
    except TrainingError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (orbax, tensorstore and the OS raise many kinds)
      if peer_lost(e):
        raise
      raise CheckpointWriteError(
          f"Writing a checkpoint to {self.directory} failed: {root_cause(e)}. If that disk is full or read-only, "
          "make room or make it writable; then run again with the same --workdir: training resumes from the newest "
          f"complete checkpoint (step {self._newest_complete()}); the checkpoints already written are intact.") from e

  def _newest_complete(self):
    try:
      self.reload()  # forgets the step whose write failed
      return self.latest_step()
    except Exception:  # pylint: disable=broad-except
      return "unknown"


def checkpoint_manager(directory: pathlib.Path, item_names: tuple[str, ...], max_to_keep: int,
                       **options) -> CheckpointManager:
  """A manager with asynchronous saves; the loop decides when to save (always `force=True`)."""
  return CheckpointManager(directory, item_names=item_names, options=ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, enable_async_checkpointing=True, **options))


def restore_newest(manager: ocp.CheckpointManager, args: ocp.args.Composite):
  """The newest checkpoint that restores completely (a Composite), or None when there is none.

  Newer steps that cannot be restored (a truncated or missing file) are
  reported and, once an older one restores, moved aside to
  `<step>.damaged-<time>` so that the run can save those steps again. With
  several processes all restore the same step: process 0's newest, given up
  by all when any process cannot read it (processes resuming from different
  steps would wait for each other forever).
  """
  damaged = []
  while (step := agreed(max((s for s in manager.all_steps() if s not in damaged), default=-1))) >= 0:
    try:
      restored, error = manager.restore(step, args=args), None
    except Exception as e:  # pylint: disable=broad-except  (a damaged file fails in many ways)
      restored, error = None, root_cause(e)
    if all_processes(error is None):
      logging.info("Resumed from checkpoint at step %d.", step)
      _move_aside(manager, damaged)
      return restored
    logging.error("Checkpoint at step %d cannot be restored (%s); trying an older one.", step,
                  error or "another process could not read it")
    damaged.append(step)
  if damaged:
    raise TrainingError(f"No checkpoint in {manager.directory} could be restored; see the errors above. Move the "
                        "damaged step folders away or start a new --workdir.")
  return None


def _move_aside(manager: ocp.CheckpointManager, steps: list[int]):
  for step in steps:
    aside = manager.directory / f"{step}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    logging.warning("Moving the damaged checkpoint of step %d aside to %s.", step, aside)
    if jax.process_index() == 0:
      (manager.directory / str(step)).rename(aside)
  if steps:
    sync("damaged checkpoints moved aside")
    manager.reload()


def agreed(value: int) -> int:
  """Process 0's `value`, on every process."""
  if jax.process_count() == 1:
    return value
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def all_processes(flag: bool) -> bool:
  """True when `flag` is true on every process."""
  if jax.process_count() == 1:
    return flag
  return bool(np.all(multihost_utils.process_allgather(np.int32(flag))))


class Preemption:
  """SIGTERM makes the loop save a checkpoint at the current step and exit cleanly.

  One process: a Python handler sets a flag. Several: JAX's preemption sync
  manager (its own SIGTERM handler, left in place) has every process stop at
  the same step, whichever of them got the signal.
  """

  def __init__(self):
    self.requested = False
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the current step, then exiting.")
    self.requested = True

  def stop_now(self, manager: ocp.CheckpointManager, step: int) -> bool:
    """True when SIGTERM arrived here or orbax saw a preemption on any host."""
    self.requested = self.requested or manager.reached_preemption(step)
    return self.requested

  def save_before_exit(self, manager: ocp.CheckpointManager, step: int, save: Callable[[], Any]):
    """Saves `step` (unless the periodic save just did) and waits for the write; the loop then exits."""
    if manager.latest_step() != step:
      save()
    manager.wait_until_finished()
    logging.warning("Preempted: checkpoint saved at step %d; exiting. Run again with the same --workdir to resume.",
                    step)


# ---------------------------------------------------------------------------
# Metrics and logs.

def write_text_atomic(path: pathlib.Path, text: str):
  """Replaces `path` whole: a reader (another process resuming) or a kill mid-write never sees half a file."""
  partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
  try:
    partial.write_text(text)
    os.replace(partial, path)
  finally:
    partial.unlink(missing_ok=True)


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch.

  tensorboardX imports torch when it is installed, only to accept torch tensors (3-4 s of every start on 2
  cores). Scalars need none of it, so while tensorboardX loads, `import torch` fails as on a machine without
  it; a later `import torch` elsewhere works as usual.
  """
  if "torch" in sys.modules or "tensorboardX" in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    return SummaryWriter
  sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:
  """Metrics to metrics.jsonl and TensorBoard event files (tensorboardX: no TensorFlow needed), process 0 only."""

  def __init__(self, workdir: pathlib.Path):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    self._jsonl = open(workdir / "metrics.jsonl", "a")
    try:
      self._tb = _summary_writer_class()(str(workdir / "tensorboard"))
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


def duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


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
      sign in str(e) for sign in ("Connection closed by peer", "Connection reset by peer", "heartbeat timeout",
                                  "Barrier timed out", "Barrier failed", "Gloo", "coordination service"))


def _explain(e: BaseException) -> str:
  """The one-line message for an error that ends a run: what failed and what to do."""
  if peer_lost(e):
    return (f"lost contact with another process of this {jax.process_count()}-process run ({first_line(e)}). A "
            "process probably died or was stopped: see its log. Start all processes again with the same --workdir; "
            "training resumes from the newest complete checkpoint.")
  if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
    return f"{e}. Free space on that disk, make it writable, or choose another --workdir."
  return str(e)


def run_main(run: Callable[[], Any]):
  """Runs a trainer: errors the user can act on are re-raised as one `TrainingError` line (`cli.run` prints it).

  A process of a multi-process run that fails exits at once, skipping JAX's
  shutdown barrier (which would wait for the others while they wait for it
  in a collective): the others then fail their next collective and exit too.
  So does a process whose checkpoint write failed (see CheckpointWriteError).
  """
  try:
    run()
  except Exception as e:  # pylint: disable=broad-except
    expected = isinstance(e, (TrainingError, ValueError, OSError)) or peer_lost(e)  # CheckpointError: ValueError
    if jax.distributed.is_initialized() or isinstance(e, CheckpointWriteError):
      if not expected:
        logging.exception("Stopped by")
      logging.flush()
      logging_std.disable(logging_std.CRITICAL)  # background threads' errors would come after the one that matters
      if expected:
        print(f"error: {_explain(e)}", file=sys.stderr, flush=True)
      os._exit(1)  # pylint: disable=protected-access
    if not expected:
      raise
    raise TrainingError(_explain(e)) from e

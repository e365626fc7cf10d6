"""Checkpoints that survive kills, full disks and preemption: orbax's manager, resume, SIGTERM.

orbax writes each step into a temporary folder renamed when complete (on a
bucket, which has no rename: into the step folder, with `commit_success.txt`
written last, and a step counts only with it) and deletes old steps only after
a new one is complete. On top of that:
`restore_newest` skips (and moves aside) damaged steps, with every process
agreeing on the step, and reads again (then stops on) a step it cannot read;
failed writes end as one `TrainingError` line; SIGTERM during the loop saves
at the current step (`Preemption`).
"""

import contextlib
import errno
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from albert_jax import storage
from albert_jax.trainers import core
from albert_jax.trainers.core import CheckpointWriteError, TrainingError

# What marks a step folder on a bucket as complete (orbax's CommitFileTemporaryPath writes it last).
COMMIT_MARKER = "commit_success.txt"


class CheckpointManager(ocp.CheckpointManager):
  """orbax's manager, whose failed writes (a full or read-only disk) end as a `TrainingError` saying what to do.

  orbax writes a step into a temporary folder and renames it when complete
  (on a bucket: marks it complete with `COMMIT_MARKER`, written last), and
  deletes old steps only after a new one is complete: a failed write leaves
  every checkpoint already written intact.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._check_writable()  # before any training: a read-only disk is found at once, not at the first save

  def save(self, step, *args, **kwargs):
    self._check_writable()  # orbax waits forever when it cannot create the step folder: fail here first
    with self._explained_errors(step):
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
  def _explained_errors(self, step=None):
    try:
      yield
    except TrainingError:
      raise
    except Exception as e:  # pylint: disable=broad-except  (orbax, tensorstore and the OS raise many kinds)
      if core.peer_lost(e):
        raise
      failed = f"Writing a checkpoint to {self.directory} failed: {core.root_cause(e).rstrip('.')}."
      raise CheckpointWriteError(f"{failed} {self._advice(e, step)}") from e

  def _advice(self, e: Exception, step) -> str:
    """What to do about a failed write, by its cause (tensorstore's errors carry the OS's message, not its errno)."""
    cause = core.root_cause(e)
    if isinstance(e, ocp.checkpoint_manager.StepAlreadyExistsError):
      return (
        f"Another run is writing checkpoints into this --workdir, or an earlier start left step {step} there: stop "
        f"the other run or give each run its own --workdir; if there is none, move {self.directory / str(step)} "
        "aside and run again with the same --workdir. The checkpoints already written are intact."
      )
    if any(os.strerror(code) in cause for code in (errno.ENOSPC, errno.EDQUOT)):
      todo = "The disk is full: make room on it"
    elif any(os.strerror(code) in cause for code in (errno.EROFS, errno.EACCES, errno.EPERM)):
      todo = "That place cannot be written: make it writable"
    else:
      todo = "If that disk is full or read-only, make room or make it writable"
    newest = self._newest_complete()
    if newest is None:
      return f"{todo}; then run again with the same --workdir (no checkpoint was complete yet)."
    return (
      f"{todo}; then run again with the same --workdir: training resumes from the newest complete checkpoint "
      f"(step {newest}); the checkpoints already written are intact."
    )

  def _newest_complete(self):
    try:
      self.reload()  # forgets the step whose write failed
      return self.latest_step()
    except Exception:  # pylint: disable=broad-except
      return "unknown"


def checkpoint_manager(
  directory: epath.Path, item_names: tuple[str, ...], max_to_keep: int, **options
) -> CheckpointManager:
  """A manager with asynchronous saves; the loop decides when to save (always `force=True`)."""
  return CheckpointManager(
    directory,
    item_names=item_names,
    options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=True, **options),
  )


# A restore error that says nothing about the step: the read itself failed (the OS refused, the storage did not
# answer; TensorStore's status codes as orbax passes them on). Any other error proves the step incomplete or
# corrupt: a file missing, shorter than its index says, or read whole but not decoding into the checkpoint.
UNREAD = re.compile(
  r"\b(UNAVAILABLE|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED|PERMISSION_DENIED|UNAUTHENTICATED|ABORTED|CANCELLED|"
  r"UNKNOWN|INTERNAL)\b"
)
READ_ATTEMPTS = 3
RETRY_SECONDS = 2.0  # before the second attempt; doubled before each further one


def restore_newest(manager: ocp.CheckpointManager, args: ocp.args.Composite):
  """The newest checkpoint that restores completely (a Composite), or None when there is none.

  Newer steps that are provably damaged (a file missing, short, or read but
  not decoding: `is_damage`) are reported and, once an older one restores,
  moved aside to `<step>.damaged-<time>` so that the run can save them again
  (`storage.move_aside`: one rename on a disk; on a bucket a copy, then the
  commit marker deleted, then the rest). A step that fails to read for any
  other reason is read again (`READ_ATTEMPTS`); if it still fails, the run
  stops with that error and the step stays where it is. With several
  processes all restore the same step: process 0's newest, given up by all
  when any process finds it damaged (processes resuming from different steps
  would wait for each other forever).
  """
  damaged = []
  while (step := agreed(max((s for s in manager.all_steps() if s not in damaged), default=-1))) >= 0:
    _check_process_count(manager.directory / str(step))
    restored, error = _read(manager, step, args)
    if all_processes(error is None):
      logging.info("Resumed from checkpoint at step %d.", step)
      _move_aside(manager, damaged)
      return restored
    cause = core.root_cause(error) if error else "another process could not read it"
    if not all_processes(error is None or is_damage(error)):
      raise TrainingError(
        f"The checkpoint at step {step} in {manager.directory} could not be read ({cause}) in {READ_ATTEMPTS} "
        "attempts. Nothing shows that it is damaged, so it was left in place: run again once the storage reads "
        "(on another process: see its log). Only if that step is damaged, move its folder away to resume from "
        "the one before."
      ) from error
    logging.error("Checkpoint at step %d cannot be restored (%s); trying an older one.", step, cause)
    damaged.append(step)
  if damaged:
    raise TrainingError(
      f"No checkpoint in {manager.directory} could be restored; see the errors above. Move the "
      "damaged step folders away or start a new --workdir."
    )
  return None


def is_damage(e: BaseException) -> bool:
  """Whether the error of a restore proves the step incomplete or corrupt, rather than unread (`UNREAD`)."""
  while e is not None:
    missing = isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError))
    if (isinstance(e, OSError) and not missing) or UNREAD.search(core.first_line(e)):
      return False
    e = e.__cause__ or e.__context__
  return True


def _read(manager: ocp.CheckpointManager, step: int, args: ocp.args.Composite):
  """(the restored step, None), or (None, the error): damage at once, any other error after `READ_ATTEMPTS`."""
  attempt = 1
  while True:
    try:
      return manager.restore(step, args=args), None
    except Exception as e:  # pylint: disable=broad-except  (a damaged or unreadable file fails in many ways)
      if is_damage(e) or attempt == READ_ATTEMPTS:
        return None, e
      wait = RETRY_SECONDS * 2 ** (attempt - 1)
      logging.warning(
        "Reading the checkpoint at step %d failed (%s); reading it again in %.3g s.", step, core.root_cause(e), wait
      )
    time.sleep(wait)
    attempt += 1


def _check_process_count(step_dir: epath.Path):
  """A step with per-process items (grain's data position, `process_<i>-of-<N>.json`) restores with N processes."""
  for item in step_dir.glob("*/process_*-of-*.json"):
    written = int(item.stem.rsplit("-of-", 1)[1])
    if written != jax.process_count():
      raise TrainingError(
        f"The checkpoint at step {step_dir.name} in {step_dir.parent} was written by {written} processes, and "
        f"this run has {jax.process_count()}: each process's position in the data ({item.parent.name}/"
        f"process_<i>-of-{written}.json) resumes only on the same number of processes. Run again with "
        f"{written} processes, or start a new --workdir."
      )
    return


def _move_aside(manager: ocp.CheckpointManager, steps: list[int]):
  for step in steps:
    aside = manager.directory / f"{step}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    logging.warning("Moving the damaged checkpoint of step %d aside to %s.", step, aside)
    if jax.process_index() == 0:
      storage.move_aside(manager.directory / str(step), aside, COMMIT_MARKER)
  if steps:
    core.sync("damaged checkpoints moved aside")
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

  One process: a Python handler sets a flag, installed for the time of a
  `with` block (the loop) and then replaced by the one before it, so that
  SIGTERM after the loop (during the final predictions) ends the process as
  usual. Several: JAX's preemption sync manager (its own SIGTERM handler,
  left in place) has every process stop at the same step, whichever of them
  got the signal.
  """

  def __init__(self):
    self.requested = False
    self._previous = None  # the handler replaced while the block runs

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

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
    logging.warning(
      "Preempted: checkpoint saved at step %d; exiting. Run again with the same --workdir to resume.", step
    )


def composite(items: dict[str, Any]) -> ocp.args.Composite:
  """orbax's args for one checkpoint of several items (the train state, the data iterator's position, ...)."""
  return ocp.args.Composite(**items)

"""What a user needs to see why a step is slow, and to restart without recompiling: profiler traces and the
persistent compilation cache, set from the config for both trainers.

`config.profile_steps = (START, COUNT)` traces the steps START+1 .. START+COUNT (those the log calls so) with
`jax.profiler` into WORKDIR/profile/plugins/profile/<run>/ (an .xplane.pb for TensorBoard's profile plugin and a
.trace.json.gz for Perfetto; BUILD.md says how to read them). The first step of a run compiles its step function,
so the trace never starts before the run's second step: its compile would fill the trace.
"""

import jax
from absl import logging

from albert_jax import storage


def use_compilation_cache(directory: str):
  """Compiled steps are kept in `directory` (local or gs://) and read back by the next start with the same
  programs (a restart after preemption); every compile is kept, however quick. '' leaves JAX's setting alone."""
  if not directory:
    return
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  logging.info("Persistent compilation cache: %s", directory)


def check_profile_steps(value) -> tuple[int, int] | None:
  """(START, COUNT) of `config.profile_steps`, None when empty; a ValueError naming the field otherwise."""
  value = tuple(value or ())
  if not value:
    return None
  if len(value) != 2 or value[0] < 0 or value[1] < 1:
    raise ValueError(f"config.profile_steps={value}: give START,COUNT (e.g. 10,5: the steps 11 to 15), or ().")
  return int(value[0]), int(value[1])


class StepProfiler:
  """Starts and stops the trace around the configured steps; the loop calls `before` and `after` each step."""

  def __init__(self, profile_steps, workdir, first_step: int):
    steps = check_profile_steps(profile_steps)
    self.start = self.stop = -1
    if steps is not None and workdir is not None:
      self.start = max(steps[0], first_step + 1)  # the run's first step compiles
      self.stop = steps[0] + steps[1]
      self.folder = storage.path(workdir) / "profile"
    self.mirror = None

  def before(self, step: int):
    """Called with the number of steps done, before the next one is queued."""
    if step == self.start and step < self.stop and jax.process_index() == 0:
      self.mirror = storage.LocalMirror(self.folder)
      jax.profiler.start_trace(str(self.mirror.local), create_perfetto_trace=True)

  def after(self, step: int, state):
    """Called with the number of steps done once a step is queued: the trace ends when the last one has run."""
    if self.mirror is not None and step >= self.stop:
      self.close(state)

  def close(self, state=None):
    if self.mirror is None:
      return
    jax.block_until_ready(state)
    jax.profiler.stop_trace()
    self.mirror.close()
    logging.info("Profiled steps %d to %d into %s", self.start + 1, self.stop, self.folder)
    self.mirror = None

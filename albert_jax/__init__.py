"""albert_jax: ALBERT pretraining and fine-tuning in JAX/Flax."""

import importlib.util as _importlib_util
import os as _os

__version__ = "0.1.0"


def _keep_libtpu_to_tpu_machines():
  """On a machine with no TPU, JAX starts on its other devices without loading libtpu.

  libtpu is installed beside the CPU build for `compile_check` (it compiles
  for TPU slices on any host). JAX would otherwise try it as a backend in
  every process: a screenful of "could not determine TPU accelerator type"
  lines, and a lockfile error in a second process started beside the first.
  Only a CPU-only machine is changed (as JAX_PLATFORMS=cpu would); a TPU or
  GPU machine, and any JAX_PLATFORMS the user set, are left alone.
  """
  if _os.environ.get("JAX_PLATFORMS") or _importlib_util.find_spec("libtpu") is None:
    return
  from jax._src import (
    hardware_utils,  # JAX's own test for TPU and GPU chips (PCI ids, device files)
    xla_bridge,
  )

  if xla_bridge.backends_are_initialized():
    return
  if hardware_utils.num_available_tpu_chips_and_device_id()[0] == 0 and not hardware_utils.has_visible_nvidia_gpu():
    import jax

    jax.config.update("jax_platforms", "cpu")


_keep_libtpu_to_tpu_machines()

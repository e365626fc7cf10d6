"""Compile the real train step for a TPU slice on any host, and report whether and how it fits.

  python -m albert_jax.compile_check --config=experiments/xxlarge.py --topology=v3:16x16 [--json=PATH]

Needs libtpu (`pip install -r requirements-tpu.txt`). Prints per-device memory against HBM, the model's FLOPs and
the step time at 50% MFU, the FLOPs the compiled step executes, and the collectives per step with the all-reduce
bytes (`albert_jax.tools.compile_check`).
"""

from absl import flags
from ml_collections import config_flags

from albert_jax import cli
from albert_jax.tools import compile_check

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config, e.g. experiments/xxlarge.py.", lock_config=True
)
_TOPOLOGY = flags.DEFINE_string(
  "topology",
  "",
  "TPU slice, e.g. v3:16x16, v4:4x4x4, v5e:16x16, v5p:4x4x4 (needs libtpu); '' = this machine's own devices.",
)
_JSON = flags.DEFINE_string("json", "", "Also write the report as JSON to this path.")
_EXECUTED_FLOPS = flags.DEFINE_bool(
  "executed_flops", True, "Also measure the FLOPs the step executes (a second compile, of a 5-layer probe)."
)


def main():
  compile_check.main(_CONFIG.value, _TOPOLOGY.value, _JSON.value, _EXECUTED_FLOPS.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)

"""`python -m albert_jax.summary --config=experiments/base.py`: the configured model's parameters.

One row per parameter (path, shape, count), then `backbone_params: N` (the AlbertModel with pooler) and
`total_params: N` (plus the MLM and SOP heads). Nothing is allocated.
"""

from absl import flags
from ml_collections import config_flags

from albert_jax import cli, config_lib
from albert_jax.tools import summary

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file, e.g. experiments/base.py.", lock_config=True
)


def main():
  print(summary.format_table(config_lib.model_config(_CONFIG.value)))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)

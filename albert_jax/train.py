"""Pretraining (MLM + SOP): `python -m albert_jax.train --config=experiments/tiny.py --workdir=DIR`.

Resumes from the newest checkpoint in DIR; `--config.init_checkpoint=SRC` continues pretraining from any checkpoint
(`--config.sentence_objective=sop|nsp|none`: the paper's Table 5). The trainer is
`albert_jax.trainers.pretraining.train_and_evaluate`; ARCHITECTURE.md follows one batch through it.
"""

from absl import flags
from ml_collections import config_flags

from albert_jax import cli
from albert_jax.trainers import pretraining

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config, e.g. experiments/tiny.py.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the vocabulary.")


def main():
  command_line = config_flags.get_override_values(flags.FLAGS["config"])  # what --config.X=... set
  cli.run_trainer(lambda: pretraining.train_and_evaluate(_CONFIG.value, _WORKDIR.value, command_line))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)

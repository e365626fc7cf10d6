"""Fine-tuning on GLUE, SQuAD, RACE and your own files (experiments/classify.py, tag.py).

  python -m albert_jax.finetune --config=experiments/glue.py:sst2 --workdir=DIR

Resumes from the newest checkpoint in DIR. The trainer is `albert_jax.trainers.finetuning.finetune`.
"""

from absl import flags
from ml_collections import config_flags

from albert_jax import cli
from albert_jax.trainers import finetuning

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Fine-tuning config, e.g. experiments/glue.py:sst2 (add ',tiny' for a CPU smoke run).",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and predictions.")


def main():
  cli.run_trainer(lambda: finetuning.finetune(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)

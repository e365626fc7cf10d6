"""RACE fine-tuning as the ALBERT README: four-way multiple choice, seq 512, lr 2e-5, batch 32, 12,000 steps.

  python -m albert_jax.finetune --config=experiments/race.py --workdir=DIR \
      --config.init_checkpoint=PRETRAINED_SRC --config.task.data_dir=RACE_DIR

RACE_DIR holds {train,dev,test}/{high,middle}/*.txt (the original release), or set
--config.task.source=tfds. `race.py:tiny` gives a few-step CPU run with a tiny random
model. Every field is commented in `albert_jax.config_lib.finetuning`.
"""

from albert_jax import config_lib

DATA_DIR = "data/RACE"  # the unpacked RACE release
TINY_VOCAB = f"{config_lib.data_root()}/spm/albert_30k_spiece.model"  # the official ALBERT vocabulary


def get_config(arg: str = ""):
  config = config_lib.finetuning("race", DATA_DIR)
  if "tiny" in arg.split(","):
    config_lib.tiny_finetuning(config, TINY_VOCAB)
  return config

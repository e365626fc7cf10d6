"""RACE fine-tuning as the ALBERT release runs it for v2 models: four-way multiple choice, seq 512, batch 32,
12,000 steps (1,000 warmup), lr 1e-5 and no backbone dropout ("ALBERT DR" 0), the head's dropout 0.1.

The release README says v2 models use "a learning rate of 1e-5 and 0 ALBERT DR" on RACE because the v1 setting
(the paper's Table 14: lr 2e-5, ALBERT DR 0.1) makes them diverge; its run_race command and run_race.py's flags
give the same lr 1e-5 and head dropout 0.1. For a v1 checkpoint, `--config.learning_rate=2e-5
--config.model.hidden_dropout_prob=0.1 --config.model.attention_probs_dropout_prob=0.1` is Table 14's setting.

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

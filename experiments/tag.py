"""Token classification (NER, POS) of your own files: CoNLL (a token a line, its tag last) or JSON Lines.

  python -m albert_jax.finetune --config=experiments/tag.py --workdir=DIR \
      --config.init_checkpoint=PRETRAINED_SRC \
      --config.task.files.train=train.conll --config.task.files.dev=dev.conll

IOB1 and IOB2 tags both work; the dev scores are conlleval's entity precision, recall and F1, and the token
accuracy. Files may be local or gs://. Set --config.num_train_steps for your data (about 3 epochs). `tag.py:tiny`
gives a few-step CPU run with a tiny random model. Every field is commented in `albert_jax.config_lib.finetuning`;
the formats, windows and the predictions file in `albert_jax.tasks.tagging`.
"""

from albert_jax import config_lib

TINY_VOCAB = f"{config_lib.data_root()}/spm/albert_30k_spiece.model"  # the official ALBERT vocabulary


def get_config(arg: str = ""):
  config = config_lib.finetuning("tag", data_dir="")
  if "tiny" in arg.split(","):
    config_lib.tiny_finetuning(config, TINY_VOCAB)
  return config

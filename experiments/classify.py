"""Classification or regression of your own labelled files: CSV, TSV (with a header row) or JSON Lines.

  python -m albert_jax.finetune --config=experiments/classify.py --workdir=DIR \
      --config.init_checkpoint=PRETRAINED_SRC \
      --config.task.files.train=train.csv --config.task.files.dev=dev.csv \
      --config.task.text_fields=premise,hypothesis --config.task.label_field=label

One or two text columns; labels that are strings or integers are classes (sorted from the train file), numbers
with decimals a regression (`--config.task.problem` decides when the guess is wrong). Files may be local or gs://.
Set --config.num_train_steps for your data (about 3 epochs). `classify.py:tiny` gives a few-step CPU run with a
tiny random model. Every field is commented in `albert_jax.config_lib.finetuning`; the format and the predictions
file in `albert_jax.tasks.classify`.
"""

from albert_jax import config_lib

TINY_VOCAB = f"{config_lib.data_root()}/spm/albert_30k_spiece.model"  # the official ALBERT vocabulary


def get_config(arg: str = ""):
  config = config_lib.finetuning("classify", data_dir="")
  if "tiny" in arg.split(","):
    config_lib.tiny_finetuning(config, TINY_VOCAB)
  return config

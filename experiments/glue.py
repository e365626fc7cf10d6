"""GLUE fine-tuning with the ALBERT paper's per-task settings (seq 512, AdamW; lr, batch, steps, warmup per task).

  python -m albert_jax.finetune --config=experiments/glue.py:sst2 --workdir=DIR \
      --config.init_checkpoint=PRETRAINED_SRC

The argument is the task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli),
optionally followed by ',tiny' for a few-step CPU run with a tiny random model
(e.g. `glue.py:sst2,tiny`). Every field is commented in
`albert_jax.config_lib.finetuning`.
"""

from albert_jax import config_lib

DATA_DIR = f"{config_lib.data_root()}/glue"  # the GLUE root (or a task folder); override with --config.task.data_dir
TINY_VOCAB = f"{config_lib.data_root()}/spm/albert_30k_spiece.model"  # the official ALBERT vocabulary


def get_config(arg: str = "sst2"):
  task, *options = arg.split(",")
  config = config_lib.finetuning(task, DATA_DIR)
  if "tiny" in options:
    config_lib.tiny_finetuning(config, TINY_VOCAB)
  return config

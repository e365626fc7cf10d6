"""SQuAD fine-tuning as the ALBERT release: seq 384 and doc stride 128 (the README's run_squad commands); v1.1 lr
5e-5, batch 48, 3,649 steps; v2.0 3e-5, 48, 8,144 (the paper's Table 14, which gives seq 512 for v2.0). v2.0 uses
the release's SQuAD 2.0 head (start, end given the start, answerability; `--config.task.head=bert` for the
BERT-style head of Hugging Face's AlbertForQuestionAnswering), v1.1 the BERT-style head, as the release does.

  python -m albert_jax.finetune --config=experiments/squad.py:v2 --workdir=DIR \
      --config.init_checkpoint=PRETRAINED_SRC --config.task.data_dir=SQUAD_DIR

SQUAD_DIR holds {train,dev}-v{1.1,2.0}.json (or .json.zip); --config.task.files.train=...
points at another file. The argument is `v1` or `v2`, optionally followed by ',tiny' for a
few-step CPU run with a tiny random model. Every field is commented in
`albert_jax.config_lib.finetuning`.
"""

from albert_jax import config_lib

DATA_DIR = f"{config_lib.data_root()}/squad"  # folder of the SQuAD JSON files
TINY_VOCAB = f"{config_lib.data_root()}/spm/albert_30k_spiece.model"  # the official ALBERT vocabulary


def get_config(arg: str = "v1"):
  version, *options = arg.split(",")
  if version not in ("v1", "v2"):
    raise ValueError(f"experiments/squad.py:{arg}: use v1 or v2 (optionally ',tiny').")
  config = config_lib.finetuning(f"squad_{version}", DATA_DIR)
  if "tiny" in options:
    config_lib.tiny_finetuning(config, TINY_VOCAB)
  return config

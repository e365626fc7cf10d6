"""A small ALBERT pretrained on the shared real text: WikiText-2 validation and four Project Gutenberg books.

  python -m albert_jax.train --config=experiments/shared_text.py --workdir=workdirs/shared_text
  python -m albert_jax.plotting workdirs/shared_text        # curves.png from metrics.jsonl

Paths are relative to the repository root, with ../shared/data beside it (the layout of this project's
machines); point --config.data.files and --config.data.vocab elsewhere for other text. The official ALBERT
vocabulary (30,000 pieces) is used as is; the model is the tiny config's shape.
"""

from albert_jax import config_lib

DATA = "../shared/data"


def get_config():
  config = config_lib.pretraining("base")
  config.model.update(
      preset="small", vocab_size=30000, embedding_size=64, hidden_size=128, num_hidden_layers=4,
      num_attention_heads=2, intermediate_size=512, max_position_embeddings=128)
  config.data.source = "files"
  config.data.files = f"{DATA}/text/wikitext-2-raw/wiki.valid.raw,{DATA}/text/gutenberg/*.txt"
  config.data.vocab = f"{DATA}/spm/albert_30k_spiece.model"
  config.data.max_seq_length = 128
  config.data.max_predictions_per_seq = 20
  config.data.validation_percent = 5.0  # about 3 of the 64 documents (articles and books)
  config.batch_size = 32
  config.num_train_steps = 1500
  config.warmup_steps = 150
  config.learning_rate = 0.005
  config.log_every_steps = 25
  config.eval_every_steps = 250
  config.eval_batches = 8
  config.checkpoint_every_steps = 250
  return config

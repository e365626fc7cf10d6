"""A small ALBERT pretrained on the shared real text: WikiText-2 validation and four Project Gutenberg books.

  python -m albert_jax.train --config=experiments/shared_text.py --workdir=workdirs/shared_text
  python -m albert_jax.plotting workdirs/shared_text        # curves.png from metrics.jsonl

The text comes from the data folder (README "Data": $ALBERT_JAX_DATA, else ../shared/data beside the
checkout); point --config.data.files elsewhere for other text. The model is the tiny config's shape.

The recipe is what makes sentence-order prediction leave chance on 2 CPU cores in about 30 minutes
(benchmarks/RESULTS.md): an 8,000-piece vocabulary trained on this corpus (the official 30k vocabulary
spends half the step on an output layer over pieces this text barely uses, and MLM plateaued near 6 with it),
64-token sequences, batch 64 and LAMB at 1e-2. SOP moves only once MLM has learned some syntax: with
these settings it stays at 0.693 for about 1,200 steps before it falls. Use
`--config.data.vocab=../shared/data/spm/albert_30k_spiece.model --config.model.vocab_size=30000` for the
official vocabulary.
"""

from albert_jax import config_lib

DATA = config_lib.data_root()  # $ALBERT_JAX_DATA, else ../shared/data beside the checkout


def get_config():
  config = config_lib.pretraining("base")
  config.model.update(
    preset="small",
    vocab_size=0,
    embedding_size=64,
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=2,
    intermediate_size=512,
    max_position_embeddings=128,
  )  # vocab_size 0: the vocabulary's
  config.data.source = "files"
  config.data.files = f"{DATA}/text/wikitext-2-raw/wiki.valid.raw,{DATA}/text/gutenberg/*.txt"
  config.data.vocab = ""  # trained on config.data.files into WORKDIR/spiece.model
  config.data.vocab_size = 8000
  config.data.max_seq_length = 64
  # Room for the masks, not a cap that acts: the budget is round(15% of the maskable tokens), at most
  # round(0.15 * 61) = 9 here, so the tenth slot is always padding.
  config.data.max_predictions_per_seq = 10
  config.data.validation_percent = 5.0  # about 3 of the 64 documents (articles and books)
  config.batch_size = 64
  config.num_train_steps = 3000
  config.warmup_steps = 200
  config.learning_rate = 0.01
  config.log_every_steps = 50
  config.eval_every_steps = 250
  config.eval_batches = 8
  config.checkpoint_every_steps = 500
  return config

"""A pretraining run's vocabulary: the configured SentencePiece model, or one trained on the run's corpus."""

from etils import epath

from albert_jax import storage
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.data import builtin_corpus, corpus, tfds_builders


def write(config_data, target: epath.Path):
  """Writes `target`: a copy of `config_data.vocab`, else a vocabulary trained on the built-in corpus or the files.

  Either may be local or in a bucket (`gs://`).

  Raises:
    ValueError: a catalog dataset (config.data.source) with no vocabulary set.
  """
  if config_data.vocab:
    storage.copy(config_data.vocab, target)
  elif config_data.source == "builtin":
    builtin_corpus.write_vocab(target, config_data.vocab_size, seed=config_data.builtin_seed)
  elif config_data.source == "files":
    files = tfds_builders.expand_files(config_data.files)
    tokenizer_lib.train_vocab(corpus.sentences(files, config_data.format or None), target, config_data.vocab_size)
  else:
    raise ValueError(
      f"config.data.source={config_data.source!r} needs a vocabulary: set config.data.vocab to a "
      "SentencePiece model (e.g. the official ALBERT spiece.model)."
    )

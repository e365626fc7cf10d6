"""Fill-mask: `python -m albert_jax.predict --checkpoint=SRC --text="The capital of [MASK] is Delhi."`.

SRC is anything `checkpoints.load` reads; the tokenizer is the spiece.model that comes with it (or
`--vocab`). Several texts come from repeated `--text` flags or `--input_file` (one text a line); each may
hold several `[MASK]`s. Prints, per mask, the top-k tokens with their probabilities
(`albert_jax.tasks.fill_mask`).
"""

import pathlib

from absl import flags

from albert_jax import checkpoints, cli
from albert_jax.tasks import fill_mask

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Any checkpoint `checkpoints.load` reads.")
_TEXT = flags.DEFINE_multi_string("text", [], "A text with one or more [MASK]; repeat the flag for more texts.")
_INPUT_FILE = flags.DEFINE_string("input_file", None, "A UTF-8 file with one text per line.")
_TOP_K = flags.DEFINE_integer("top_k", 5, "Candidates shown per [MASK].", lower_bound=1)
_VOCAB = flags.DEFINE_string("vocab", None, "SentencePiece model; default: the spiece.model of --checkpoint.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Texts per model call.", lower_bound=1)


def read_texts() -> list[str]:
  """The --text values, then the non-empty lines of --input_file."""
  texts = list(_TEXT.value)
  if _INPUT_FILE.value:
    try:
      lines = pathlib.Path(_INPUT_FILE.value).read_text(encoding="utf-8").splitlines()
    except OSError as e:
      raise fill_mask.InputError(f"Cannot read --input_file: {e}") from None
    texts += [line for line in lines if line.strip()]
  if not texts:
    raise fill_mask.InputError('No text given; pass --text="... [MASK] ..." (repeatable) or --input_file=FILE.')
  return texts


def main():
  texts = read_texts()
  config, params = checkpoints.load(_CHECKPOINT.value)
  tokenizer = fill_mask.load_tokenizer(_CHECKPOINT.value, _VOCAB.value)
  results = fill_mask.fill_mask(config, params, tokenizer, texts, _TOP_K.value, _BATCH_SIZE.value)
  print(fill_mask.format_predictions(texts, results))


if __name__ == "__main__":
  flags.mark_flags_as_required(["checkpoint"])
  cli.run(main)

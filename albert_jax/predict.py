"""`python -m albert_jax.predict --checkpoint=SRC ...`: ask a fine-tuned model, or fill masks with a pretrained one.

A fine-tuned model (a fine-tuning workdir, or a Hugging Face directory of a head's class) answers with its head
(`albert_jax.tasks.inference`), one JSON line per input:

  --text [--text_pair]          classification and regression: the label, its probability and every label's
  --question --context          the span heads: the answer ("" for no answer, SQuAD 2.0) and its null odds
  --text --choices (4x) [--question]   multiple choice: the choice, its probability
  --input=FILE --output=FILE.jsonl     many rows: JSON Lines (or CSV/TSV with a header) with those field names

Any other checkpoint fills masks, as before: `--text="The capital of [MASK] is Delhi."` (repeatable) or
`--input_file` (one text a line) prints, per mask, the top-k tokens with their probabilities
(`albert_jax.tasks.fill_mask`). The tokenizer is the spiece.model that comes with SRC (or `--vocab`).
"""

import csv
import json
import pathlib

from absl import flags

from albert_jax import checkpoints, cli
from albert_jax.tasks import fill_mask, inference

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Any checkpoint `checkpoints.load` reads.")
_TEXT = flags.DEFINE_multi_string(
  "text", [], "Fill-mask: a text with [MASK]s (repeatable). Fine-tuned: the text to classify, or the passage."
)
_TEXT_PAIR = flags.DEFINE_string("text_pair", None, "Classification, regression: the second text of a pair.")
_QUESTION = flags.DEFINE_string("question", None, "Span heads: the question (multiple choice: optional).")
_CONTEXT = flags.DEFINE_string("context", None, "Span heads: the passage holding the answer.")
_CHOICES = flags.DEFINE_multi_string("choices", [], "Multiple choice: one choice per flag.")
_INPUT = flags.DEFINE_string("input", None, "Fine-tuned: rows to predict, .jsonl (or .csv/.tsv with a header).")
_OUTPUT = flags.DEFINE_string("output", None, "Fine-tuned: where to write one JSON line per row (default: print).")
_INPUT_FILE = flags.DEFINE_string("input_file", None, "Fill-mask: a UTF-8 file with one text per line.")
_TOP_K = flags.DEFINE_integer("top_k", 5, "Fill-mask: candidates shown per [MASK].", lower_bound=1)
_VOCAB = flags.DEFINE_string("vocab", None, "SentencePiece model; default: the spiece.model of --checkpoint.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Texts per model call.", lower_bound=1)
_MAX_SEQ_LENGTH = flags.DEFINE_integer(
  "max_seq_length", None, "Fine-tuned: tokens per input; default: the fine-tuning's, else the model's maximum."
)
_N_BEST_SIZE = flags.DEFINE_integer(
  "n_best_size",
  None,
  "Span heads: start and end candidates per window; default: the fine-tuning's (20).",
  lower_bound=1,
)
_NULL_THRESHOLD = flags.DEFINE_float(
  "null_threshold", None, 'Span heads: answer "" where the null odds exceed this (default: 0 after SQuAD 2.0).'
)


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


def read_rows() -> list[dict]:
  """The rows of --input, or one row per --text (one row of the other flags without --text)."""
  if _INPUT.value:
    return read_input(_INPUT.value)
  fields = {"text_pair": _TEXT_PAIR.value, "question": _QUESTION.value, "context": _CONTEXT.value}
  row = {k: v for k, v in fields.items() if v is not None}
  if _CHOICES.value:
    row["choices"] = list(_CHOICES.value)
  rows = [{"text": text, **row} for text in _TEXT.value] or [row]
  if not any(rows[0].values()):
    raise fill_mask.InputError("No input given; pass --text (and the flags the head reads) or --input=FILE.jsonl.")
  return rows


def read_input(path: str) -> list[dict]:
  """Rows of a JSON Lines file, or of a CSV/TSV file with a header row."""
  file = pathlib.Path(path)
  try:
    text = file.read_text(encoding="utf-8")
  except OSError as e:
    raise fill_mask.InputError(f"Cannot read --input: {e}") from None
  if file.suffix in (".csv", ".tsv"):
    return list(csv.DictReader(text.splitlines(), delimiter="\t" if file.suffix == ".tsv" else ","))
  rows = []
  for number, line in enumerate(text.splitlines(), start=1):
    if line.strip():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise fill_mask.InputError(f"{path} line {number} is not JSON ({e}); write one object per line.") from None
      if not isinstance(rows[-1], dict):
        raise fill_mask.InputError(f"{path} line {number} is not a JSON object; write one object per line.")
  return rows


def main():
  if checkpoints.head_info(_CHECKPOINT.value) is None:
    texts = read_texts()
    config, params = checkpoints.load(_CHECKPOINT.value)
    tokenizer = fill_mask.load_tokenizer(_CHECKPOINT.value, _VOCAB.value)
    results = fill_mask.fill_mask(config, params, tokenizer, texts, _TOP_K.value, _BATCH_SIZE.value)
    print(fill_mask.format_predictions(texts, results))
    return
  rows = read_rows()
  tokenizer = fill_mask.load_tokenizer(_CHECKPOINT.value, _VOCAB.value)
  predictor = inference.Predictor(
    _CHECKPOINT.value, tokenizer, _BATCH_SIZE.value, _MAX_SEQ_LENGTH.value, _NULL_THRESHOLD.value, _N_BEST_SIZE.value
  )
  lines = "".join(json.dumps(answer, ensure_ascii=False) + "\n" for answer in predictor.predict(rows))
  if _OUTPUT.value:
    pathlib.Path(_OUTPUT.value).write_text(lines, encoding="utf-8")
    print(f"Wrote {len(rows)} predictions to {_OUTPUT.value}")
  else:
    print(lines, end="")


if __name__ == "__main__":
  flags.mark_flags_as_required(["checkpoint"])
  cli.run(main)

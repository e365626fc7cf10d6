"""`python -m albert_jax.export --checkpoint=SRC --output=DIR`: any ALBERT checkpoint → a Hugging Face directory.

DIR gets what `transformers` needs to load the model and its tokenizer with
no missing or unexpected weights:

- config.json (`checkpoints.config_to_hf`, architectures AlbertForPreTraining,
  tied word embeddings);
- model.safetensors with the `AlbertForPreTraining` keys. The decoder weight
  and bias are written as copies of the tensors they are tied to: transformers
  5 re-ties them, transformers 4 expects them in the file. transformers 5
  reports the pooler and SOP head as unexpected when `AlbertForMaskedLM` loads
  such a file; `--architecture=AlbertForMaskedLM` leaves them out for a model
  that is only ever used for masked-LM;
- spiece.model, tokenizer_config.json and special_tokens_map.json, as the
  released albert-*-v2 repositories have them (lowercasing, accent stripping,
  `[MASK]` absorbing the space before it).

An existing non-empty DIR is refused unless `--overwrite`; even then nothing
is removed before the new export is complete: it is written beside DIR and
swapped in.
"""

import json
import pathlib
import shutil
import tempfile

from absl import app
from absl import flags

from albert_jax import checkpoints
from albert_jax import tokenizer as tokenizer_lib

ARCHITECTURES = ("AlbertForPreTraining", "AlbertForMaskedLM")

_SPECIAL_TOKENS = {"bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "<unk>", "sep_token": "[SEP]",
                   "pad_token": "<pad>", "cls_token": "[CLS]"}
# "The capital of [MASK] is" → the space before [MASK] belongs to it, as the original tokenizer sees it.
_MASK_TOKEN = {"content": "[MASK]", "lstrip": True, "rstrip": False, "normalized": False, "single_word": False}
_NOT_IN_MASKED_LM = ("albert.pooler.", "sop_classifier.")


def tokenizer_config(model_max_length: int) -> dict:
  """tokenizer_config.json: ALBERT's normalisation (lowercase, strip accents and extra spaces) and its specials."""
  return {"tokenizer_class": "AlbertTokenizer", "do_lower_case": True, "remove_space": True, "keep_accents": False,
          **_SPECIAL_TOKENS, "mask_token": _MASK_TOKEN, "model_max_length": model_max_length}


def _check_output(output: pathlib.Path, overwrite: bool) -> None:
  if output.exists() and not output.is_dir():
    raise checkpoints.CheckpointError(f"{output} exists and is not a directory; choose another --output.")
  if output.is_dir() and any(output.iterdir()) and not overwrite:
    raise checkpoints.CheckpointError(f"{output} exists and is not empty; choose another --output or pass "
                                      "--overwrite to replace it.")


def _vocab_for(source, vocab, vocab_size: int) -> pathlib.Path:
  """The SentencePiece model to ship, after checking that it is an ALBERT vocabulary the model can embed."""
  path = pathlib.Path(vocab) if vocab else checkpoints.find_vocab(source)
  if path is None:
    raise checkpoints.CheckpointError(f"{source} holds no spiece.model; pass the model's vocabulary with "
                                      "--vocab=PATH/spiece.model.")
  try:
    pieces = tokenizer_lib.Tokenizer(path).vocab_size
  except (OSError, ValueError) as e:
    raise checkpoints.CheckpointError(str(e)) from None
  if pieces > vocab_size:
    raise checkpoints.CheckpointError(f"{path} has {pieces} pieces but the model embeds only {vocab_size}; it is not "
                                      "this model's vocabulary. Pass the right one with --vocab.")
  return path


def _write(directory: pathlib.Path, config, params, vocab: pathlib.Path, architecture: str) -> None:
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  hf_config = {**checkpoints.config_to_hf(config), "architectures": [architecture]}
  (directory / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
  state = checkpoints.params_to_hf(params, config)
  if architecture == "AlbertForMaskedLM":
    state = {k: v for k, v in state.items() if not k.startswith(_NOT_IN_MASKED_LM)}
  # transformers refuses safetensors files without this metadata.
  save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
  shutil.copyfile(vocab, directory / "spiece.model")
  (directory / "tokenizer_config.json").write_text(
      json.dumps(tokenizer_config(config.max_position_embeddings), indent=2))
  (directory / "special_tokens_map.json").write_text(json.dumps({**_SPECIAL_TOKENS, "mask_token": _MASK_TOKEN},
                                                                indent=2))
  for path in directory.iterdir():
    path.chmod(0o644)  # safetensors writes its file private; the export is meant to be shared.


def export(source, output, overwrite: bool = False, vocab=None,
           architecture: str = "AlbertForPreTraining") -> pathlib.Path:
  """Writes the checkpoint at `source` as a Hugging Face ALBERT directory at `output`; returns `output`.

  Args:
    source: anything `checkpoints.load` reads.
    output: the directory to create. If it exists and is not empty, `overwrite` must be True; it is replaced
      only once the new export is complete.
    overwrite: allow replacing a non-empty `output`.
    vocab: the SentencePiece model to ship; None takes the one inside `source`.
    architecture: "AlbertForPreTraining" (all weights) or "AlbertForMaskedLM" (without pooler and SOP head).

  Raises:
    checkpoints.CheckpointError: with a message saying what to do.
  """
  if architecture not in ARCHITECTURES:
    raise ValueError(f"architecture={architecture!r}; choose one of {ARCHITECTURES}.")
  output = pathlib.Path(output).absolute()
  _check_output(output, overwrite)
  config, params = checkpoints.load(source)
  vocab = _vocab_for(source, vocab, config.vocab_size)
  output.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{output.name}.export-", dir=output.parent))
  staging.chmod(0o755)  # mkdtemp makes it private; the export is meant to be shared.
  try:
    _write(staging, config, params, vocab, architecture)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  if output.exists():
    retired = pathlib.Path(tempfile.mkdtemp(prefix=f".{output.name}.replaced-", dir=output.parent))
    output.rename(retired / output.name)
    staging.rename(output)
    shutil.rmtree(retired)
  else:
    staging.rename(output)
  return output


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  try:
    out = export(f.checkpoint, f.output, f.overwrite, f.vocab, f.architecture)
  except checkpoints.CheckpointError as e:
    raise SystemExit(f"error: {e}") from None
  print(f"Wrote {out}")


def _define_flags():
  """Flags exist only when this module runs as the program, so the library imports alongside other entry points."""
  flags.DEFINE_string("checkpoint", None, "Source: any checkpoint `checkpoints.load` reads.", required=True)
  flags.DEFINE_string("output", None, "Directory to write the Hugging Face model to.", required=True)
  flags.DEFINE_string("vocab", None, "SentencePiece model; default: the spiece.model of --checkpoint.")
  flags.DEFINE_bool("overwrite", False, "Replace a non-empty --output (after the export is complete).")
  flags.DEFINE_enum("architecture", ARCHITECTURES[0], list(ARCHITECTURES),
                    "Which transformers class the weights are for; AlbertForMaskedLM drops the pooler and SOP head.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)

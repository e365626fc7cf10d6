"""`python -m albert_jax.export --checkpoint=SRC --output=DIR`: any ALBERT checkpoint → a Hugging Face directory.

DIR gets what `transformers` needs to load the model and its tokenizer with
no missing or unexpected weights:

- config.json (`hf.config_to_hf`, architectures AlbertForPreTraining,
  tied word embeddings);
- model.safetensors with the `AlbertForPreTraining` keys. The decoder weight
  and bias are written as copies of the tensors they are tied to: transformers
  5 re-ties them, transformers 4 expects them in the file. transformers 5
  reports the pooler and SOP head as unexpected when `AlbertForMaskedLM` loads
  such a file; `--architecture=AlbertForMaskedLM` leaves them out for a model
  that is only ever used for masked-LM;
- spiece.model, tokenizer_config.json and special_tokens_map.json, as the
  released albert-*-v2 repositories have them (lowercasing, accent stripping,
  `[MASK]` absorbing the space before it);
- tokenizer.json (`fast_tokenizer`), which `AutoTokenizer` prefers to
  spiece.model. Without it transformers 5 builds its tokenizer from
  spiece.model and registers ALBERT's user-defined pieces ( ) " - . – £ € as
  added tokens, splitting the text around them: " ." becomes "." instead of
  "▁" ".", on 848 of 872 SST-2 dev sentences. With it AutoTokenizer gives the
  ids of `tokenizer.Tokenizer`, the ids the model was pretrained on
  (`fast_tokenizer` says where it cannot). tokenizer_config.json then names
  `PreTrainedTokenizerFast`, which transformers 5 loads as written, also with
  `use_fast=False`; an explicit `AlbertTokenizer.from_pretrained(DIR)` keeps
  only the vocabulary and puts "▁" before text glued to [MASK] ("[MASK]." →
  [MASK] "▁" "."). Writing tokenizer.json needs the `tokenizers` package;
  without it the export logs that it skipped the file and why.

A fine-tuned model (a fine-tuning workdir, or a Hugging Face directory of a head's class) is written as its head's
class instead, from one table (`hf.HEADS`: head → class and its tensors): AlbertForSequenceClassification with
`id2label`, `label2id` and `problem_type`, AlbertForQuestionAnswering, AlbertForMultipleChoice or
AlbertForTokenClassification. The SQuAD 2.0 XLNet-style head has no such class: its backbone is written
(AlbertModel), with one warning line saying why.

An existing non-empty DIR is refused unless `--overwrite`; even then nothing
is removed before the new export is complete: it is written beside DIR and
swapped in.
"""

import functools
import json
import logging
import pathlib
import shutil
import tempfile
import unicodedata

from etils import epath

from albert_jax import checkpoints, storage
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.checkpoints import hf

ARCHITECTURES = ("AlbertForPreTraining", "AlbertForMaskedLM")

_SPECIAL_TOKENS = {
  "bos_token": "[CLS]",
  "eos_token": "[SEP]",
  "unk_token": "<unk>",
  "sep_token": "[SEP]",
  "pad_token": "<pad>",
  "cls_token": "[CLS]",
}
# "The capital of [MASK] is" → the space before [MASK] belongs to it, as the original tokenizer sees it.
_MASK_TOKEN = {"content": "[MASK]", "lstrip": True, "rstrip": False, "normalized": False, "single_word": False}
_NOT_IN_MASKED_LM = ("albert.pooler.", "sop_classifier.")
# With token_type_ids: ALBERT embeds the segment of a pair ([CLS] A [SEP] B [SEP]); transformers 5's
# AlbertTokenizer leaves them out unless asked.
MODEL_INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")
# Penalty on pieces that end in a digit and a comma ("▁9,"), as transformers' AlbertConverter: the original
# re-splits such pieces after SentencePiece ("▁9" ","); Unigram has no such step, so it is made to avoid them.
_DIGIT_COMMA_PENALTY = 100.0


def _char_class(chars) -> str:
  """An Oniguruma character class matching exactly `chars`, as ranges."""
  codes = sorted(map(ord, chars))
  ranges, start = [], codes[0]
  for prev, code in zip(codes, codes[1:] + [None]):
    if code != prev + 1:
      ranges.append(f"\\x{{{start:X}}}" + (f"-\\x{{{prev:X}}}" if prev != start else ""))
      start = code
  return "[" + "".join(ranges) + "]"


@functools.lru_cache(maxsize=4)
def _char_classes(charsmap: bytes) -> tuple[str, str, str]:
  """Python's whitespace, characters with a nonzero combining class, characters `charsmap` removes.

  Probing every code point takes seconds; cached, as tests export more than once.
  """
  from tokenizers import normalizers  # pylint: disable=g-import-not-at-top

  precompiled = normalizers.Precompiled(charsmap)
  chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
  return (
    _char_class(c for c in chars if c.isspace()),
    _char_class(c for c in chars if unicodedata.combining(c)),
    _char_class(c for c in chars if not precompiled.normalize_str(c)),
  )


def fast_tokenizer(vocab: epath.Path):
  """The `tokenizers.Tokenizer` that encodes as `tokenizer.Tokenizer(vocab)`, for tokenizer.json.

  Built from the SentencePiece model's pieces and scores, with no added tokens but the specials, unlike
  transformers' own converter, which adds ALBERT's user-defined pieces as tokens of their own. Normalisation
  restates `tokenizer.normalize` (Python's whitespace, `` and '' → ", NFKD, characters with a nonzero
  combining class removed, lowercase) and then SentencePiece's own (the precompiled charsmap, spaces collapsed
  and stripped). Only text at the very start gets the word-start "▁" (`prepend_scheme="first"`); text glued
  to a special token ("[MASK].") continues its word, as in `tokenizer.Tokenizer`. "first" tells the start by
  the original offset, which normalisation moves when it removes or merges leading characters; those
  become a space instead, which gives the same "▁".

  The one rule it cannot restate is ALBERT's "▁9," → "▁9" ",": Unigram has no step after segmentation.
  Pieces that end in a digit and a comma are penalised instead (as transformers' AlbertConverter does), so
  Unigram avoids them; the ids then differ from the original only where avoiding such a piece changes the
  segmentation around it differently from the original's re-split (see tests/test_export_tokenizer.py).

  Args:
    vocab: an ALBERT SentencePiece model.

  Returns:
    The tokenizer; `.to_str()` is tokenizer.json.

  Raises:
    ImportError: without the `tokenizers` package.
  """
  # pylint: disable=g-import-not-at-top
  import tokenizers
  from sentencepiece import sentencepiece_model_pb2
  from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors

  # pylint: enable=g-import-not-at-top
  proto = sentencepiece_model_pb2.ModelProto.FromString(storage.path(vocab).read_bytes())
  pieces = [
    (p.piece, p.score - _DIGIT_COMMA_PENALTY * (p.piece[-2:-1].isdigit() and p.piece[-1] == ",")) for p in proto.pieces
  ]
  tok = tokenizers.Tokenizer(models.Unigram(pieces, unk_id=1, byte_fallback=False))
  charsmap = proto.normalizer_spec.precompiled_charsmap
  whitespace, combining, removed_by_charsmap = _char_classes(charsmap)
  tok.normalizer = normalizers.Sequence(
    [
      normalizers.Replace(Regex(whitespace + "+"), " "),
      normalizers.Replace(Regex(r"\A``"), ' "'),
      normalizers.Replace("``", '"'),
      normalizers.Replace("''", '"'),
      normalizers.NFKD(),
      normalizers.Replace(Regex(r"\A" + combining + "+"), " "),
      normalizers.Replace(Regex(combining), ""),
      normalizers.Lowercase(),
      normalizers.Replace(Regex(r"\A" + removed_by_charsmap + "+"), " "),
      normalizers.Precompiled(charsmap),
      normalizers.Replace(Regex(" {2,}"), " "),
      normalizers.Strip(left=False, right=True),
    ]
  )
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=tokenizer_lib.WORD_START, prepend_scheme="first", split=True)
  tok.decoder = decoders.Metaspace(replacement=tokenizer_lib.WORD_START, prepend_scheme="first")
  tok.post_processor = processors.TemplateProcessing(
    single="[CLS]:0 $A:0 [SEP]:0",
    pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
    special_tokens=[(tokenizer_lib.CLS, 2), (tokenizer_lib.SEP, 3)],
  )
  tok.add_special_tokens(
    [
      tokenizers.AddedToken(piece, special=True, normalized=False, lstrip=piece == tokenizer_lib.MASK)
      for piece in tokenizer_lib.SPECIAL_PIECES
    ]
  )
  return tok


def tokenizer_config(model_max_length: int, fast: bool = True) -> dict:
  """tokenizer_config.json: ALBERT's normalisation (lowercase, strip accents and extra spaces) and its specials.

  Args:
    model_max_length: the model's maximum sequence length.
    fast: whether tokenizer.json is written beside it. transformers 5 then needs the class
      `PreTrainedTokenizerFast`, which takes tokenizer.json as it is; `AlbertTokenizer` would keep only its
      vocabulary and rebuild the rest, putting "▁" back before text glued to [MASK] ("[MASK]." → "▁" ".").
  """
  return {
    "tokenizer_class": "PreTrainedTokenizerFast" if fast else "AlbertTokenizer",
    "do_lower_case": True,
    "remove_space": True,
    "keep_accents": False,
    **_SPECIAL_TOKENS,
    "mask_token": _MASK_TOKEN,
    "model_max_length": model_max_length,
    "model_input_names": list(MODEL_INPUT_NAMES),
  }


def _check_output(output: pathlib.Path, overwrite: bool) -> None:
  if output.exists() and not output.is_dir():
    raise checkpoints.CheckpointError(f"{output} exists and is not a directory; choose another --output.")
  if output.is_dir() and any(output.iterdir()) and not overwrite:
    raise checkpoints.CheckpointError(
      f"{output} exists and is not empty; choose another --output or pass --overwrite to replace it."
    )


def _vocab_for(source, vocab, vocab_size: int) -> epath.Path:
  """The SentencePiece model to ship, after checking that it is an ALBERT vocabulary the model can embed."""
  path = storage.path(vocab) if vocab else checkpoints.find_vocab(source)
  if path is None:
    raise checkpoints.CheckpointError(
      f"{source} holds no spiece.model; pass the model's vocabulary with --vocab=PATH/spiece.model."
    )
  try:
    pieces = tokenizer_lib.Tokenizer(path).vocab_size
  except (OSError, ValueError) as e:
    raise checkpoints.CheckpointError(str(e)) from None
  if pieces > vocab_size:
    raise checkpoints.CheckpointError(
      f"{path} has {pieces} pieces but the model embeds only {vocab_size}; it is not "
      "this model's vocabulary. Pass the right one with --vocab."
    )
  return path


# The fine-tuning heads of albert_jax's task models that Hugging Face has no class for.
_NO_HF_EQUIVALENT = {("answer_class", "end_logits", "start_logits"): "the original release's SQuAD 2.0 head"}


def _backbone_note(source, head: tuple[str, ...]) -> str:
  """The one line that says what an export of a fine-tuned task model leaves out."""
  names = ", ".join(head)
  if head in _NO_HF_EQUIVALENT:
    what = f"whose head, {_NO_HF_EQUIVALENT[head]} ({names}), has no Hugging Face equivalent"
  else:
    what = f"whose head ({names}) this export leaves out (its config.json does not name the head)"
  return f"{source} holds a fine-tuned model {what}: writing its backbone only (AlbertModel)."


def head_config(head: str, labels: tuple[str, ...] | None) -> dict:
  """What config.json says of a head beyond its class: the label names and the problem type, as transformers reads them.

  Regression has one output, named as the task names its score ("score" when it does not).
  """
  if head == "regression":
    labels = labels or ("score",)
  if labels is None:
    return {}
  extra = {"id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)}}
  if head in ("classification", "regression"):
    extra["problem_type"] = "regression" if head == "regression" else "single_label_classification"
  return extra


def _write(directory: pathlib.Path, config, params, vocab: epath.Path, architecture: str, info=None) -> None:
  """The export's files; `info` (`checkpoints.HeadInfo`) of a head with a Hugging Face class writes that class."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  hf_config = {**hf.config_to_hf(config), "architectures": [architecture]}
  if info is not None:
    hf_config = {**hf_config, **head_config(info.head, info.labels)}
    state = hf.params_to_hf(params, config, head=info.head)
  else:
    state = hf.params_to_hf(params, config, backbone_only=architecture == "AlbertModel")
  (directory / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
  if architecture == "AlbertForMaskedLM":
    state = {k: v for k, v in state.items() if not k.startswith(_NOT_IN_MASKED_LM)}
  # transformers refuses safetensors files without this metadata.
  save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
  (directory / "spiece.model").write_bytes(vocab.read_bytes())
  try:
    fast = fast_tokenizer(vocab)
  except ImportError as e:
    fast = None
    logging.warning(
      "Skipped tokenizer.json (%s): AutoTokenizer will build its tokenizer from spiece.model, "
      "which splits text at ALBERT's punctuation pieces and so gives other ids than the model was "
      "trained on. Install `tokenizers` and export again.",
      e,
    )
  else:
    (directory / "tokenizer.json").write_text(fast.to_str(pretty=True))
  (directory / "tokenizer_config.json").write_text(
    json.dumps(tokenizer_config(config.max_position_embeddings, fast is not None), indent=2)
  )
  (directory / "special_tokens_map.json").write_text(
    json.dumps({**_SPECIAL_TOKENS, "mask_token": _MASK_TOKEN}, indent=2)
  )
  for path in directory.iterdir():
    path.chmod(0o644)  # safetensors writes its file private; the export is meant to be shared.


def export(
  source, output, overwrite: bool = False, vocab=None, architecture: str = "AlbertForPreTraining"
) -> pathlib.Path:
  """Writes the checkpoint at `source` as a Hugging Face ALBERT directory at `output`; returns `output`.

  Args:
    source: anything `checkpoints.load` reads, local or in a bucket (`gs://`).
    output: the local directory to create. If it exists and is not empty, `overwrite` must be True; it is replaced
      only once the new export is complete.
    overwrite: allow replacing a non-empty `output`.
    vocab: the SentencePiece model to ship; None takes the one inside `source`.
    architecture: "AlbertForPreTraining" (all weights) or "AlbertForMaskedLM" (without pooler and SOP head).
      A fine-tuned model (a fine-tuning workdir, or a Hugging Face directory of a head's class) is written as its
      head's class (`hf.HEADS`: AlbertForSequenceClassification, ...QuestionAnswering, ...MultipleChoice,
      ...TokenClassification), with its label names, whatever this says. A head without such a class (the SQuAD
      2.0 XLNet-style head) is written as "AlbertModel", its backbone, with one warning line saying why.

  Raises:
    checkpoints.CheckpointError: with a message saying what to do.
  """
  if architecture not in ARCHITECTURES:
    raise ValueError(f"architecture={architecture!r}; choose one of {ARCHITECTURES}.")
  if storage.is_remote(output):
    raise checkpoints.CheckpointError(
      f"--output={output}: the export is written to a local directory (transformers' from_pretrained reads one); "
      "choose a local --output, then copy it to the bucket (gcloud storage cp -r DIR gs://...)."
    )
  output = pathlib.Path(output).absolute()
  _check_output(output, overwrite)
  config, params = checkpoints.load(source)
  head = checkpoints.task_head(params)
  info = checkpoints.head_info(source) if head else None
  if info is not None and info.head not in hf.HEADS:
    info = None
  if info is not None:
    architecture = hf.HEADS[info.head].architecture
    logging.info("%s holds a fine-tuned %s head: writing %s.", source, info.head, architecture)
  elif head:
    logging.warning(_backbone_note(source, head))
    architecture = "AlbertModel"
  vocab = _vocab_for(source, vocab, config.vocab_size)
  output.parent.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{output.name}.export-", dir=output.parent))
  staging.chmod(0o755)  # mkdtemp makes it private; the export is meant to be shared.
  try:
    _write(staging, config, params, vocab, architecture, info)
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

"""ALBERT tokenization: SentencePiece with the original ALBERT text handling.

The released ALBERT models were pretrained on ids produced by
google-research/albert `tokenization.FullTokenizer`: collapse whitespace, turn
`` and '' into ", strip accents (NFKD), lowercase, run SentencePiece, then split
pieces such as "▁9," into "▁9" + "," (a digit followed by a comma). `Tokenizer`
reproduces exactly that, and in addition turns the special tokens written in
the text (`[MASK]`, `[CLS]`, `[SEP]`, `<pad>`, `<unk>`) into their ids so that
fill-mask prompts like "The capital of [MASK] is Delhi." work. Text written
directly after such a token ("[MASK].") continues its word: it is segmented
without SentencePiece's word-start "▁", so "capital of [MASK]." ends in
`[MASK]` "." as "capital of india." ends in "▁india" ".".

Run as a program it trains a new ALBERT vocabulary:

  python -m albert_jax.tokenizer --input=a.txt,b.txt \
      --output=DIR/spiece.model --vocab_size=30000
"""

import collections
import io
import itertools
import logging
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from albert_jax import storage

PAD, UNK, CLS, SEP, MASK = "<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_PIECES = (PAD, UNK, CLS, SEP, MASK)  # At ids 0..4, as in ALBERT.
WORD_START = "\u2581"  # SentencePiece's "▁", marks a piece that begins a word.
# ALBERT's create_pretraining_data.py `_is_start_piece_sp`: a piece begins a
# word unless it is made only of a-z and this punctuation, and is not itself
# one punctuation character (nor starts with "▁" or "<").
_START_PUNCTUATION = frozenset('!"#$%&()*+,-./:;?@[\\]^_`{|}~')
_CONTINUATION_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz") | _START_PUNCTUATION
# The user-defined symbols of the official ALBERT vocabulary (ids 5..12).
_ALBERT_USER_SYMBOLS = ("(", ")", '"', "-", ".", "\u2013", "\u00a3", "\u20ac")
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(p) for p in SPECIAL_PIECES) + ")")
_TRAIN_HINT = (
  "Use an ALBERT vocabulary (e.g. the official 30k spiece.model) or "
  "train one with `python -m albert_jax.tokenizer --input=FILES "
  "--output=DIR/spiece.model --vocab_size=N`."
)


def normalize(text: str) -> str:
  """ALBERT's `preprocess_text`: whitespace, quotes, accents, lowercase."""
  text = " ".join(text.split())
  text = text.replace("``", '"').replace("''", '"')
  text = unicodedata.normalize("NFKD", text)
  text = "".join(c for c in text if not unicodedata.combining(c))
  return text.lower()


def _is_start_piece(piece: str) -> bool:
  return (
    piece.startswith((WORD_START, "<"))
    or piece in _START_PUNCTUATION
    or not all(c.lower() in _CONTINUATION_CHARS for c in piece)
  )


def _ends_in_digit_comma(piece: str) -> bool:
  return len(piece) > 1 and piece[-1] == "," and piece[-2].isdigit()


class Tokenizer:
  """A SentencePiece model with ALBERT's special ids and text handling.

  Attributes:
    vocab_size: number of pieces; the model's embedding table must match it.
    pad_id, unk_id, cls_id, sep_id, mask_id: the special ids 0..4.
    is_special: bool [vocab_size], True for ids that are never content (the
      specials above and any other control piece): never mask or predict them.
    is_word_start: bool [vocab_size], True for pieces that begin a new word,
      as the original whole-word masking decides (`_is_start_piece_sp`: "▁…",
      single punctuation, pieces with digits or non-English letters, and the
      specials); False marks a continuation of the word before.
  """

  def __init__(self, model_path: str | os.PathLike, split_digit_comma: bool = True):
    """Loads `model_path`.

    Args:
      model_path: a SentencePiece model with the ALBERT special pieces at ids
        0..4 (`<pad>`, `<unk>`, `[CLS]`, `[SEP]`, `[MASK]`).
      split_digit_comma: apply ALBERT's "▁9," → "▁9" "," rule, as the
        original and the released models do. transformers 5 does not.
    """
    self.model_path = str(model_path)
    self.split_digit_comma = split_digit_comma
    self._load(_read_model_file(self.model_path))

  def _load(self, proto: bytes) -> None:
    self._proto = proto
    sp = spm.SentencePieceProcessor()
    try:
      sp.LoadFromSerializedProto(proto)
    except (RuntimeError, OSError) as e:
      raise ValueError(f"{self.model_path} is not a SentencePiece model ({e}). {_TRAIN_HINT}") from None
    pieces = [sp.id_to_piece(i) for i in range(min(5, sp.get_piece_size()))]
    if tuple(pieces) != SPECIAL_PIECES or sp.unk_id() != 1:
      raise ValueError(
        f"{self.model_path} lacks the ALBERT special pieces: ids 0..4 are "
        f"{pieces} (unk id {sp.unk_id()}), expected {list(SPECIAL_PIECES)} "
        f"with <unk> as the unknown piece. {_TRAIN_HINT}"
      )
    self._sp = sp
    self._sp_glued = _without_dummy_prefix(proto)
    self.vocab_size = sp.get_piece_size()
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = range(5)
    self._special_ids = {p: i for i, p in enumerate(SPECIAL_PIECES)}
    pieces = [sp.id_to_piece(i) for i in range(self.vocab_size)]
    self.is_special = np.array([i < 5 or sp.is_control(i) for i in range(self.vocab_size)])
    self.is_word_start = np.array([_is_start_piece(p) for p in pieces]) | self.is_special
    self._digit_comma = np.array([_ends_in_digit_comma(p) for p in pieces])

  def __getstate__(self):  # Picklable, for multiprocess data loaders.
    return {"model_path": self.model_path, "proto": self._proto, "split_digit_comma": self.split_digit_comma}

  def __setstate__(self, state):
    self.model_path = state["model_path"]
    self.split_digit_comma = state["split_digit_comma"]
    self._load(state["proto"])

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def piece_to_id(self, piece: str) -> int:
    return self._sp.piece_to_id(piece)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without [CLS]/[SEP] added."""
    return self.encode_batch([text])[0]

  def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
    """`encode` for many texts at once; SentencePiece runs them in parallel.

    Args:
      texts: the texts.
      num_threads: SentencePiece threads; None uses all cores.
    """
    # Each text becomes segments: a special id, or (normalised chunk, glued)
    # where glued means the chunk directly follows a special token ("[MASK].")
    # and so continues its word instead of starting one.
    segments = []
    for text in texts:
      parts = _SPECIAL_RE.split(text) if "[" in text or "<" in text else [text]
      segments.append(
        [
          self._special_ids[p] if j % 2 else (normalize(p), j > 0 and not p[0].isspace())
          for j, p in enumerate(parts)
          if p
        ]
      )
    chunks = [[], []]  # Word-starting, glued.
    for segs in segments:
      for seg in segs:
        if isinstance(seg, tuple):
          chunks[seg[1]].append(seg[0])
    encoded = [
      iter(sp.encode(c, num_threads=num_threads) if c else []) for sp, c in zip((self._sp, self._sp_glued), chunks)
    ]
    out = []
    for segs in segments:
      ids = []
      for seg in segs:
        if isinstance(seg, int):
          ids.append(seg)
          continue
        chunk_ids = next(encoded[seg[1]])
        if self.split_digit_comma and self._digit_comma[chunk_ids].any():
          chunk_ids = self._split_digit_comma(chunk_ids)
        ids.extend(chunk_ids)
      out.append(ids)
    return out

  def _split_digit_comma(self, ids: list[int]) -> list[int]:
    """google-research/albert `encode_pieces`: "▁9," → "▁9", ","."""
    new_ids = []
    for i in ids:
      if not self._digit_comma[i]:
        new_ids.append(i)
        continue
      piece = self._sp.id_to_piece(i)
      cur = self._sp.encode(piece[:-1].replace(WORD_START, ""), out_type=str)
      if piece[0] != WORD_START and cur and cur[0][0] == WORD_START:
        cur = cur[1:] if len(cur[0]) == 1 else [cur[0][1:]] + cur[1:]
      new_ids.extend(self._sp.piece_to_id(p) for p in cur + [","])
    return new_ids

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`; special ids are written as their pieces ("[MASK]")."""
    out, run = [], []

    def flush():
      if run:
        glue = out and self._sp.id_to_piece(run[0]).startswith(WORD_START)
        out.append((" " if glue else "") + self._sp.decode(run))
        run.clear()

    for i in ids:
      i = int(i)
      if self.is_special[i] or i == self.unk_id:
        flush()
        out.append((" " if out else "") + self._sp.id_to_piece(i))
      else:
        run.append(i)
    flush()
    return "".join(out)

  def encode_pair(self, a_ids: Sequence[int], b_ids: Sequence[int] | None = None) -> tuple[list[int], list[int]]:
    """`[CLS] A [SEP] B [SEP]` and its token types (0 for A, 1 for B)."""
    input_ids = [self.cls_id, *a_ids, self.sep_id]
    token_type_ids = [0] * len(input_ids)
    if b_ids is not None:
      input_ids += [*b_ids, self.sep_id]
      token_type_ids += [1] * (len(b_ids) + 1)
    return input_ids, token_type_ids


def _without_dummy_prefix(proto: bytes) -> spm.SentencePieceProcessor:
  """The same model, but text does not start with "▁": it continues a word."""
  model = sentencepiece_model_pb2.ModelProto.FromString(proto)
  model.normalizer_spec.add_dummy_prefix = False
  sp = spm.SentencePieceProcessor()
  sp.LoadFromSerializedProto(model.SerializeToString())
  return sp


def _read_model_file(path: str) -> bytes:
  """The model file's bytes, from a local path or a bucket (SentencePiece itself opens local files only)."""
  try:
    found = storage.path(path).is_file()
  except OSError:
    found = False
  if not found:
    raise FileNotFoundError(f"SentencePiece model {path!r} not found (or not a file). {_TRAIN_HINT}")
  try:
    return storage.path(path).read_bytes()
  except OSError as e:
    raise OSError(f"Cannot read SentencePiece model {path!r}: {e}") from None


def _sentences(texts: Iterable[str]) -> Iterator[str]:
  for text in texts:
    for line in text.splitlines():
      if line.strip():
        yield normalize(line)


def train_vocab(
  texts: Iterable[str],
  output_path: str | os.PathLike,
  vocab_size: int = 30000,
  *,
  input_sentence_size: int = 10_000_000,
  character_coverage: float = 0.99995,
  seed: int = 0,
  seed_from_words: bool = False,
) -> Tokenizer:
  """Trains an ALBERT SentencePiece vocabulary, as the 30k one was trained.

  Unigram model, ALBERT normalisation applied to the text first, `<pad>`=0
  `<unk>`=1 `[CLS]`=2 `[SEP]`=3 `[MASK]`=4, and ALBERT's user-defined
  punctuation pieces. `hard_vocab_limit=False`: a small corpus gives a smaller
  vocabulary instead of failing; read the size from `Tokenizer.vocab_size`.

  Args:
    texts: the corpus, a sentence a line (each text may hold many lines);
      `data.corpus.sentences` reads them from files in any corpus format.
    output_path: where the `.model` file goes (e.g. `DIR/spiece.model`, or in a bucket).
    vocab_size: the number of pieces wanted.
    input_sentence_size: at most this many sentences, sampled, are used.
    character_coverage: share of characters the vocabulary must cover.
    seed: SentencePiece's random seed (sentence sampling).
    seed_from_words: start the unigram model from every substring of every
      word instead of SentencePiece's suffix-array candidates, which keep only
      substrings followed by two different characters. In natural text nearly
      every word is; in templated text (the built-in corpus) words that are
      always followed by a space ("▁capital", "▁of") would never become pieces.

  Returns:
    The trained tokenizer.
  """
  output_path = storage.path(output_path)
  storage.make_dirs(output_path.parent)
  model = io.BytesIO()
  spm.set_random_generator_seed(seed)
  sentences = _sentences(texts)
  first = next(sentences, None)
  if first is None:
    raise ValueError("train_vocab got no text: pass texts with content.")
  sentences = _prepend(first, sentences)
  with tempfile.TemporaryDirectory() as tmp:
    options = {}
    if seed_from_words:
      sentences = list(itertools.islice(sentences, input_sentence_size))
      options["seed_sentencepieces_file"] = os.path.join(tmp, "seeds.tsv")
      _write_word_seeds(sentences, options["seed_sentencepieces_file"])
    _train(sentences, model, vocab_size, character_coverage, input_sentence_size, **options)
  storage.write_bytes_atomic(output_path, model.getvalue())
  tokenizer = Tokenizer(output_path)
  logging.info("Wrote %s with %d pieces.", output_path, tokenizer.vocab_size)
  return tokenizer


def _train(
  sentences: Iterable[str],
  model: io.BytesIO,
  vocab_size: int,
  character_coverage: float,
  input_sentence_size: int,
  **options,
):
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(sentences),
    model_writer=model,
    vocab_size=vocab_size,
    model_type="unigram",
    hard_vocab_limit=False,
    pad_id=0,
    unk_id=1,
    bos_id=-1,
    eos_id=-1,
    pad_piece=PAD,
    unk_piece=UNK,
    control_symbols=[CLS, SEP, MASK],
    user_defined_symbols=list(_ALBERT_USER_SYMBOLS),
    character_coverage=character_coverage,
    input_sentence_size=input_sentence_size,
    shuffle_input_sentence=True,
    num_threads=os.cpu_count() or 1,
    minloglevel=2,
    **options,
  )


def _write_word_seeds(sentences: Iterable[str], path: str, max_length: int = 16) -> None:
  """Seed pieces as the unigram paper: every substring, scored freq * length."""
  words = collections.Counter(w for s in sentences for w in s.split())
  freq = collections.Counter()
  for word, count in words.items():
    word = WORD_START + word
    for i in range(len(word)):
      for j in range(i + 2, min(len(word), i + max_length) + 1):
        freq[word[i:j]] += count
  with open(path, "w", encoding="utf-8") as f:
    for piece, count in freq.items():
      if count > 1 and piece not in _ALBERT_USER_SYMBOLS:
        f.write(f"{piece}\t{count * len(piece)}\n")


def _prepend(first: str, rest: Iterator[str]) -> Iterator[str]:
  yield first
  yield from rest


if __name__ == "__main__":
  # `python -m albert_jax.tokenizer --input=a.txt,b.txt --output=DIR/spiece.model`: train a vocabulary.
  from absl import flags  # pylint: disable=g-import-not-at-top

  from albert_jax import cli  # pylint: disable=g-import-not-at-top
  from albert_jax.data import corpus  # pylint: disable=g-import-not-at-top

  _INPUT = flags.DEFINE_string("input", None, "Comma-separated text files.")
  _OUTPUT = flags.DEFINE_string("output", None, "Output model, e.g. DIR/spiece.model.")
  _VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 30000, "Number of pieces.")
  _FORMAT = flags.DEFINE_enum("format", None, list(corpus.FORMATS), "Corpus format of the inputs; detected when unset.")
  _INPUT_SENTENCE_SIZE = flags.DEFINE_integer("input_sentence_size", 10_000_000, "Sample at most this many sentences.")

  def main():
    files = [storage.path(p) for p in _INPUT.value.split(",") if p]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
      raise ValueError(f"--input: no such file(s): {', '.join(missing)}")
    tok = train_vocab(
      corpus.sentences(files, _FORMAT.value),
      _OUTPUT.value,
      _VOCAB_SIZE.value,
      input_sentence_size=_INPUT_SENTENCE_SIZE.value,
    )
    print(f"Wrote {_OUTPUT.value}: {tok.vocab_size} pieces.")

  flags.mark_flags_as_required(["input", "output"])
  cli.run(main)

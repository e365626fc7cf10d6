"""Tokenised documents as TFDS ArrayRecord datasets, prepared without TensorFlow.

A pretraining corpus is tokenised once and stored as one record per document:
`tokens` (int32, its sentences concatenated) and `sentence_lengths` (int32, one
per sentence), which is all sentence-order pairing needs. Pairs and masks are
drawn later, per epoch (`pretraining_data`). `download_and_prepare` writes the
records and `as_data_source(split)` reads them by index (grain's random access);
`tfds.load` and `as_dataset` would need TensorFlow and are not used.

Each prepared dataset lives at `DATA_DIR/tokenized_documents/<name>/1.0.0`,
where the name fingerprints everything the records depend on (the source, the
files' paths, sizes and modification times, the format, the SentencePiece
model, the validation share), so a changed corpus or vocabulary is prepared
anew instead of silently reusing stale records.

Documents go to 'validation' by a hash of their position in the corpus
(`validation_percent` of them), so the split is stable and needs no second
pass. What was dropped (unreadable files, lines that are not UTF-8, sentences
that tokenise to nothing, empty documents) is counted, logged, and kept in the
dataset's metadata (`builder.info.metadata['counts']`).
"""

import collections
import glob
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from albert_jax.data import corpus

_GOLDEN = 0.6180339887498949  # Spreads consecutive indices evenly over [0, 1).
_REPORT_SECONDS = 60  # a progress line this often while a large corpus is tokenised


def is_validation(index: int | np.ndarray, validation_percent: float) -> bool | np.ndarray:
  """Whether the document at `index` of a corpus is held out (elementwise).

  The first document is held out whenever `validation_percent` > 0, so that
  even a small corpus has a validation split.
  """
  return (np.asarray(index) * _GOLDEN) % 1.0 < validation_percent / 100.0


def expand_files(files: str | Sequence[str]) -> list[str]:
  """Paths of `files` (a list, or a comma-separated string, of paths or globs)."""
  patterns = [p.strip() for p in files.split(",")] if isinstance(files, str) else list(files)
  paths, unmatched = [], []
  for pattern in filter(None, map(str, patterns)):
    matches = sorted(glob.glob(os.path.expanduser(pattern)))
    if matches:
      paths.extend(matches)
    else:
      unmatched.append(pattern)
  if unmatched:
    raise FileNotFoundError(
      f"No corpus file matches {unmatched}; check config.data.files (paths or globs, comma-separated)."
    )
  if not paths:
    raise ValueError("config.data.files is empty: name the corpus files to read.")
  return [os.path.abspath(p) for p in paths]


class _FileDocuments:
  """The documents of local files; bad files are skipped, counted and logged."""

  def __init__(self, paths: Sequence[str], text_format: str | None):
    self.paths = list(paths)
    self.format = text_format or None

  def fingerprint(self) -> Any:
    return {"files": [(p, os.path.getsize(p), os.stat(p).st_mtime_ns) for p in self.paths], "format": self.format}

  def __call__(self, counts: collections.Counter) -> Iterator[list[str]]:
    for path in self.paths:
      stats = corpus.ReadStats()
      try:
        yield from corpus.read_documents(path, self.format, stats=stats)
      except (OSError, ValueError) as e:
        counts["unreadable_files"] += 1
        logging.warning("Skipping corpus file: %s", e)
      counts["bad_lines"] += stats.bad_lines


class _BuiltinDocuments:
  """The package's built-in corpus, for running with no data at hand."""

  def __init__(self, seed: int):
    self.seed = seed

  def fingerprint(self) -> Any:
    """The seed and a hash of the text, so a changed generator never reuses data prepared by an older one."""
    from albert_jax.data import builtin_corpus  # pylint: disable=g-import-not-at-top

    text = json.dumps(builtin_corpus.documents(self.seed)).encode()
    return {"builtin_seed": self.seed, "sha256": hashlib.sha256(text).hexdigest()[:16]}

  def __call__(self, counts: collections.Counter) -> Iterator[list[str]]:
    from albert_jax.data import builtin_corpus  # pylint: disable=g-import-not-at-top

    del counts
    yield from builtin_corpus.documents(self.seed)


class TokenizedDocuments(tfds.core.GeneratorBasedBuilder):
  """One record per document: `tokens` and `sentence_lengths` (int32)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Tokenised documents for ALBERT pretraining."}

  # tfds 4.9.10 looks for this file through `importlib_resources`, which is not
  # a dependency (and is not installed without TensorFlow); say it directly.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def __init__(
    self,
    *,
    documents: Callable[[collections.Counter], Iterator[list[str]]] | None = None,
    tokenizer: Any = None,
    validation_percent: float = 0.0,
    **kwargs,
  ):
    """A builder; `documents` and `tokenizer` are needed only to prepare.

    Args:
      documents: called with a Counter of dropped inputs, yields documents.
      tokenizer: an `albert_jax.tokenizer.Tokenizer`.
      validation_percent: share of documents held out as 'validation'.
      **kwargs: `tfds.core.GeneratorBasedBuilder` arguments (config, data_dir;
        also what tfds passes when it unpickles a builder for a data source).
    """
    self._documents = documents
    self._tokenizer = tokenizer
    self._validation_percent = validation_percent
    super().__init__(**{"file_format": "array_record", **kwargs})

  def _log_download_bytes(self):
    """TFDS would print 'Downloading and preparing dataset Unknown size': nothing is downloaded here."""
    logging.info("Tokenising the corpus once into %s (later runs reuse it).", self.data_dir)

  def _log_download_done(self):
    pass  # the split lines of _generate_examples say what was prepared

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="Tokenised documents (sentences concatenated) for ALBERT pretraining.",
      features=tfds.features.FeaturesDict(
        {
          "tokens": tfds.features.Tensor(shape=(None,), dtype=np.int32),
          "sentence_lengths": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        }
      ),
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    splits = ("train", "validation") if self._validation_percent else ("train",)
    return {split: self._generate_examples(split) for split in splits}

  def _generate_examples(self, split: str):
    """Tokenised documents of `split`; what is dropped is counted."""
    counts = collections.Counter()
    held_out = split == "validation"
    next_report = time.monotonic() + _REPORT_SECONDS
    for index, sentences in enumerate(self._documents(counts)):
      if time.monotonic() > next_report:
        logging.info("Preparing %r: %d documents, %d tokens so far.", split, counts["documents"], counts["tokens"])
        next_report = time.monotonic() + _REPORT_SECONDS
      if is_validation(index, self._validation_percent) != held_out:
        continue
      ids = [s for s in self._tokenizer.encode_batch(sentences) if s]
      counts["empty_sentences"] += len(sentences) - len(ids)
      if not ids:
        counts["empty_documents"] += 1
        continue
      counts["documents"] += 1
      counts["single_sentence_documents"] += len(ids) == 1
      counts["sentences"] += len(ids)
      counts["tokens"] += sum(map(len, ids))
      yield (
        index,
        {
          "tokens": np.fromiter((t for s in ids for t in s), np.int32),
          "sentence_lengths": np.array([len(s) for s in ids], np.int32),
        },
      )
    logging.info("Prepared %s split %r: %s", self.builder_config.name, split, dict(counts))
    self.info.metadata.setdefault("counts", {})[split] = dict(counts)


def _fingerprint(kind: str, documents: Any, tokenizer: Any, validation_percent: float) -> str:
  with open(tokenizer.model_path, "rb") as f:
    vocab = hashlib.sha256(f.read()).hexdigest()
  key = json.dumps([kind, documents.fingerprint(), vocab, validation_percent], sort_keys=True)
  return f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def prepared_documents(
  source: str,
  tokenizer: Any,
  data_dir: str,
  *,
  files: str | Sequence[str] = (),
  text_format: str | None = None,
  builtin_seed: int = 0,
  validation_percent: float = 1.0,
) -> TokenizedDocuments:
  """The builder of a local or built-in corpus, prepared (once) under `data_dir`.

  Args:
    source: 'files' or 'builtin'.
    tokenizer: an `albert_jax.tokenizer.Tokenizer`.
    data_dir: the TFDS data directory.
    files: for 'files', paths or globs (a list or a comma-separated string).
    text_format: for 'files', a `corpus.FORMATS` entry; None detects per file.
    builtin_seed: for 'builtin', the seed of `builtin_corpus.documents`.
    validation_percent: share of documents held out as 'validation'.

  Returns:
    The prepared builder; read it with `as_data_source('train')`.
  """
  if source == "files":
    documents = _FileDocuments(expand_files(files), text_format)
  elif source == "builtin":
    documents = _BuiltinDocuments(builtin_seed)
  else:
    raise ValueError(f"prepared_documents: source must be 'files' or 'builtin', got {source!r}.")
  if not 0 <= validation_percent < 100:
    raise ValueError(f"validation_percent={validation_percent} must be in [0, 100).")
  name = _fingerprint(source, documents, tokenizer, validation_percent)
  builder = TokenizedDocuments(
    documents=documents,
    tokenizer=tokenizer,
    validation_percent=validation_percent,
    config=tfds.core.BuilderConfig(name=name, description=json.dumps(documents.fingerprint())),
    data_dir=os.path.expanduser(data_dir),
  )
  try:
    builder.download_and_prepare()
  except AssertionError as e:  # tfds refuses to write an empty split.
    raise ValueError(
      f"The {source} corpus gave a split with no documents ({e}); check "
      "config.data.files and config.data.format, or, for a corpus of one "
      "document, set config.data.validation_percent=0."
    ) from None
  return builder

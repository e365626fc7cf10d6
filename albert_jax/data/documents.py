"""A corpus as shards of documents (one per file), and one shard tokenised: what every preparation worker runs.

The same function, `shard_examples`, runs in the one local process that
prepares a corpus by default and in every Apache Beam worker
(`beam_preparation`), so both give the same records, keys and splits, and
count the same drops. Nothing in it depends on the other shards: a document's
key and split come from (its file's index, its index in that file), never from
a count of the documents before it, which would need one pass over the whole
corpus before the parallel one.
"""

import collections
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from albert_jax import storage
from albert_jax.data import corpus

_GOLDEN = 0.6180339887498949  # spreads consecutive documents of a file evenly over [0, 1)
_SILVER = 0.4142135623730951  # sqrt(2) - 1: moves each file's sequence by an irrational amount
# Drop counts per split, and counts of the reading, which every split's metadata repeats.
SPLIT_COUNTS = ("documents", "sentences", "tokens", "empty_sentences", "empty_documents", "single_sentence_documents")
READ_COUNTS = ("unreadable_files", "bad_lines")


def is_validation(shard: int | np.ndarray, index: int | np.ndarray, validation_percent: float) -> bool | np.ndarray:
  """Whether document `index` of shard (file) `shard` is held out (elementwise).

  The first document of the first file is held out whenever `validation_percent` > 0, so that even a small
  corpus has a validation split.
  """
  position = np.asarray(index) * _GOLDEN + np.asarray(shard) * _SILVER
  return position % 1.0 < validation_percent / 100.0


def key(shard: int, index: int) -> int:
  """The record key of document `index` of `shard`: unique, and the same whichever worker tokenises it."""
  return (shard << 32) | index


class FileDocuments:
  """The documents of text files, local or in a bucket; one shard per file. Bad files are skipped and counted."""

  def __init__(self, paths: Sequence[str], text_format: str | None):
    self.paths = list(paths)
    self.format = text_format or None

  @property
  def num_shards(self) -> int:
    return len(self.paths)

  def shard_sizes(self) -> list[int]:
    """Bytes of each file (0 for one that cannot be read: it is counted when tokenised)."""
    return [_size(p) for p in self.paths]

  def fingerprint(self) -> Any:
    """Each file's path, size and modification time, and the format: a changed corpus is prepared anew."""
    return {"files": [(p, *_size_and_mtime(p)) for p in self.paths], "format": self.format}

  def read(self, shard: int, counts: collections.Counter) -> Iterator[list[str]]:
    path = self.paths[shard]
    stats = corpus.ReadStats()
    try:
      yield from corpus.read_documents(path, self.format, stats=stats)
    except (OSError, ValueError) as e:
      counts["unreadable_files"] += 1
      logging.warning("Skipping corpus file: %s", e)
    counts["bad_lines"] += stats.bad_lines


def _size(path: str) -> int:
  return _size_and_mtime(path)[0]


def _size_and_mtime(path: str) -> tuple[int, int]:
  try:
    if not storage.is_remote(path):
      stat = os.stat(path)
      return stat.st_size, stat.st_mtime_ns
    stat = storage.path(path).stat()
  except OSError:
    return 0, 0
  return stat.length, int(stat.mtime)


class BuiltinDocuments:
  """The package's built-in corpus (one shard), for running with no data at hand."""

  num_shards = 1

  def __init__(self, seed: int):
    self.seed = seed

  def shard_sizes(self) -> list[int]:
    return [0]

  def fingerprint(self) -> Any:
    """The seed and a hash of the text, so a changed generator never reuses data prepared by an older one."""
    from albert_jax.data import builtin_corpus  # pylint: disable=g-import-not-at-top

    text = json.dumps(builtin_corpus.documents(self.seed)).encode()
    return {"builtin_seed": self.seed, "sha256": hashlib.sha256(text).hexdigest()[:16]}

  def read(self, shard: int, counts: collections.Counter) -> Iterator[list[str]]:
    from albert_jax.data import builtin_corpus  # pylint: disable=g-import-not-at-top

    del shard, counts
    yield from builtin_corpus.documents(self.seed)


def shard_examples(
  documents,
  shard: int,
  tokenizer: Any,
  validation_percent: float,
  splits: Sequence[str],
  counts: collections.Counter,
  num_threads: int | None = None,
) -> Iterator[tuple[str, int, dict[str, np.ndarray]]]:
  """(split, key, example) for each document of `shard` that belongs to one of `splits`, tokenised.

  `counts` gets what was kept and dropped as 'split.name' (`SPLIT_COUNTS`) and what the reading dropped
  (`READ_COUNTS`); `split_counts` turns them into a split's metadata.
  """
  for index, sentences in enumerate(documents.read(shard, counts)):
    split = "validation" if is_validation(shard, index, validation_percent) else "train"
    if split not in splits:
      continue
    ids = [s for s in tokenizer.encode_batch(sentences, num_threads=num_threads) if s]
    counts[f"{split}.empty_sentences"] += len(sentences) - len(ids)
    if not ids:
      counts[f"{split}.empty_documents"] += 1
      continue
    counts[f"{split}.documents"] += 1
    counts[f"{split}.single_sentence_documents"] += len(ids) == 1
    counts[f"{split}.sentences"] += len(ids)
    counts[f"{split}.tokens"] += sum(map(len, ids))
    yield (
      split,
      key(shard, index),
      {
        "tokens": np.fromiter((t for s in ids for t in s), np.int32),
        "sentence_lengths": np.array([len(s) for s in ids], np.int32),
      },
    )


def split_counts(counts: Mapping[str, int], split: str) -> dict[str, int]:
  """A split's metadata from `shard_examples`' counts: its own counts and those of the reading."""
  return {
    **{name: int(counts.get(f"{split}.{name}", 0)) for name in SPLIT_COUNTS},
    **{name: int(counts.get(name, 0)) for name in READ_COUNTS},
  }

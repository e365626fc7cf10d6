"""Length buckets: fine-tuning batches computed at their rows' length, not at `max_seq_length`.

Features are padded to `max_seq_length` when they are made (padding at the
end, `attention_mask` 1 on the real tokens). A batch is cut back here to the
smallest bucket (`config.task.length_buckets`) that holds its longest row, so
there is one compiled step per bucket and most of the padding is never
computed. Every column with a token axis (the per-row shape of `input_ids`:
[T], or RACE's [4, T]) is cut; labels and positions are kept. Padding never
changes a real token's result (attention masks it), so bucketed outputs equal
padded ones.

For training, `epoch_order` keeps batches random, as Hugging Face's
`group_by_length` does: the epoch's seeded permutation is cut into megabatches
of `MEGABATCH` batches, each megabatch is sorted by length and cut into
batches, and those batches are shuffled. The plan is a function of the data,
the seed and the epoch only, so every process and every mesh computes the
same one (a global batch has one bucket on all hosts) and a resume continues
it exactly.
"""

from typing import Any

import numpy as np

# Batches per megabatch (Hugging Face's LengthGroupedSampler: 50): the span over which rows are grouped by length.
MEGABATCH = 50
_SMALLEST = 32


def default_buckets(max_seq_length: int) -> tuple[int, ...]:
  """Powers of two from 32 below `max_seq_length`, then `max_seq_length`: (32, 64, 128, 256, 512) for 512."""
  smaller = []
  length = _SMALLEST
  while length < max_seq_length:
    smaller.append(length)
    length *= 2
  return (*smaller, max_seq_length)


def resolve(task_config: Any) -> tuple[int, ...]:
  """The buckets of `config.task`: `length_buckets`, or `default_buckets` when it is unset; () = no bucketing."""
  buckets = task_config.get("length_buckets")
  max_seq_length = int(task_config.max_seq_length)
  if buckets is None:
    return default_buckets(max_seq_length)
  buckets = tuple(int(b) for b in buckets)
  if buckets and (list(buckets) != sorted(set(buckets)) or buckets[0] < 1 or buckets[-1] != max_seq_length):
    raise ValueError(
      f"config.task.length_buckets={buckets}: give increasing lengths ending at task.max_seq_length "
      f"({max_seq_length}), e.g. {default_buckets(max_seq_length)}, or () to pad every batch to max_seq_length."
    )
  return buckets


def row_lengths(features: dict[str, np.ndarray]) -> np.ndarray:
  """[N]: each row's real tokens (RACE: its longest choice), from `attention_mask`."""
  mask = features["attention_mask"]
  return mask.reshape(len(mask), -1, mask.shape[-1]).sum(-1).max(-1)


def bucket_length(lengths: np.ndarray, buckets: tuple[int, ...], max_seq_length: int) -> int:
  """The smallest bucket that holds the longest of `lengths`; `max_seq_length` without buckets."""
  longest = int(np.max(lengths, initial=0))
  return next((b for b in buckets if b >= longest), max_seq_length)


def trim(rows: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
  """`rows` with every token-axis column (per-row shape of `input_ids`) cut to `length` tokens."""
  token_shape = rows["input_ids"].shape[1:]
  return {k: v[..., :length] if v.shape[1:] == token_shape else v for k, v in rows.items()}


def batch(rows: dict[str, np.ndarray], buckets: tuple[int, ...]) -> dict[str, np.ndarray]:
  """A batch of feature rows at its bucket's length."""
  if not buckets:
    return rows
  return trim(rows, bucket_length(row_lengths(rows), buckets, rows["input_ids"].shape[-1]))


def epoch_order(order: np.ndarray, lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
  """`order` (an epoch's permutation, a whole number of batches) regrouped so that a batch holds similar lengths.

  Each megabatch (`MEGABATCH` batches of `order`) is sorted by length (stable, longest first) and cut into
  batches; then all the epoch's batches are shuffled by `rng`, so that long and short batches alternate at random.
  """
  span = MEGABATCH * batch_size
  grouped = np.concatenate(
    [chunk[np.argsort(-lengths[chunk], kind="stable")] for chunk in np.split(order, range(span, len(order), span))]
  )
  batches = grouped.reshape(-1, batch_size)
  return batches[rng.permutation(len(batches))].reshape(-1)

"""ALBERT pretraining examples, streamed: SOP pairs and n-gram masks per epoch.

google-research/albert `create_pretraining_data.py` writes every document 40
times with fixed masks. Here the tokenised documents are stored once (a TFDS
ArrayRecord dataset, see `tfds_builders`) and a grain pipeline turns them into
batches on the fly: each epoch draws new SOP splits and masks from a numpy
generator seeded by (seed, epoch, document index), so the stream is
deterministic for a seed, resumable from a checkpointed iterator state, and
independent of how many processes share the work.

What follows the original exactly: sentences are accumulated into a chunk until
it reaches a target length (`max_seq_length - 3`; with probability
`short_seq_prob` a target drawn uniformly from [2, max_seq_length - 3]); the
chunk is split at a random sentence boundary into A and B; with probability 0.5
they are swapped (`sentence_order_label` 1); the longer side is truncated one
token at a time from a random end until the pair fits; `[CLS] A [SEP] B [SEP]`.
Masking picks whole words, n-grams of n <= `max_ngram` words with p ∝ 1/n,
shorter n when the longer one would exceed the budget, skips n-grams that
overlap an earlier one; 80% `[MASK]`, 10% a random token, 10% unchanged.

Deliberate differences, each to make a stated property hold:
  * The short target is drawn per chunk (the original draws once per document),
    so that `short_seq_prob` of the sequences are short, as the paper says,
    rather than more (a short target makes more chunks of the same document).
  * A chunk of a single sentence is split inside the sentence at a random token
    (the original takes B from a random other document and labels it 1, which
    makes label 1 partly "random next" instead of "swapped"). A single-token
    chunk cannot be split: it is skipped and counted.
  * The masking budget is `min(max_predictions_per_seq, max(1,
    round(masked_lm_prob * n)))` with n the number of maskable tokens (the
    original counts [CLS] and [SEP] in n), so that `masked_lm_prob` is the
    masked share of the tokens that can be masked.
  * A word never continues across [SEP] (the original glued a continuation
    piece that starts B to the last word of A), and random replacements are
    drawn from the non-special vocabulary.

`sentence_task='nsp'` makes BERT's next-sentence pairs instead (google-research/bert
`create_pretraining_data.py`, the ALBERT paper's Table 5 ablation): the chunk's A
is kept, and with probability 0.5 its B is replaced by sentences of a random other
document of the split, from a random sentence on until B reaches the target
length less A (`sentence_order_label` 1, "random next"); the chunk's sentences
after A then start the next chunk, as the original "puts them back". The label
is drawn for a chunk of one sentence too (the original always takes a random B
there), so that exactly half the pairs are random, and a random B never comes
from the same document (the original tries 10 draws). Masking is the same for
both tasks.

Config fields read (`config.data`, an `ml_collections.ConfigDict` or any object
with these attributes; those with defaults are optional):
  source: 'builtin', 'files', or a TFDS catalog name such as
    'wikipedia/20230601.en'.
  files: for 'files', a list or comma-separated string of paths or globs.
  format: for 'files', the `corpus.read_documents` format; '' or None detects.
  max_seq_length, max_predictions_per_seq: sequence and prediction lengths.
  short_seq_prob (0.1), masked_lm_prob (0.15), max_ngram (3).
  validation_percent (1.0): share of documents held out as 'validation'.
  builtin_seed (0): seed of `builtin_corpus.documents`.
  text_field ('text'): the text feature of a catalog dataset.
  data_dir (''): where prepared datasets live (local or gs://); '' uses the caller's default.
  prepare_workers (1): processes tokenising the corpus; more than 1 uses
    Apache Beam's local runner (`tfds_builders.prepared_documents`).
  beam_options (''): Beam pipeline options for any runner (e.g. Dataflow).
  shuffle_window (1024): examples shuffled together after pairing, so that a
    batch mixes documents.
  read_threads (4): grain threads reading and pairing documents.
"""

import collections
import dataclasses
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from albert_jax import tokenizer as tokenizer_lib
from albert_jax.data import corpus, tfds_builders
from albert_jax.data import documents as documents_lib

DEFAULT_DATA_DIR = "~/tensorflow_datasets"
# The fields of one example, and of a batch (each with a leading batch axis).
FEATURES = (
  "input_ids",
  "input_mask",
  "token_type_ids",
  "masked_lm_positions",
  "masked_lm_ids",
  "masked_lm_weights",
  "sentence_order_label",  # 1: B is not A's continuation (swapped for 'sop', from another document for 'nsp')
)
# The sentence-pair tasks: ALBERT's sentence-order prediction and BERT's next-sentence prediction.
SENTENCE_TASKS = ("sop", "nsp")


@dataclasses.dataclass(frozen=True)
class PairingOptions:
  """How documents become masked sentence pairs (see the module docstring)."""

  max_seq_length: int
  max_predictions_per_seq: int
  short_seq_prob: float = 0.1
  masked_lm_prob: float = 0.15
  max_ngram: int = 3
  sentence_task: str = "sop"  # 'sop' (B swapped with A half the time) or 'nsp' (B from another document half the time)

  def __post_init__(self):
    if self.max_seq_length < 5:
      raise ValueError(
        f"max_seq_length={self.max_seq_length}: need at least 5 ([CLS] A [SEP] B [SEP] with one token in each)."
      )
    if self.max_predictions_per_seq < 1 or self.max_ngram < 1:
      raise ValueError("max_predictions_per_seq and max_ngram must be >= 1.")
    if not 0 <= self.short_seq_prob <= 1 or not 0 < self.masked_lm_prob < 1:
      raise ValueError("short_seq_prob must be in [0, 1] and masked_lm_prob in (0, 1).")
    if self.sentence_task not in SENTENCE_TASKS:
      raise ValueError(f"sentence_task={self.sentence_task!r}: use one of {SENTENCE_TASKS}.")

  @classmethod
  def from_config(cls, config_data: Any, sentence_task: str = "sop") -> "PairingOptions":
    fields = [f.name for f in dataclasses.fields(cls) if f.name != "sentence_task"]
    return cls(sentence_task=sentence_task, **{name: getattr(config_data, name) for name in fields})


@dataclasses.dataclass(frozen=True)
class Vocab:
  """The token tables pairing and masking need, taken from a `Tokenizer`."""

  cls_id: int
  sep_id: int
  mask_id: int
  is_word_start: np.ndarray  # bool [V]
  is_special: np.ndarray  # bool [V]
  random_ids: np.ndarray  # int32 [V'], the non-special ids.

  @classmethod
  def from_tokenizer(cls, tokenizer: Any, model_vocab_size: int | None = None) -> "Vocab":
    """Checks the tokenizer against the model and keeps its tables."""
    vocab_size = tokenizer.vocab_size
    if model_vocab_size is not None and model_vocab_size != vocab_size:
      raise ValueError(
        f"The tokenizer has {vocab_size} pieces but the model expects "
        f"vocab_size={model_vocab_size}: set config.model.vocab_size="
        f"{vocab_size} or use the SentencePiece model the model was trained with."
      )
    is_special = np.asarray(tokenizer.is_special, bool)
    is_word_start = np.asarray(tokenizer.is_word_start, bool) | is_special
    if is_special.shape != (vocab_size,) or is_word_start.shape != (vocab_size,):
      raise ValueError(f"tokenizer.is_special / is_word_start must have one entry per piece ({vocab_size}).")
    return cls(
      cls_id=tokenizer.cls_id,
      sep_id=tokenizer.sep_id,
      mask_id=tokenizer.mask_id,
      is_word_start=is_word_start,
      is_special=is_special,
      random_ids=np.flatnonzero(~is_special).astype(np.int32),
    )


class PipelineStats:
  """Thread-safe counters of what pairing dropped, truncated or drew.

  Keys: documents, sequences, short_targets, split_within_sentence,
  skipped_one_token_chunks, truncated_pairs, truncated_tokens,
  masked_tokens, maskable_tokens, ngram_drawn_<n> (n-gram sizes drawn, as
  p ∝ 1/n), ngram_<n> (n-grams of n words masked: fewer long ones than drawn,
  as in the original, since a long n-gram more often overlaps an earlier one
  or exceeds the remaining budget and is then shortened or skipped).
  Counts cover what this process has generated since it started (restoring an
  iterator does not restore them; with grain's multiprocess prefetch each
  worker counts and logs its own).
  """

  def __init__(self, log_every: int = 100_000):
    self._counts = collections.Counter()
    self._lock = threading.Lock()
    self._log_every = log_every
    self._next_log = log_every

  def __getstate__(self):  # Picklable for grain's multiprocess prefetch.
    return {"counts": self.snapshot(), "log_every": self._log_every}

  def __setstate__(self, state):
    self.__init__(state["log_every"])
    self._counts.update(state["counts"])

  def add(self, counts: Mapping[str, int]) -> None:
    with self._lock:
      self._counts.update(counts)
      if self._counts["sequences"] >= self._next_log:
        self._next_log += self._log_every
        logging.info("Pretraining data so far: %s", dict(self._counts))

  def snapshot(self) -> dict[str, int]:
    with self._lock:
      return dict(self._counts)


def _truncation(len_a: int, len_b: int, max_num_tokens: int) -> tuple[int, int]:
  """Tokens to drop from A and B: the original's loop, in closed form.

  The original repeatedly drops one token from the longer side (B on a tie).
  That first evens out the lengths, then alternates starting with B.
  """
  excess = len_a + len_b - max_num_tokens
  if excess <= 0:
    return 0, 0
  gap = min(abs(len_a - len_b), excess)
  rest = excess - gap
  drop_a = (gap if len_a > len_b else 0) + rest // 2
  return drop_a, excess - drop_a


def _truncate(segment: np.ndarray, drop: int, rng: np.random.Generator) -> np.ndarray:
  """Drops `drop` tokens, each from the front or back with probability 0.5."""
  if not drop:
    return segment
  front = rng.binomial(drop, 0.5)
  return segment[front : len(segment) - (drop - front)]


class ExampleMaker:
  """Turns one tokenised document into masked SOP examples (numpy only)."""

  def __init__(self, options: PairingOptions, vocab: Vocab):
    self.options = options
    self.vocab = vocab
    self.max_num_tokens = options.max_seq_length - 3
    ngram_p = 1.0 / np.arange(1, options.max_ngram + 1)
    self._ngram_cdf = np.cumsum(ngram_p / ngram_p.sum())

  def __call__(
    self,
    tokens: np.ndarray,
    sentence_lengths: np.ndarray,
    rng: np.random.Generator,
    counts: collections.Counter,
    random_document: Callable[[np.random.Generator], Mapping[str, np.ndarray]] | None = None,
  ) -> list[dict[str, np.ndarray]]:
    """All examples of one document, in document order; `random_document(rng)` gives another document's record
    (`tokens`, `sentence_lengths`), needed for 'nsp'."""
    tokens = np.asarray(tokens, np.int32)
    bounds = np.concatenate([[0], np.cumsum(sentence_lengths, dtype=np.int64)])
    num_sentences = len(sentence_lengths)
    examples = []
    start = 0
    while start < num_sentences:
      target = self.max_num_tokens
      if rng.random() < self.options.short_seq_prob:
        target = int(rng.integers(2, self.max_num_tokens + 1))
        counts["short_targets"] += 1
      end = int(np.searchsorted(bounds, bounds[start] + target, side="left"))
      end = min(max(end, start + 1), num_sentences)
      pair, next_start = self._split_chunk(tokens, bounds, start, end, target, rng, counts, random_document)
      if pair is not None:
        examples.append(self._example(*pair, rng, counts))
      start = next_start
    counts["documents"] += 1
    counts["sequences"] += len(examples)
    return examples

  def _split_chunk(self, tokens, bounds, start, end, target, rng, counts, random_document):
    """((first, second, label) or None, the sentence the next chunk starts at): the chunk split into A and B, then
    B swapped with A ('sop') or replaced by another document's sentences ('nsp'), with probability 0.5."""
    a_sentences = None  # the sentence B starts at, when A ends at a sentence boundary
    if end - start >= 2:
      a_sentences = start + int(rng.integers(1, end - start))
      a_end = bounds[a_sentences]
    elif bounds[end] - bounds[start] >= 2:
      a_end = bounds[start] + int(rng.integers(1, bounds[end] - bounds[start]))
      counts["split_within_sentence"] += 1
    else:
      counts["skipped_one_token_chunks"] += 1
      return None, end
    seg_a, seg_b = tokens[bounds[start] : a_end], tokens[a_end : bounds[end]]
    label = int(rng.random() < 0.5)
    if label and self.options.sentence_task == "nsp":
      seg_b = self._random_next(random_document(rng), target - len(seg_a), rng)
      counts["random_next"] += 1
      end = end if a_sentences is None else a_sentences  # B's own sentences start the next chunk
    elif label:
      seg_a, seg_b = seg_b, seg_a
    drop_a, drop_b = _truncation(len(seg_a), len(seg_b), self.max_num_tokens)
    if drop_a or drop_b:
      counts["truncated_pairs"] += 1
      counts["truncated_tokens"] += drop_a + drop_b
      seg_a, seg_b = _truncate(seg_a, drop_a, rng), _truncate(seg_b, drop_b, rng)
    return (seg_a, seg_b, label), end

  @staticmethod
  def _random_next(record: Mapping[str, np.ndarray], length: int, rng: np.random.Generator) -> np.ndarray:
    """Sentences of `record` from a random one on, until they hold `length` tokens or the document ends."""
    lengths = np.asarray(record["sentence_lengths"], np.int64)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    first = int(rng.integers(0, len(lengths)))
    last = min(int(np.searchsorted(bounds, bounds[first] + max(length, 1), side="left")), len(lengths))
    return np.asarray(record["tokens"], np.int32)[bounds[first] : bounds[max(last, first + 1)]]

  def _example(self, seg_a, seg_b, label, rng, counts):
    """`[CLS] A [SEP] B [SEP]`, padded, with its masked LM targets."""
    opts, vocab = self.options, self.vocab
    len_a, len_b = len(seg_a), len(seg_b)
    length = len_a + len_b + 3
    input_ids = np.zeros(opts.max_seq_length, np.int32)
    input_ids[0] = vocab.cls_id
    input_ids[1 : 1 + len_a] = seg_a
    input_ids[1 + len_a] = vocab.sep_id
    input_ids[2 + len_a : 2 + len_a + len_b] = seg_b
    input_ids[length - 1] = vocab.sep_id
    input_mask = np.zeros(opts.max_seq_length, np.int32)
    input_mask[:length] = 1
    token_type_ids = np.zeros(opts.max_seq_length, np.int32)
    token_type_ids[2 + len_a : length] = 1

    # Maskable: A and B without special tokens (such as <unk>); a word starts at
    # a word-start piece or after a gap left by [SEP] or a special token.
    content = np.concatenate([np.arange(1, 1 + len_a), np.arange(2 + len_a, length - 1)])
    content = content[~vocab.is_special[input_ids[content]]]
    word_starts = vocab.is_word_start[input_ids[content]] | (np.diff(content, prepend=-1) != 1)
    positions = content[self._choose_masked(word_starts, rng, counts)]
    labels = input_ids[positions]
    draw = rng.random(len(positions))
    random_tokens = vocab.random_ids[rng.integers(0, len(vocab.random_ids), len(positions))]
    input_ids[positions] = np.where(draw < 0.8, vocab.mask_id, np.where(draw < 0.9, labels, random_tokens))

    num_predictions = opts.max_predictions_per_seq
    masked_lm_positions = np.zeros(num_predictions, np.int32)
    masked_lm_ids = np.zeros(num_predictions, np.int32)
    masked_lm_weights = np.zeros(num_predictions, np.float32)
    masked_lm_positions[: len(positions)] = positions
    masked_lm_ids[: len(positions)] = labels
    masked_lm_weights[: len(positions)] = 1.0
    return dict(
      input_ids=input_ids,
      input_mask=input_mask,
      token_type_ids=token_type_ids,
      masked_lm_positions=masked_lm_positions,
      masked_lm_ids=masked_lm_ids,
      masked_lm_weights=masked_lm_weights,
      sentence_order_label=np.int32(label),
    )

  def _choose_masked(
    self, word_starts: np.ndarray, rng: np.random.Generator, counts: collections.Counter
  ) -> np.ndarray:
    """Which maskable pieces to mask: whole-word n-grams within the budget.

    Args:
      word_starts: bool per maskable piece, True where a word starts.
      rng: the example's generator.
      counts: updated with masked/maskable tokens and n-gram sizes.

    Returns:
      Sorted indices into `word_starts`.
    """
    num_pieces = len(word_starts)
    word_bounds = np.append(np.flatnonzero(word_starts), num_pieces)
    num_words = len(word_bounds) - 1
    budget = min(self.options.max_predictions_per_seq, max(1, int(round(self.options.masked_lm_prob * num_pieces))))
    ngram_sizes = (np.searchsorted(self._ngram_cdf, rng.random(num_words), side="right") + 1).tolist()
    bounds = word_bounds.tolist()
    covered = [False] * num_words
    masked = 0
    order = rng.permutation(num_words)
    tried = 0
    for word in order.tolist():
      if masked >= budget:
        break
      tried += 1
      n = ngram_sizes[word]
      while n > 1 and masked + bounds[min(word + n, num_words)] - bounds[word] > budget:
        n -= 1
      last = min(word + n, num_words)
      span = bounds[last] - bounds[word]
      if masked + span > budget or any(covered[word:last]):
        continue
      covered[word:last] = [True] * (last - word)
      masked += span
      counts[f"ngram_{last - word}"] += 1
    drawn = np.bincount(np.take(ngram_sizes, order[:tried]), minlength=self.options.max_ngram + 1)
    for n in range(1, self.options.max_ngram + 1):
      counts[f"ngram_drawn_{n}"] += int(drawn[n])
    counts["masked_tokens"] += masked
    counts["maskable_tokens"] += num_pieces
    word_lengths = np.diff(word_bounds)
    return np.flatnonzero(np.repeat(np.array(covered, bool), word_lengths))


class _DocumentExamples:
  """grain map: (index in the epoch stream, document id) → its examples."""

  def __init__(
    self,
    source: Sequence[Mapping[str, np.ndarray]],
    maker: ExampleMaker,
    seed: int,
    docs_per_epoch: int,
    stats: PipelineStats,
  ):
    self._source = source
    self._maker = maker
    self._seed = seed
    self._docs_per_epoch = docs_per_epoch
    self._stats = stats

  def __call__(self, index: int, document: int) -> list[dict[str, np.ndarray]]:
    epoch = index // self._docs_per_epoch
    record = self._source[int(document)]
    rng = np.random.default_rng([self._seed, epoch, int(document)])
    counts = collections.Counter()
    examples = self._maker(
      record["tokens"], record["sentence_lengths"], rng, counts, lambda rng: self._other_document(int(document), rng)
    )
    self._stats.add(counts)
    for example in examples:
      example["document"] = np.int64(document)
      example["epoch"] = np.int64(epoch)
    return examples

  def _other_document(self, document: int, rng: np.random.Generator) -> Mapping[str, np.ndarray]:
    """A document of the split other than `document`, uniformly (NSP's random next)."""
    other = int(rng.integers(0, len(self._source) - 1))
    return self._source[other + (other >= document)]


class _Unlist(grain.experimental.FlatMapTransform):
  """Flattens the per-document example lists into a stream of examples."""

  max_fan_out = 1 << 20

  def flat_map(self, element):
    return element


def _drop_provenance(example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k: example[k] for k in FEATURES}


def example_dataset(
  source: Sequence[Mapping[str, np.ndarray]],
  options: PairingOptions,
  vocab: Vocab,
  *,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
  num_epochs: int | None = None,
  shuffle_window: int = 1024,
  read_threads: int = 4,
  stats: PipelineStats | None = None,
) -> grain.IterDataset:
  """Masked SOP examples of this process's documents, epoch after epoch.

  Documents are sharded by index (process i reads documents i, i + count, …),
  shuffled afresh each epoch, paired and masked, then shuffled again within a
  window of examples so that a batch mixes documents. Each example also holds
  `document` (its source record) and `epoch`, for checks.

  Args:
    source: random-access tokenised documents, records with `tokens` (int32,
      all sentences concatenated) and `sentence_lengths` (int32 per sentence).
    options: pairing and masking options.
    vocab: token tables.
    seed: the stream's seed.
    process_index: this process's shard.
    process_count: number of shards.
    num_epochs: None repeats forever.
    shuffle_window: examples shuffled together (1 disables).
    read_threads: grain threads reading and pairing documents.
    stats: counters to update; a fresh `PipelineStats` if None.

  Returns:
    A checkpointable grain `IterDataset` of example dicts.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must be in [0, {process_count}).")
  if options.sentence_task == "nsp" and len(source) < 2:
    raise ValueError(
      "Next-sentence pairs take B from another document, but the split has only one; use a larger corpus."
    )
  documents = grain.MapDataset.range(len(source))[process_index::process_count]
  if not len(documents):
    raise ValueError(
      f"Process {process_index} of {process_count} has no documents: "
      f"the split has only {len(source)}; use a larger corpus."
    )
  make = _DocumentExamples(source, ExampleMaker(options, vocab), seed, len(documents), stats or PipelineStats())
  documents = documents.shuffle(seed=seed).repeat(num_epochs)
  examples = grain.experimental.FlatMapIterDataset(
    documents.map_with_index(make).to_iter_dataset(
      grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=4 * read_threads)
    ),
    _Unlist(),
  )
  if shuffle_window > 1:
    examples = grain.experimental.WindowShuffleIterDataset(examples, window_size=shuffle_window, seed=seed)
  return examples


def batch_dataset(examples: grain.IterDataset, batch_size: int) -> grain.IterDataset:
  """Batches of the `FEATURES` arrays, [batch_size, …]; a partial last batch is dropped."""
  return examples.map(_drop_provenance).batch(batch_size, drop_remainder=True)


class CatalogDocuments:
  """A TFDS catalog split as tokenised documents, tokenised when read.

  Each record's text field is split into paragraphs (lines) and sentences
  (`corpus.split_sentences`) and tokenised; `indices` picks the records of the
  train or validation part.
  """

  def __init__(self, records: Sequence[Mapping[str, Any]], indices: np.ndarray, tokenizer: Any, text_field: str):
    self._records = records
    self._indices = indices
    self._tokenizer = tokenizer
    self._text_field = text_field

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    record = self._records[int(self._indices[index])]
    if self._text_field not in record:
      raise KeyError(
        f"The catalog records have no field {self._text_field!r} "
        f"(they have {sorted(record)}); set config.data.text_field."
      )
    text = record[self._text_field]
    if isinstance(text, bytes):
      text = text.decode("utf-8", errors="replace")
    sentences = [s for line in text.splitlines() for s in corpus.split_sentences(line)]
    ids = self._tokenizer.encode_batch(sentences, num_threads=1) if sentences else []
    ids = [s for s in ids if s]
    return {
      "tokens": np.fromiter((t for s in ids for t in s), np.int32),
      "sentence_lengths": np.array([len(s) for s in ids], np.int32),
    }


def _catalog_documents(
  name: str, split: str, tokenizer: Any, data_dir: str, validation_percent: float, text_field: str
) -> CatalogDocuments:
  """A catalog dataset's 'train' split, prepared as ArrayRecord, held out by hash."""
  # Registers the text catalog (wikipedia, ...), which tfds does not do without TF.

  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
      f"config.data.source={name!r} is neither 'builtin', 'files' nor a TFDS catalog dataset: {str(e).splitlines()[0]}"
    ) from None
  builder.download_and_prepare()
  records = builder.as_data_source("train")
  held_out = documents_lib.is_validation(0, np.arange(len(records)), validation_percent)
  return CatalogDocuments(records, np.flatnonzero(held_out == (split == "validation")), tokenizer, text_field)


def document_source(
  config_data: Any, tokenizer: Any, split: str = "train", data_dir: str | None = None, prepare: bool | None = None
) -> Sequence[Mapping[str, np.ndarray]]:
  """The tokenised documents of `split` of the configured corpus, prepared if needed.

  Args:
    config_data: `config.data` (see the module docstring).
    tokenizer: an `albert_jax.tokenizer.Tokenizer`.
    split: 'train' or 'validation'.
    data_dir: where prepared datasets go unless `config_data.data_dir` says;
      None means ~/tensorflow_datasets. Local or a bucket (`gs://`).
    prepare: whether this process may prepare the corpus (with
      `config_data.prepare_workers` processes or on the Beam runner of
      `config_data.beam_options`) or only read it, prepared elsewhere; None:
      only JAX's process 0 prepares.

  Returns:
    Random-access records with `tokens` and `sentence_lengths`.
  """
  if split not in ("train", "validation"):
    raise ValueError(f"split must be 'train' or 'validation', got {split!r}.")
  data_dir = config_data.data_dir or data_dir or DEFAULT_DATA_DIR
  source = config_data.source
  validation_percent = config_data.validation_percent
  if source in ("files", "builtin"):
    if prepare is None:
      import jax  # pylint: disable=g-import-not-at-top

      prepare = jax.process_index() == 0
    builder = tfds_builders.prepared_documents(
      source,
      tokenizer,
      data_dir,
      files=config_data.files,
      text_format=config_data.format or None,
      builtin_seed=config_data.builtin_seed,
      validation_percent=validation_percent,
      prepare=prepare,
      workers=config_data.prepare_workers,
      beam_options=config_data.beam_options,
    )
    if split not in builder.info.splits:
      raise ValueError(f"No {split!r} split: config.data.validation_percent is 0.")
    documents = builder.as_data_source(split)
  else:
    data_dir = os.path.expanduser(data_dir)
    documents = _catalog_documents(source, split, tokenizer, data_dir, validation_percent, config_data.text_field)
  if not len(documents):
    raise ValueError(
      f"The {split!r} split of {source!r} has no documents; raise "
      "config.data.validation_percent or use a larger corpus."
    )
  return documents


def prepare(config_data: Any) -> Sequence[Mapping[str, np.ndarray]]:
  """Prepares the configured corpus once into `config_data.data_dir`, for runs that train from it later.

  What `python -m albert_jax.prepare` runs: on this machine, or on a cluster
  through `config_data.beam_options` (BUILD.md). Training runs with the same
  `config.data` fields (vocabulary included) find the dataset prepared.

  Returns:
    The 'train' split's documents.
  """
  if not config_data.data_dir:
    raise ValueError(
      "--config.data.data_dir is required: where the prepared dataset goes (local or gs://), as the training "
      "runs that read it will say."
    )
  if not config_data.vocab:
    raise ValueError(
      "--config.data.vocab is required: the SentencePiece model the training runs use (train one with "
      "python -m albert_jax.tokenizer)."
    )
  tokenizer = tokenizer_lib.Tokenizer(config_data.vocab)
  return document_source(config_data, tokenizer, "train", prepare=True)


def make_pretraining_data(
  config_data: Any,
  tokenizer: Any,
  batch_size: int,
  seed: int,
  split: str = "train",
  *,
  process_index: int | None = None,
  process_count: int | None = None,
  num_epochs: int | None = None,
  data_dir: str | None = None,
  model_vocab_size: int | None = None,
  sentence_task: str = "sop",
) -> tuple[grain.IterDataset, PipelineStats]:
  """This process's batches of masked SOP examples, and their counters.

  Args:
    config_data: `config.data` (see the module docstring).
    tokenizer: an `albert_jax.tokenizer.Tokenizer`.
    batch_size: the global batch size; each process gets batch_size /
      process_count examples per batch.
    seed: the stream's seed (`config.seed`).
    split: 'train' or 'validation'.
    process_index: this process's shard; `jax.process_index()` if None.
    process_count: number of shards; `jax.process_count()` if None.
    num_epochs: None repeats forever (training); 1 for a finite evaluation.
      Processes may get different numbers of batches from a finite stream, so
      evaluate a fixed number of batches of a repeated one on several hosts.
    data_dir: default location of prepared datasets (e.g. WORKDIR/tfds).
    model_vocab_size: `config.model.vocab_size`, checked against the tokenizer.
    sentence_task: the pairs: 'sop' (sentence order) or 'nsp' (next sentence).

  Returns:
    (dataset, stats): `iter(dataset)` is a checkpointable grain iterator
    (`get_state`/`set_state`, orbax `grain.checkpoint.CheckpointSave`).
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} is not divisible by the {process_count} processes; choose a multiple.")
  options = PairingOptions.from_config(config_data, sentence_task)
  vocab = Vocab.from_tokenizer(tokenizer, model_vocab_size)
  stats = PipelineStats()
  examples = example_dataset(
    document_source(config_data, tokenizer, split, data_dir),
    options,
    vocab,
    seed=seed,
    process_index=process_index,
    process_count=process_count,
    num_epochs=num_epochs,
    shuffle_window=config_data.shuffle_window,
    read_threads=config_data.read_threads,
    stats=stats,
  )
  return batch_dataset(examples, batch_size // process_count), stats


def make_pretraining_iterator(
  config_data: Any, tokenizer: Any, batch_size: int, seed: int, split: str = "train", **kwargs
) -> grain.DatasetIterator:
  """`iter` of `make_pretraining_data(...)`'s dataset: what the trainer calls."""
  dataset, _ = make_pretraining_data(config_data, tokenizer, batch_size, seed, split, **kwargs)
  return iter(dataset)


def _concatenate(batches: tuple[dict[str, np.ndarray], ...]) -> dict[str, np.ndarray]:
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def make_process_iterator(
  config_data: Any,
  tokenizer: Any,
  batch_size: int,
  seed: int,
  split: str = "train",
  *,
  num_shards: int = 0,
  shards: Sequence[int] | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
  **kwargs,
) -> grain.DatasetIterator:
  """This process's rows of a global stream cut into `num_shards` data shards (0 = one per process).

  The global batch is the shards' batches stacked in shard order. A process
  reads the `shards` its devices hold (`sharding.data_shards`), by default
  `num_shards / process_count` consecutive ones. So with a fixed `num_shards`
  the global batches are the same whatever the number of processes: a
  two-host run sees exactly what one host sees.
  """
  if shards is None:
    if process_index is None or process_count is None:
      import jax  # pylint: disable=g-import-not-at-top

      process_index = jax.process_index() if process_index is None else process_index
      process_count = jax.process_count() if process_count is None else process_count
    num_shards = num_shards or process_count
    if num_shards % process_count:
      raise ValueError(f"config.data.num_shards={num_shards} is not a multiple of the {process_count} processes.")
    per_process = num_shards // process_count
    shards = range(process_index * per_process, (process_index + 1) * per_process)
  datasets = [
    make_pretraining_data(
      config_data, tokenizer, batch_size, seed, split, process_index=shard, process_count=num_shards, **kwargs
    )[0]
    for shard in shards
  ]
  if len(datasets) == 1:
    return iter(datasets[0])
  return iter(grain.experimental.ZipIterDataset(parents=datasets).map(_concatenate))

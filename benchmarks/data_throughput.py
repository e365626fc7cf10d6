r"""Pretraining-data throughput per CPU core: tokenising, and pairing + masking + batching.

Measures, on one core each:
  (a) tokenise: `Tokenizer.encode_batch` (one SentencePiece thread) on the
      sentences of real text files, in tokens out per second;
  (b) pair+mask+batch: `pipeline.ExampleMaker` (SOP pairs, n-gram
      masks) and stacking into batches at --max_seq_length, from tokenised
      documents held in memory, in tokens per second (both the real tokens
      and the padded positions a training step consumes);
  and, for reference, the grain pipeline end to end (ArrayRecord reads,
  threads and all) in wall-clock tokens per second.

A training step's consumption goes next to these with
--train_tokens_per_s=N (tokens/s of a training step on this machine, e.g.
from the trainer's log); the table then shows how many data cores one
training device needs.

  python benchmarks/data_throughput.py --output=/tmp/data_throughput.json
"""

import collections
import json
import os
import platform
import tempfile
import time

import ml_collections
import numpy as np
from absl import app, flags

from albert_jax import config_lib
from albert_jax.data import corpus, pipeline
from albert_jax.tokenizer import Tokenizer

_DATA = config_lib.data_root()
flags.DEFINE_string("spm_model", os.path.join(_DATA, "spm", "albert_30k_spiece.model"), "SentencePiece model.")
_TEXT = os.path.join(_DATA, "text")
flags.DEFINE_list(
  "files",
  [
    os.path.join(_TEXT, "wikitext-2-raw", "wiki.valid.raw"),
    os.path.join(_TEXT, "gutenberg", "pg1342_pride_and_prejudice.txt"),
  ],
  "Text files to tokenise and pair.",
)
flags.DEFINE_integer("max_seq_length", 512, "Sequence length for (b).")
flags.DEFINE_integer("max_predictions_per_seq", 20, "Masked positions per sequence.")
flags.DEFINE_integer("batch_size", 64, "Examples per batch.")
flags.DEFINE_float("min_seconds", 3.0, "Repeat each measurement for at least this long.")
flags.DEFINE_float(
  "train_tokens_per_s",
  None,
  "Tokens/s a training step consumes on this machine (padded "
  "positions, batch * seq / step time): added to the table for comparison.",
)
flags.DEFINE_string("output", "data_throughput.json", "Where the JSON results go.")
FLAGS = flags.FLAGS


def _repeat(fn, min_seconds):
  """Runs fn() until min_seconds have passed; returns (summed results, seconds)."""
  total, start = None, time.perf_counter()
  while True:
    result = np.asarray(fn(), np.float64)
    total = result if total is None else total + result
    elapsed = time.perf_counter() - start
    if elapsed >= min_seconds:
      return total, elapsed


def _read_documents(paths):
  documents = []
  for path in paths:
    if not os.path.isfile(path):
      raise SystemExit(f"--files: {path} not found; pass text files to measure on.")
    documents.extend(corpus.read_documents(path))
  return documents


def _tokenised(tokenizer, documents):
  records = []
  for doc in documents:
    ids = [s for s in tokenizer.encode_batch(doc, num_threads=1) if s]
    if ids:
      records.append(
        {"tokens": np.concatenate(ids).astype(np.int32), "sentence_lengths": np.array([len(s) for s in ids], np.int32)}
      )
  return records


def measure_tokenise(tokenizer, documents, min_seconds):
  """(a): ALBERT tokenisation (normalise + SentencePiece) on one thread."""

  def run():
    return sum(len(ids) for doc in documents for ids in tokenizer.encode_batch(doc, num_threads=1))

  tokens, seconds = _repeat(run, min_seconds)
  return {"tokens_per_s": float(tokens) / seconds}


def measure_pair_mask_batch(records, options, vocab, batch_size, min_seconds):
  """(b): SOP pairing, masking and batching on one thread, documents in memory."""
  maker = pipeline.ExampleMaker(options, vocab)
  epochs = iter(range(1 << 30))

  def run():
    rng = np.random.default_rng(next(epochs))
    counts, pending, real, padded = collections.Counter(), [], 0, 0
    for record in records:
      pending.extend(maker(record["tokens"], record["sentence_lengths"], rng, counts))
      while len(pending) >= batch_size:
        batch = {k: np.stack([e[k] for e in pending[:batch_size]]) for k in pipeline.FEATURES}
        real += int(batch["input_mask"].sum())
        padded += batch["input_mask"].size
        del pending[:batch_size]
    return real, padded

  (real, padded), seconds = _repeat(run, min_seconds)
  return {"tokens_per_s": real / seconds, "padded_tokens_per_s": padded / seconds}


def measure_grain_pipeline(tokenizer, options, batch_size, min_seconds, data_dir):
  """The whole pipeline (ArrayRecord reads, 4 grain threads), wall clock."""
  config = ml_collections.ConfigDict(
    dict(
      source="files",
      files=FLAGS.files,
      data_dir=data_dir,
      validation_percent=0.0,
      **{
        f: getattr(options, f)
        for f in ("max_seq_length", "max_predictions_per_seq", "short_seq_prob", "masked_lm_prob", "max_ngram")
      },
    )
  )
  dataset, _ = pipeline.make_pretraining_data(config, tokenizer, batch_size, seed=0, process_index=0, process_count=1)
  iterator = iter(dataset)
  next(iterator)  # Start the threads outside the timing.

  def run():
    batch = next(iterator)
    return int(batch["input_mask"].sum()), batch["input_mask"].size

  (real, padded), seconds = _repeat(run, min_seconds)
  return {"tokens_per_s": real / seconds, "padded_tokens_per_s": padded / seconds}


def main(argv):
  del argv
  tokenizer = Tokenizer(FLAGS.spm_model)
  documents = _read_documents(FLAGS.files)
  options = pipeline.PairingOptions(
    max_seq_length=FLAGS.max_seq_length, max_predictions_per_seq=FLAGS.max_predictions_per_seq
  )
  vocab = pipeline.Vocab.from_tokenizer(tokenizer)
  with tempfile.TemporaryDirectory() as data_dir:
    grain_pipeline = measure_grain_pipeline(tokenizer, options, FLAGS.batch_size, FLAGS.min_seconds, data_dir)
  results = {
    "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor(), "python": platform.python_version()},
    "settings": {
      "files": FLAGS.files,
      "max_seq_length": FLAGS.max_seq_length,
      "max_predictions_per_seq": FLAGS.max_predictions_per_seq,
      "batch_size": FLAGS.batch_size,
    },
    "tokenise_per_core": measure_tokenise(tokenizer, documents, FLAGS.min_seconds),
    "pair_mask_batch_per_core": measure_pair_mask_batch(
      _tokenised(tokenizer, documents), options, vocab, FLAGS.batch_size, FLAGS.min_seconds
    ),
    "grain_pipeline": grain_pipeline,
  }
  if FLAGS.train_tokens_per_s:
    results["train_step"] = {"padded_tokens_per_s": FLAGS.train_tokens_per_s}
  _print_table(results)
  with open(FLAGS.output, "w") as f:
    json.dump(results, f, indent=2)
  print(f"Wrote {FLAGS.output}")


def _print_table(results):
  rows = [
    ("(a) tokenise, 1 core", results["tokenise_per_core"]),
    (f"(b) pair+mask+batch @ {FLAGS.max_seq_length}, 1 core", results["pair_mask_batch_per_core"]),
    ("grain pipeline end to end (wall clock)", results["grain_pipeline"]),
  ]
  if "train_step" in results:
    rows.append(("training step consumes", results["train_step"]))
  print(f"{'measurement':<44} {'tokens/s':>12} {'padded tokens/s':>16}")
  for name, row in rows:
    real, padded = row.get("tokens_per_s"), row.get("padded_tokens_per_s")
    print(f"{name:<44} {'' if real is None else f'{real:,.0f}':>12} {'' if padded is None else f'{padded:,.0f}':>16}")
  if "train_step" in results:
    need = results["train_step"]["padded_tokens_per_s"] / results["pair_mask_batch_per_core"]["padded_tokens_per_s"]
    print(f"data cores needed per training step stream: {need:.2f}")


if __name__ == "__main__":
  app.run(main)

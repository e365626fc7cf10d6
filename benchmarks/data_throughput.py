r"""Pretraining-data throughput per CPU core: tokenising, and pairing + masking + batching.

Measures, on one core each:
  (a) tokenise: `Tokenizer.encode_batch` (one SentencePiece thread) on the
      sentences of real text files, in tokens out per second;
  (b) pair+mask+batch: `pipeline.ExampleMaker` (SOP pairs, n-gram
      masks) and stacking into batches at --max_seq_length, from tokenised
      documents held in memory, in tokens per second (both the real tokens
      and the padded positions a training step consumes);
  and, for reference, the grain pipeline end to end (ArrayRecord reads,
  threads and all) in wall-clock tokens per second;
  (c) prepare: the whole corpus preparation (`tfds_builders.prepared_documents`:
      read, split, tokenise, write the ArrayRecord dataset) in one process, the
      default, and with Apache Beam's local runner on --prepare_workers
      processes (and on 1, to show Beam's own cost), in tokens per wall-clock
      second, one after the other in the same run. The corpus is --prepare_files
      copied until it holds --prepare_mb MB: Beam's fixed cost (starting the
      workers, the runner's bookkeeping; about 5 s) only pays off on a corpus
      of tens of MB, more than the shared text holds.

A training step's consumption goes next to these with
--train_tokens_per_s=N (tokens/s of a training step on this machine, e.g.
from the trainer's log); the table then shows how many data cores one
training device needs.

  python benchmarks/data_throughput.py --output=/tmp/data_throughput.json
  python benchmarks/data_throughput.py --only_prepare --prepare_mb=100 --prepare_workers=2
"""

import collections
import glob
import json
import os
import platform
import resource
import shutil
import tempfile
import time

import ml_collections
import numpy as np
from absl import app, flags

from albert_jax import config_lib
from albert_jax.data import corpus, pipeline, tfds_builders
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
flags.DEFINE_list(
  "prepare_files",
  sorted(glob.glob(os.path.join(_TEXT, "**", "*.txt"), recursive=True))
  + [os.path.join(_TEXT, "wikitext-2-raw", "wiki.valid.raw")],
  "Text files the preparation's corpus is made of (copied to --prepare_mb).",
)
flags.DEFINE_float("prepare_mb", 100.0, "Size of the corpus (c) prepares, in MB; 0 skips (c).")
flags.DEFINE_integer("prepare_workers", 2, "Beam worker processes for (c).")
flags.DEFINE_bool("only_prepare", False, "Measure (c) only.")
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


def _repeated_corpus(files, target_mb, folder) -> tuple[list[str], int]:
  """Copies of `files` in `folder`, as many as make `target_mb` MB; (paths, bytes)."""
  size = sum(os.path.getsize(f) for f in files)
  copies = max(1, round(target_mb * 1e6 / size))
  paths = []
  for copy in range(copies):
    for f in files:
      paths.append(os.path.join(folder, f"{copy:04d}-{os.path.basename(f)}"))
      shutil.copyfile(f, paths[-1])
  return paths, copies * size


def _cpu_seconds():
  """(this process, its finished children): Beam's workers are children of the process that runs the pipeline."""
  own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def measure_preparation(tokenizer, files, target_mb, workers):
  """(c): the corpus prepared in one process, then on Beam with `workers` processes and with 1, wall clock."""
  beam_one = "--runner=FnApiRunner --direct_num_workers=1 --direct_running_mode=multi_processing"
  runs = [("one process (default)", 1, ""), (f"Beam, {workers} worker processes", workers, "")]
  runs.append(("Beam, 1 worker process", 1, beam_one))
  results = {}
  with tempfile.TemporaryDirectory() as folder:
    paths, size = _repeated_corpus(files, target_mb, folder)
    for label, n, beam_options in runs:
      with tempfile.TemporaryDirectory() as data_dir:
        load, cpu, start = os.getloadavg()[0], _cpu_seconds(), time.perf_counter()
        builder = tfds_builders.prepared_documents(
          "files", tokenizer, data_dir, files=paths, validation_percent=1.0, workers=n, beam_options=beam_options
        )
        seconds = time.perf_counter() - start
        own, children = (after - before for after, before in zip(_cpu_seconds(), cpu))
        tokens = sum(c["tokens"] for c in builder.info.metadata["counts"].values())
        results[label] = {
          "seconds": seconds,
          "tokens": tokens,
          "tokens_per_s": tokens / seconds,
          "cpu_s_this_process": own,
          "cpu_s_workers": children,
          "load_average_before": load,
          "load_average_after": os.getloadavg()[0],
        }
  first = results["one process (default)"]["tokens_per_s"]
  for row in results.values():
    row["speedup_over_one_process"] = row["tokens_per_s"] / first
  return {"corpus": {"files": len(paths), "bytes": size}, "runs": results}


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor()


def main(argv):
  del argv
  tokenizer = Tokenizer(FLAGS.spm_model)
  if FLAGS.only_prepare:
    results = {
      "machine": {"cpu_count": os.cpu_count(), "cpu": _cpu_model(), "python": platform.python_version()},
      "prepare": measure_preparation(tokenizer, FLAGS.prepare_files, FLAGS.prepare_mb, FLAGS.prepare_workers),
    }
    _print_preparation(results["prepare"])
    with open(FLAGS.output, "w") as f:
      json.dump(results, f, indent=2)
    print(f"Wrote {FLAGS.output}")
    return
  documents = _read_documents(FLAGS.files)
  options = pipeline.PairingOptions(
    max_seq_length=FLAGS.max_seq_length, max_predictions_per_seq=FLAGS.max_predictions_per_seq
  )
  vocab = pipeline.Vocab.from_tokenizer(tokenizer)
  with tempfile.TemporaryDirectory() as data_dir:
    grain_pipeline = measure_grain_pipeline(tokenizer, options, FLAGS.batch_size, FLAGS.min_seconds, data_dir)
  results = {
    "machine": {"cpu_count": os.cpu_count(), "cpu": _cpu_model(), "python": platform.python_version()},
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
  if FLAGS.prepare_mb:
    results["prepare"] = measure_preparation(tokenizer, FLAGS.prepare_files, FLAGS.prepare_mb, FLAGS.prepare_workers)
  _print_table(results)
  if "prepare" in results:
    _print_preparation(results["prepare"])
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


def _print_preparation(prepare):
  corpus_info = prepare["corpus"]
  print(f"(c) prepare {corpus_info['bytes'] / 1e6:.0f} MB ({corpus_info['files']} files), wall clock:")
  print(
    f"{'':<32} {'seconds':>8} {'tokens/s':>12} {'speedup':>8} {'CPU s here':>11} {'CPU s workers':>14} {'load':>10}"
  )
  for label, r in prepare["runs"].items():
    load = f"{r['load_average_before']:.1f}-{r['load_average_after']:.1f}"
    print(
      f"{label:<32} {r['seconds']:>8.1f} {r['tokens_per_s']:>12,.0f} {r['speedup_over_one_process']:>7.2f}x "
      f"{r['cpu_s_this_process']:>11.1f} {r['cpu_s_workers']:>14.1f} {load:>10}"
    )


if __name__ == "__main__":
  app.run(main)

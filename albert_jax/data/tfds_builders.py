"""Tokenised documents as TFDS ArrayRecord datasets, prepared once, at any scale, read from anywhere.

A pretraining corpus is tokenised once and stored as one record per document:
`tokens` (int32, its sentences concatenated) and `sentence_lengths` (int32, one
per sentence), which is all sentence-order pairing needs. Pairs and masks are
drawn later, per epoch (`pipeline`). `download_and_prepare` writes the records
and `as_data_source(split)` reads them by index (grain's random access);
`tfds.load` and `as_dataset` would need TensorFlow and are not used.

One entry point, `prepared_documents`, for every scale:
  * one local process, the default: no Beam needed;
  * `workers` > 1: Apache Beam's local runner with that many worker processes;
  * `beam_options`: any Beam runner (Dataflow, Flink, Spark; BUILD.md).
Both paths run `documents.shard_examples` on each file, so they write the same
records with the same keys (hence TFDS's same hash-sorted order) and splits,
and count the same drops.

Each prepared dataset lives at `DATA_DIR/tokenized_documents/<name>/1.0.0`,
where the name fingerprints everything the records depend on (the source, the
files' paths, sizes and modification times, the format, the SentencePiece
model, the validation share) and nothing about how they were prepared (the
runner, the number of workers), so a changed corpus or vocabulary is prepared
anew, and data prepared anywhere is found by every run with the same config.
DATA_DIR may be local or a bucket (`gs://`).

Prepared once, used everywhere: TFDS writes into a temporary folder and
renames it when complete, but a bucket has no rename (it copies object by
object), so a dataset counts as prepared only once `PREPARED_MARKER` is
written into it, after everything else. Readers (`prepare=False`: every
process of a multi-host run but process 0) never prepare; they use a dataset
with its marker or stop with an error. A dataset folder without its marker is
a preparation that was interrupted or is still running elsewhere, and is
never read.

Documents go to 'validation' by a hash of (their file, their place in it)
(`validation_percent` of them), so the split is stable and needs no second
pass. What was dropped (unreadable files, lines that are not UTF-8, sentences
that tokenise to nothing, empty documents) is counted, logged, and kept in the
dataset's metadata (`builder.info.metadata['counts']`).
"""

import collections
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from albert_jax import storage
from albert_jax.data import documents as documents_lib

PREPARED_MARKER = "albert_jax_prepared.json"
# Part of every fingerprint: records keyed and split by (file, document in file) since this layout.
_LAYOUT = 2
_REPORT_SECONDS = 60  # a progress line this often while a large corpus is tokenised


def expand_files(files: str | Sequence[str]) -> list[str]:
  """Paths of `files` (a list, or a comma-separated string, of paths or globs; local or `gs://`)."""
  patterns = [p.strip() for p in files.split(",")] if isinstance(files, str) else list(files)
  paths, unmatched, reasons = [], [], []
  for pattern in filter(None, map(str, patterns)):
    try:
      matches = storage.glob(pattern)
    except storage.StorageError as e:
      matches = []
      reasons.append(str(e))
    if matches:
      paths.extend(matches)
    else:
      unmatched.append(pattern)
  if unmatched:
    why = f" ({'; '.join(reasons)})" if reasons else ""
    raise FileNotFoundError(
      f"No corpus file matches {unmatched}{why}; check config.data.files (paths or globs, comma-separated)."
    )
  if not paths:
    raise ValueError("config.data.files is empty: name the corpus files to read.")
  return [p if storage.is_remote(p) else os.path.abspath(p) for p in paths]


class _LocalThenCopyWriter(tfds.core.writer.ExampleWriter):
  """array_record writes local files only: into a bucket, a shard is written locally, then uploaded whole.

  (Its reader reads `gs://` itself.)
  """

  def write(self, path, examples):
    if not storage.is_remote(path):
      return super().write(path, examples)
    with tempfile.TemporaryDirectory(prefix="albert_jax-shard-") as folder:
      local = os.path.join(folder, epath.Path(path).name)
      positions = super().write(local, examples)
      storage.copy(local, path)
    return positions


class TokenizedDocuments(tfds.core.GeneratorBasedBuilder):
  """One record per document: `tokens` and `sentence_lengths` (int32); prepared in this process."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Tokenised documents for ALBERT pretraining."}

  # tfds 4.9.10 looks for this file through `importlib_resources`, which is not
  # a dependency (and is not installed without TensorFlow); say it directly.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)

  def __init__(self, *, documents: Any = None, tokenizer: Any = None, validation_percent: float = 0.0, **kwargs):
    """A builder; `documents` and `tokenizer` are needed only to prepare.

    Args:
      documents: a `documents.FileDocuments` or `documents.BuiltinDocuments`.
      tokenizer: an `albert_jax.tokenizer.Tokenizer`.
      validation_percent: share of documents held out as 'validation'.
      **kwargs: `tfds.core.GeneratorBasedBuilder` arguments (config, data_dir;
        also what tfds passes when it unpickles a builder for a data source).
    """
    self._documents = documents
    self._tokenizer = tokenizer
    self._validation_percent = validation_percent
    super().__init__(**{"file_format": "array_record", **kwargs})

  @property
  def split_names(self) -> tuple[str, ...]:
    return ("train", "validation") if self._validation_percent else ("train",)

  def _log_download_bytes(self):
    """TFDS would print 'Downloading and preparing dataset Unknown size': nothing is downloaded here."""
    logging.info("Tokenising the corpus once into %s (later runs reuse it).", self.data_dir)

  def _log_download_done(self):
    pass  # prepared_documents reports what was prepared

  def _example_writer(self) -> tfds.core.writer.ExampleWriter:
    return _LocalThenCopyWriter(file_format=self.info.file_format)

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
    return {split: self._generate_examples(split) for split in self.split_names}

  def _generate_examples(self, split: str):
    """Tokenised documents of `split`, file by file; what is dropped is counted."""
    counts = collections.Counter()
    next_report = time.monotonic() + _REPORT_SECONDS
    for shard in range(self._documents.num_shards):
      for _, key, example in documents_lib.shard_examples(
        self._documents, shard, self._tokenizer, self._validation_percent, (split,), counts
      ):
        if time.monotonic() > next_report:
          logging.info("Preparing %r: %s so far.", split, documents_lib.split_counts(counts, split))
          next_report = time.monotonic() + _REPORT_SECONDS
        yield key, example
    self.info.metadata.setdefault("counts", {})[split] = documents_lib.split_counts(counts, split)


class BeamTokenizedDocuments(TokenizedDocuments, skip_registration=True):
  """The same dataset (same name, same records), tokenised by Apache Beam workers (`beam_preparation`).

  A class of its own because TFDS runs a Beam pipeline for any builder whose
  `_split_generators` takes `pipeline` (it passes its pipeline in, so that one
  read of the corpus feeds both splits); the one-process path must not.
  """

  name = "tokenized_documents"

  def _split_generators(self, dl_manager, pipeline):  # pylint: disable=arguments-differ
    from albert_jax.data import beam_preparation  # pylint: disable=g-import-not-at-top

    del dl_manager
    return beam_preparation.tokenized_splits(
      pipeline, self._documents, self._tokenizer, self._validation_percent, self.split_names
    )

  def _process_pipeline_result(self, pipeline_result):
    """TFDS calls this once the pipeline has run, before it writes the metadata: the workers' counts go there."""
    from albert_jax.data import beam_preparation  # pylint: disable=g-import-not-at-top

    counts = beam_preparation.counters(pipeline_result)
    if counts is None:
      logging.warning("The Beam runner reported no counters: the dataset's metadata has no drop counts.")
      return
    self.info.metadata["counts"] = {split: documents_lib.split_counts(counts, split) for split in self.split_names}


def _fingerprint(kind: str, documents: Any, tokenizer: Any, validation_percent: float) -> str:
  vocab = hashlib.sha256(storage.path(tokenizer.model_path).read_bytes()).hexdigest()
  key = json.dumps([kind, documents.fingerprint(), vocab, validation_percent, _LAYOUT], sort_keys=True)
  return f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def is_prepared(builder: TokenizedDocuments) -> bool:
  """Whether the dataset is completely written (its marker is there, written after everything else)."""
  return (builder.data_path / PREPARED_MARKER).exists()


def prepared_documents(
  source: str,
  tokenizer: Any,
  data_dir: str,
  *,
  files: str | Sequence[str] = (),
  text_format: str | None = None,
  builtin_seed: int = 0,
  validation_percent: float = 1.0,
  prepare: bool = True,
  workers: int = 1,
  beam_options: str = "",
  beam_runner: Any = None,
) -> TokenizedDocuments:
  """The builder of a local, bucket or built-in corpus, prepared (once) under `data_dir` (local or `gs://`).

  Args:
    source: 'files' or 'builtin'.
    tokenizer: an `albert_jax.tokenizer.Tokenizer`.
    data_dir: the TFDS data directory.
    files: for 'files', paths or globs (a list or a comma-separated string).
    text_format: for 'files', a `corpus.FORMATS` entry; None detects per file.
    builtin_seed: for 'builtin', the seed of `builtin_corpus.documents`.
    validation_percent: share of documents held out as 'validation'.
    prepare: False to only read a dataset prepared elsewhere (an error if it is not complete).
    workers: more than 1 prepares with Apache Beam's local runner and that many worker processes.
    beam_options: Beam pipeline options (any runner, e.g. Dataflow's); set, they are used instead of `workers`.
    beam_runner: a Beam runner object to use instead of the one the options name (tests).

  Returns:
    The prepared builder; read it with `as_data_source('train')`.
  """
  if not 0 <= validation_percent < 100:
    raise ValueError(f"validation_percent={validation_percent} must be in [0, 100).")
  documents = _documents(source, files, text_format, builtin_seed)
  name = _fingerprint(source, documents, tokenizer, validation_percent)
  arguments = dict(
    documents=documents,
    tokenizer=tokenizer,
    validation_percent=validation_percent,
    config=tfds.core.BuilderConfig(name=name, description=json.dumps(documents.fingerprint())),
    data_dir=os.fspath(storage.path(data_dir)),
  )
  builder = TokenizedDocuments(**arguments)
  if not is_prepared(builder):
    _check_can_prepare(builder, prepare)
    if workers > 1 or beam_options or beam_runner is not None:
      beam_preparation, download_config, how = _beam_config(documents, data_dir, workers, beam_options, beam_runner)
      with beam_preparation.local_worker_environment():
        _prepare(BeamTokenizedDocuments(**arguments), source, download_config, how)
    else:
      _prepare(builder, source, None, "in this process")
    builder = TokenizedDocuments(**arguments)  # the info as written
  return builder


def _documents(source: str, files, text_format: str | None, builtin_seed: int):
  if source == "files":
    return documents_lib.FileDocuments(expand_files(files), text_format)
  if source == "builtin":
    return documents_lib.BuiltinDocuments(builtin_seed)
  raise ValueError(f"prepared_documents: source must be 'files' or 'builtin', got {source!r}.")


def _check_can_prepare(builder: TokenizedDocuments, prepare: bool):
  """Refuses to read a dataset that is not complete, or to prepare over one being written."""
  if not prepare:
    raise FileNotFoundError(
      f"The corpus is not prepared at {builder.data_path} (no {PREPARED_MARKER}). In a multi-host run, process 0 "
      "prepares it before the others read it: give every host the same config.data.data_dir (a shared disk or "
      "a gs:// bucket)."
    )
  if builder.data_path.exists():
    raise FileExistsError(
      f"{builder.data_path} holds a dataset without its {PREPARED_MARKER}: its preparation was interrupted, or "
      "is still running elsewhere (e.g. on Dataflow). Wait for it to finish; if nothing is preparing it, delete "
      "that folder and run again."
    )
  storage.check_writable(builder.data_dir_root, "config.data.data_dir")


def _prepare(builder: TokenizedDocuments, source: str, download_config: Any, how: str):
  """Writes the dataset (in this process or on Beam), then its marker; logs what was kept and dropped."""
  start = time.monotonic()
  try:
    builder.download_and_prepare(download_config=download_config)
  except AssertionError as e:  # tfds refuses to write an empty split.
    raise ValueError(
      f"The {source} corpus gave a split with no documents ({e}); check "
      "config.data.files and config.data.format, or, for a corpus of one "
      "document, set config.data.validation_percent=0."
    ) from None
  counts = dict(builder.info.metadata.get("counts", {}))
  seconds = time.monotonic() - start
  storage.write_text_atomic(
    builder.data_path / PREPARED_MARKER, json.dumps({"prepared": how, "seconds": seconds, "counts": counts}, indent=2)
  )
  report(builder.data_path, counts, f"{how}, {seconds:.1f} s")


def _beam_config(documents, data_dir: str, workers: int, beam_options: str, beam_runner: Any):
  """The Beam module, TFDS's download config for a Beam preparation, and a few words saying where it runs."""
  try:
    from albert_jax.data import beam_preparation  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    asked = f"config.data.beam_options={beam_options!r}" if beam_options else f"config.data.prepare_workers={workers}"
    raise ValueError(
      f"{asked} prepares the corpus on Apache Beam, which is not installed ({e}): pip install -r "
      "requirements-beam.txt, or leave config.data.prepare_workers=1 and beam_options empty."
    ) from e
  options = beam_preparation.pipeline_options(workers, beam_options)
  if beam_preparation.runs_remotely(options):
    local = [p for p in [data_dir, *getattr(documents, "paths", [])] if not storage.is_remote(p)]
    if local:
      raise ValueError(
        f"The Beam runner's workers run on other machines and cannot read local paths ({local[0]}): put the "
        "corpus files (config.data.files) and config.data.data_dir in a bucket (gs://...)."
      )
  runner = options.get_all_options()["runner"] or "DirectRunner"
  how = f"on Beam ({runner})" if beam_options else f"on Beam ({runner}, {workers} worker processes)"
  if not beam_options and beam_runner is None:
    beam_runner = beam_preparation.local_runner()
  return beam_preparation, tfds.download.DownloadConfig(beam_options=options, beam_runner=beam_runner), how


def report(where, counts: dict[str, dict[str, int]], how: str):
  """Logs what a preparation kept and dropped: the same lines on every runner and every storage."""
  for split, c in counts.items():
    logging.info(
      "Prepared %s: %s split: %d documents, %d sentences, %d tokens (%s).",
      where,
      split,
      c["documents"],
      c["sentences"],
      c["tokens"],
      how,
    )
  dropped = {name: sum(c.get(name, 0) for c in counts.values()) for name in ("empty_sentences", "empty_documents")}
  # Every split's counts repeat those of the reading, made once.
  dropped.update(
    {name: max((c.get(name, 0) for c in counts.values()), default=0) for name in documents_lib.READ_COUNTS}
  )
  if any(dropped.values()):
    logging.warning(
      "Dropped while preparing %s: %d unreadable file(s), %d line(s) that are not UTF-8, %d sentence(s) and %d "
      "document(s) that tokenise to nothing (the dataset's metadata keeps these counts).",
      where,
      dropped["unreadable_files"],
      dropped["bad_lines"],
      dropped["empty_sentences"],
      dropped["empty_documents"],
    )

"""Corpus preparation at every scale gives one dataset: one process, 2 local Beam worker processes, a cluster.

The one-process path and the Beam workers run the same per-file function, so the records (compared decoded, in
order: TFDS sorts them by a hash of their keys), the splits, the drop counts and the dataset's name must all be
equal. The cluster runner is Dataflow, as BUILD.md's command runs it: the pipeline is built with its options and
its graph checked, with nothing submitted. Bad input is counted and reported alike on every runner and on a disk
or in a bucket (the Cloud Storage emulator).
"""

import collections
import contextlib
import json
import logging
import re
import shlex
import sys

import pytest
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import GoogleCloudOptions, SetupOptions, StandardOptions
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.runner import PipelineRunner

from albert_jax import config_lib, storage
from albert_jax.data import documents as documents_lib
from albert_jax.data import tfds_builders
from albert_jax.tokenizer import Tokenizer
from tests import cli_helpers as cli
from tests import fixtures, gcs_emulator
from tests.conftest import REPO, needs_data


def _records(builder, split: str) -> list[tuple[bytes, bytes]]:
  source = builder.as_data_source(split)
  return [(source[i]["tokens"].tobytes(), source[i]["sentence_lengths"].tobytes()) for i in range(len(source))]


def _dataset(builder) -> dict:
  """Everything a run reads from a prepared dataset: its records in order per split, and its counts."""
  return {
    "splits": {split: _records(builder, split) for split in builder.info.splits},
    "counts": builder.info.metadata["counts"],
  }


def _planted(counts: dict) -> dict[str, int]:
  """The bad input found, over both splits (each split repeats the counts of the one reading)."""
  return {
    "unreadable_files": max(c["unreadable_files"] for c in counts.values()),
    "bad_lines": max(c["bad_lines"] for c in counts.values()),
    "empty_documents": sum(c["empty_documents"] for c in counts.values()),
    "empty_sentences": sum(c["empty_sentences"] for c in counts.values()),
  }


def _drop_lines(caplog, where) -> list[str]:
  return [
    r.getMessage().replace(str(where), "DIR") for r in caplog.records if "Dropped while preparing" in r.getMessage()
  ]


@needs_data("the shared text files (WikiText-2, Gutenberg books, ...) and the official vocabulary")
def test_one_process_and_two_beam_workers_prepare_the_same_dataset(shared_data, tmp_path, caplog):
  files = sorted(str(p) for p in (shared_data / "text").rglob("*") if p.is_file())
  files += [str(p) for p in fixtures.write_bad_corpus_files(tmp_path / "bad")]
  tokenizer = Tokenizer(shared_data / "spm" / "albert_30k_spiece.model")
  builders = {}
  for workers in (1, 2):
    caplog.clear()
    with caplog.at_level(logging.INFO):
      builders[workers] = tfds_builders.prepared_documents(
        "files", tokenizer, str(tmp_path / f"data-{workers}"), files=files, validation_percent=1.0, workers=workers
      )
    builders[workers].drops = _drop_lines(caplog, builders[workers].data_path)
  one, beam = builders[1], builders[2]
  assert one.info.config_name == beam.info.config_name  # the fingerprint: nothing about who prepared it
  assert one.info.splits["train"].num_examples > 50 and one.info.splits["validation"].num_examples >= 1
  assert _dataset(one) == _dataset(beam)
  assert _planted(one.info.metadata["counts"]) == fixtures.BAD_INPUT_COUNTS
  assert one.drops == beam.drops and len(one.drops) == 1, (one.drops, beam.drops)
  how = [json.loads((b.data_path / tfds_builders.PREPARED_MARKER).read_text())["prepared"] for b in (one, beam)]
  assert how == ["in this process", "on Beam (FnApiRunner, 2 worker processes)"]


def test_bad_input_is_counted_and_reported_alike_on_every_runner_and_storage(generated_vocab, gcs, tmp_path, caplog):
  corpus = tmp_path / "corpus"
  local_files = [fixtures.write_lines_corpus(corpus / "good.txt", fixtures.documents(120, seed=3))]
  local_files += fixtures.write_bad_corpus_files(corpus)
  for path in local_files:
    storage.copy(path, f"{gcs}/corpus/{path.name}")
  storage.copy(generated_vocab, f"{gcs}/spiece.model")
  places = {"disk": (str(corpus / "*"), tmp_path, str(generated_vocab)), "bucket": (f"{gcs}/corpus/*", gcs, "")}
  seen = {}
  for storage_name, (files, root, vocab) in places.items():
    tokenizer = Tokenizer(vocab or f"{gcs}/spiece.model")
    for workers in (1, 2):
      caplog.clear()
      with caplog.at_level(logging.INFO):
        builder = tfds_builders.prepared_documents(
          "files", tokenizer, f"{root}/data-{workers}", files=files, validation_percent=10.0, workers=workers
        )
      seen[storage_name, workers] = {**_dataset(builder), "drops": _drop_lines(caplog, builder.data_path)}
  first = seen["disk", 1]
  assert _planted(first["counts"]) == fixtures.BAD_INPUT_COUNTS
  assert first["drops"] == [
    "Dropped while preparing DIR: 1 unreadable file(s), 1 line(s) that are not UTF-8, 2 sentence(s) and 1 "
    "document(s) that tokenise to nothing (the dataset's metadata keeps these counts)."
  ]
  assert all(other == first for other in seen.values()), [k for k, v in seen.items() if v != first]


@pytest.mark.parametrize(
  "where, message",
  [
    ("gs://no-such-bucket/data", "Cannot write to gs://no-such-bucket/data (config.data.data_dir): the bucket"),
    (f"gs://{gcs_emulator.READ_ONLY_BUCKET}/data", "(config.data.data_dir): permission denied"),
    ("read-only disk", "(config.data.data_dir): Read-only file system. Make it writable or choose another"),
  ],
)
def test_a_data_dir_that_cannot_be_written_is_refused_alike_by_every_runner(where, message, tmp_path, request):
  tokenizer = Tokenizer(request.getfixturevalue("generated_vocab"))
  files = fixtures.write_lines_corpus(tmp_path / "corpus.txt", fixtures.documents(20))
  if where.startswith("gs://"):
    request.getfixturevalue("gcs_server")
  errors = []
  for workers in (1, 2):
    read_only = where == "read-only disk"
    with fixtures.read_only_folder(tmp_path / f"ro{workers}") if read_only else contextlib.nullcontext(where) as place:
      with pytest.raises(storage.StorageError) as error:
        tfds_builders.prepared_documents("files", tokenizer, str(place), files=str(files), workers=workers)
      errors.append(str(error.value).replace(str(place), "DATA_DIR"))
  assert errors[0] == errors[1] and message in str(error.value), errors


def test_corpus_files_in_a_bucket_that_does_not_exist_are_one_clear_error(generated_vocab, gcs_server, tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    tfds_builders.prepared_documents(
      "files", Tokenizer(generated_vocab), str(tmp_path), files="gs://no-such-bucket/corpus/*.txt"
    )
  assert str(error.value) == (
    "No corpus file matches ['gs://no-such-bucket/corpus/*.txt'] (the bucket gs://no-such-bucket does not exist); "
    "check config.data.files (paths or globs, comma-separated)."
  )


def test_no_process_reads_a_dataset_that_is_not_completely_written(generated_vocab, gcs):
  """In a bucket, where TFDS's final rename is a copy object by object: only the marker, written last, counts."""
  tokenizer = Tokenizer(generated_vocab)
  storage.path(f"{gcs}/corpus.txt").write_text("\n\n".join("\n".join(d) for d in fixtures.documents(30)) + "\n")
  prepare = lambda may: tfds_builders.prepared_documents(
    "files", tokenizer, f"{gcs}/data", files=f"{gcs}/corpus.txt", validation_percent=0, prepare=may
  )
  with pytest.raises(FileNotFoundError, match="not prepared at gs://.*process 0 prepares it before the others read"):
    prepare(False)
  written = prepare(True)
  assert len(prepare(False).as_data_source("train")) == len(written.as_data_source("train")) > 0
  (written.data_path / tfds_builders.PREPARED_MARKER).unlink()  # as if the preparation stopped before its last write
  with pytest.raises(FileNotFoundError, match="not prepared"):
    prepare(False)
  with pytest.raises(FileExistsError, match="without its albert_jax_prepared.json: its preparation was interrupted"):
    prepare(True)


# ---------------------------------------------------------------------------
# A cluster runner: the pipeline BUILD.md's Dataflow command builds, checked without submitting it.


class _Submitted(Exception):
  """Raised instead of submitting: the graph has been recorded."""


class _RecordingRunner(PipelineRunner):
  """Takes the pipeline TFDS would hand to Dataflow, keeps its portable graph and options, and runs nothing."""

  def run_pipeline(self, pipeline, options):
    self.graph, self.options = pipeline.to_runner_api(), options
    raise _Submitted()


def _build_md_prepare_flags() -> dict[str, str]:
  """The --config.data flags of BUILD.md's `python -m albert_jax.prepare` command for Dataflow."""
  text = (REPO / "BUILD.md").read_text().replace("\\\n", " ")
  (line,) = [line for line in text.splitlines() if line.startswith("python -m albert_jax.prepare")]
  return dict(
    arg[len("--config.data.") :].split("=", 1) for arg in shlex.split(line) if arg.startswith("--config.data.")
  )


def test_build_md_dataflow_command_builds_a_pipeline_whose_graph_tokenises_and_writes_both_splits(
  generated_vocab, gcs, tmp_path
):
  flags = {k: v.replace("gs://BUCKET", gcs) for k, v in _build_md_prepare_flags().items()}
  assert "--runner=DataflowRunner" in flags["beam_options"] and flags["files"] == f"{gcs}/corpus/*.txt"
  corpus = fixtures.write_lines_corpus(tmp_path / "a.txt", fixtures.documents(40, seed=1))
  for name in ("a.txt", "b.txt"):
    storage.copy(corpus, f"{gcs}/corpus/{name}")
  storage.copy(generated_vocab, flags["vocab"])
  data = config_lib.pretraining().data
  runner, tokenizer = _RecordingRunner(), Tokenizer(flags["vocab"])
  with pytest.raises(_Submitted):
    tfds_builders.prepared_documents(
      flags["source"],
      tokenizer,
      flags["data_dir"],
      files=flags["files"],
      validation_percent=data.validation_percent,
      beam_options=flags["beam_options"],
      beam_runner=runner,
    )
  options = runner.options
  assert options.view_as(StandardOptions).runner == "DataflowRunner"
  cloud = options.view_as(GoogleCloudOptions)
  assert (cloud.project, cloud.region, cloud.temp_location) == ("PROJECT", "us-central1", f"{gcs}/beam-tmp")
  setup = options.view_as(SetupOptions)
  assert setup.requirements_file == "requirements-beam.txt" and setup.extra_packages[0].startswith("dist/albert_jax")

  transforms = {t.unique_name: t for t in runner.graph.components.transforms.values() if not t.subtransforms}
  for name in ("Shards/Impulse", "Spread", "Tokenize/ParDo(TokenizeShard)"):
    assert name in transforms, sorted(transforms)
  for split in ("train", "validation"):
    assert {f"{split}_write/Serialize", f"{split}_write/GroupShards", f"{split}_write/WriteFinalShards"} <= set(
      transforms
    )
  # A worker's view: the DoFn unpickled from the graph tokenises a file as this process does.
  payload = beam_runner_api_pb2.ParDoPayload.FromString(transforms["Tokenize/ParDo(TokenizeShard)"].spec.payload)
  do_fn = pickler.loads(payload.do_fn.payload)[0]
  from_worker = [(o.tag, o.value[0], o.value[1]["tokens"].tolist()) for o in do_fn.process(1)]
  documents = documents_lib.FileDocuments(tfds_builders.expand_files(flags["files"]), None)
  here = [
    (split, key, example["tokens"].tolist())
    for split, key, example in documents_lib.shard_examples(
      documents, 1, tokenizer, data.validation_percent, ("train", "validation"), collections.Counter()
    )
  ]
  assert from_worker == here and len(here) == 40
  assert storage.glob(f"{gcs}/data/tokenized_documents/*/*/{tfds_builders.PREPARED_MARKER}") == []  # nothing ran


def test_a_cluster_runner_refuses_local_paths_its_workers_cannot_read(generated_vocab, tmp_path):
  corpus = fixtures.write_lines_corpus(tmp_path / "a.txt", fixtures.documents(5))
  with pytest.raises(ValueError, match=r"workers run on other machines and cannot read local paths \(/"):
    tfds_builders.prepared_documents(
      "files",
      Tokenizer(generated_vocab),
      str(tmp_path / "data"),
      files=str(corpus),
      beam_options=_build_md_prepare_flags()["beam_options"],
      beam_runner=_RecordingRunner(),
    )


def test_without_apache_beam_asking_for_workers_says_what_to_install(generated_vocab, tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "apache_beam", None)  # `import apache_beam` fails, as where it is not installed
  monkeypatch.delitem(sys.modules, "albert_jax.data.beam_preparation", raising=False)
  monkeypatch.delattr(sys.modules["albert_jax.data"], "beam_preparation", raising=False)  # imported before
  corpus = fixtures.write_lines_corpus(tmp_path / "a.txt", fixtures.documents(5))
  prepare = lambda workers: tfds_builders.prepared_documents(
    "files",
    Tokenizer(generated_vocab),
    str(tmp_path / "data"),
    files=str(corpus),
    validation_percent=0,
    workers=workers,
  )
  with pytest.raises(ValueError) as error:
    prepare(4)
  assert str(error.value).startswith("config.data.prepare_workers=4 prepares the corpus on Apache Beam, which is not")
  assert "pip install -r requirements-beam.txt, or leave config.data.prepare_workers=1" in str(error.value)
  assert len(prepare(1).as_data_source("train")) == 5  # one process needs no Beam


# ---------------------------------------------------------------------------
# The command line.


def _log_sources(stderr: str) -> list[str]:
  """The file that logged each line of an absl log ('tfds_builders.py'); any other line as it is."""
  return [
    m.group(1) if (m := re.match(r"[IWEF]\d{4} [\d:.]+ +\d+ (\S+):\d+\] ", line)) else line
    for line in stderr.splitlines()
  ]


def test_prepare_command_on_two_local_workers_and_on_a_bucket_it_may_not_write(shared_data_dir, gcs_server, tmp_path):
  data_dir = tmp_path / "data"
  common = ["--config=experiments/tiny.py", f"--config.data.vocab={shared_data_dir / 'spiece.model'}"]
  result = cli.run(
    [
      sys.executable,
      "-m",
      "albert_jax.prepare",
      *common,
      f"--config.data.data_dir={data_dir}",
      "--config.data.prepare_workers=2",
    ]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert re.fullmatch(rf"Prepared in {data_dir}: \d+ training documents.\n", result.stdout), result.stdout
  assert "(on Beam (FnApiRunner, 2 worker processes)" in result.stderr
  # Quiet by default: "Tokenising ..." and a "Prepared ..." line per split, none of the Beam workers' chatter.
  assert _log_sources(result.stderr) == ["tfds_builders.py"] * 3, result.stderr[-3000:]
  (marker,) = data_dir.glob(f"tokenized_documents/*/1.0.0/{tfds_builders.PREPARED_MARKER}")
  assert json.loads(marker.read_text())["prepared"] == "on Beam (FnApiRunner, 2 worker processes)"
  refused = cli.run(
    [
      sys.executable,
      "-m",
      "albert_jax.prepare",
      *common,
      f"--config.data.data_dir=gs://{gcs_emulator.READ_ONLY_BUCKET}/data",
      "--config.data.prepare_workers=2",
    ]
  )
  assert refused.returncode == 1 and "Traceback" not in refused.stderr
  assert (
    refused.stderr.strip()
    .splitlines()[-1]
    .startswith(
      f"error: Cannot write to gs://{gcs_emulator.READ_ONLY_BUCKET}/data (config.data.data_dir): permission denied"
    )
  ), refused.stderr[-2000:]
  # --verbosity=1 shows what Beam and its workers log (a small corpus: the dataset above is prepared already).
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("".join(f"Document {i} has a sentence. It has another one.\n\n" for i in range(300)))
  verbose = cli.run(
    [
      sys.executable,
      "-m",
      "albert_jax.prepare",
      *common,
      "--config.data.source=files",
      f"--config.data.files={corpus}",
      f"--config.data.data_dir={tmp_path / 'verbose'}",
      "--config.data.prepare_workers=2",
      "--verbosity=1",
    ]
  )
  assert verbose.returncode == 0, verbose.stderr[-3000:]
  for chatter in ("INFO:apache_beam.runners.worker.sdk_worker:", "No semi_persistent_directory found", "apitools"):
    assert chatter in verbose.stderr, verbose.stderr[-3000:]

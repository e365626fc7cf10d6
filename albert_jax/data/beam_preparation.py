"""The corpus tokenised by Apache Beam workers, on any runner: Beam's local one, Dataflow, Flink, Spark.

Imported only when a preparation asks for Beam (`config.data.prepare_workers`
> 1 or `config.data.beam_options`), since Apache Beam is an optional
dependency (`pip install -r requirements-beam.txt`). TFDS runs the pipeline
(`tfds_builders.BeamTokenizedDocuments`) and writes its output with the same
ArrayRecord writer, hash-sorted by key, as the one-process path.

The graph: the shards' indices → GroupByKey (spreads them over the workers)
→ `TokenizeShard`, which runs `documents.shard_examples`, the one-process
path's function, and sends each document to its split's output. One read of
each file feeds both splits. Drop counts are Beam counters, summed over the
workers by the runner (`counters`).
"""

import collections
import contextlib
import os
import shlex
import sys

import apache_beam as beam
from absl import logging
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms import environments

from albert_jax.data import beam_worker
from albert_jax.data import documents as documents_lib

NAMESPACE = "albert_jax"


def pipeline_options(workers: int, beam_options: str) -> PipelineOptions:
  """`beam_options` (command-line style, any runner); without them, Beam's local runner with `workers` processes.

  The local runner is named: the FnApiRunner, which the DirectRunner uses for batch pipelines after it has
  tried to download and start the Prism runner (whose workers are not these processes); `local_runner` is
  that runner with this package's worker command. Always explicit: TFDS would otherwise build options from
  sys.argv (the trainer's own flags).
  """
  argv = shlex.split(beam_options) or ["--runner=FnApiRunner", f"--direct_num_workers={workers}"]
  return PipelineOptions(argv)


def local_runner() -> FnApiRunner:
  """Beam's local runner, whose worker processes run `beam_worker`: Beam's SDK harness without its chatter.

  Beam's own multi-processing mode starts the harness itself, and each worker then writes a dozen INFO lines
  to stderr; a runner given a subprocess environment starts that environment's command instead. (Beam still
  warns that its in-memory mode runs one worker; with this environment it runs `direct_num_workers` of them.
  The command's log leaves that line out, `cli._NOISE`.)
  """
  command = f"{shlex.quote(sys.executable)} -m {beam_worker.__name__}"
  return FnApiRunner(default_environment=environments.SubprocessSDKEnvironment.from_command_string(command))


@contextlib.contextmanager
def local_worker_environment():
  """What the local runner's worker processes inherit: the albert_jax that this process runs, and its verbosity.

  They are new interpreters that unpickle `TokenizeShard` by its module name; where albert_jax is not
  installed they would not find it unless started in its checkout. Remote workers get it as a package
  (BUILD.md). They write Beam's own log lines only when this process logs at `--verbosity=1` or more.
  """
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  updates = {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
  if logging.get_verbosity() >= logging.DEBUG:
    updates[beam_worker.VERBOSE_ENV] = "1"
  saved = {name: os.environ.get(name) for name in updates}
  os.environ.update(updates)
  try:
    yield
  finally:
    for name, value in saved.items():
      if value is None:
        del os.environ[name]
      else:
        os.environ[name] = value


def runs_remotely(options: PipelineOptions) -> bool:
  """Whether the runner's workers are on other machines (Dataflow, Flink, Spark): they cannot read local paths."""
  runner = options.view_as(StandardOptions).runner
  name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
  return name is not None and name.split(".")[-1] not in StandardOptions.LOCAL_RUNNERS


class TokenizeShard(beam.DoFn):
  """shard index → (key, example) on the output of its split; what it drops, as Beam counters."""

  def __init__(self, documents, tokenizer, validation_percent: float, splits: tuple[str, ...]):
    self._documents = documents
    self._tokenizer = tokenizer  # pickled with its SentencePiece model (Tokenizer.__getstate__)
    self._validation_percent = validation_percent
    self._splits = splits

  def process(self, shard: int):
    counts = collections.Counter()
    for split, key, example in documents_lib.shard_examples(
      self._documents, shard, self._tokenizer, self._validation_percent, self._splits, counts, num_threads=1
    ):
      yield beam.pvalue.TaggedOutput(split, (key, example))
    for name, n in counts.items():
      Metrics.counter(NAMESPACE, name).inc(n)


def tokenized_splits(pipeline, documents, tokenizer, validation_percent: float, splits: tuple[str, ...]) -> dict:
  """{split: PCollection of (key, example)}: the corpus tokenised by the pipeline's workers.

  The shards go to the workers largest first, each under its own key: the
  local runner hands grouped keys to its workers in turn, in arrival order,
  which balances them (random keys gave one worker twice the other's work);
  Dataflow balances by itself.
  """
  sizes = documents.shard_sizes()
  ranked = sorted(range(documents.num_shards), key=lambda shard: -sizes[shard])
  shards = (
    pipeline
    | "Shards" >> beam.Create(list(enumerate(ranked)), reshuffle=False)
    | "Spread" >> beam.GroupByKey()
    | "Ungroup" >> beam.FlatMap(lambda rank_and_shards: rank_and_shards[1])
  )
  outputs = shards | "Tokenize" >> beam.ParDo(
    TokenizeShard(documents, tokenizer, validation_percent, splits)
  ).with_outputs(*splits)
  return {split: outputs[split] for split in splits}


def counters(pipeline_result) -> collections.Counter | None:
  """The counts `TokenizeShard` made, summed over all workers; None when the runner does not report metrics."""
  try:
    results = pipeline_result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
  except NotImplementedError:
    return None
  summed = collections.Counter()
  for counter in results["counters"]:
    summed[counter.key.metric.name] += counter.committed if counter.committed is not None else counter.attempted
  return summed

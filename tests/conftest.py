"""Shared test setup: 8 simulated CPU devices, quick compiles, exact float32 matmuls, the shared data folder, and
the small inputs tests generate for themselves.

Two kinds of data. Tests whose subject is the real data or the official vocabulary (official ids, corpus readers
on the real books, parity with Hugging Face on real corpora, SQuAD dev-set scores, quirks of the real GLUE files)
read ../shared/data (or $ALBERT_JAX_DATA); they carry `@pytest.mark.needs_data("what")` and skip without it,
the reason shown in the summary ("needs ../shared/data (set ALBERT_JAX_DATA): what"). Every other test runs
everywhere on the session fixtures below (`generated_vocab`, `generated_glue`, `generated_squad`,
`generated_corpus`; tests/fixtures.py makes them in a few seconds).

Tests of Cloud Storage (`gs://`) paths run against a local server (`gcs_server`, tests/gcs_emulator.py), each in
a folder of its own (`gcs`).

The suite also shares one JAX compilation cache, new for each session, with every training command it
runs in a subprocess: the same small train step is otherwise compiled again by each of them (about 40 s
of a 60 s run on 2 cores). A cached program is the same executable, so results are unchanged.
"""

import atexit
import os
import pathlib
import re
import shutil
import tempfile
import uuid

# XLA's CPU backend at LLVM optimisation level 0: the suite compiles hundreds of small programs and runs each a
# few times, and level 0 compiles them about a third faster (a cold tiny training run: 33 s -> 23 s) while
# computing the same operations. Subprocesses inherit it (tests/cli_helpers.py); benchmarks and users keep the
# default.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Cloud Storage clients read these when first imported, so they are set before any test can import them (the
# emulator fixture sets the rest, and every subprocess inherits them): gcsfs's bucket-type lookup over gRPC would
# retry for a minute against the emulator, and epath would use TensorFlow's GCS client, which cannot be pointed
# at an emulator.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("EPATH_USE_TF", "false")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="albert_jax-test-jit-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import jax  # noqa: E402
import pytest  # noqa: E402

from tests import (
  cli_helpers,  # noqa: E402
  fixtures,  # noqa: E402
  gcs_emulator,  # noqa: E402
)

jax.config.update("jax_default_matmul_precision", "highest")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("ALBERT_JAX_DATA", REPO.parent / "shared" / "data"))
SPM_MODEL = SHARED_DATA / "spm" / "albert_30k_spiece.model"
SKIP_REASON = "needs ../shared/data (set ALBERT_JAX_DATA)"


def needs_data(what: str) -> pytest.MarkDecorator:
  """Marks a test (or a fixture parameter) whose subject is the shared data: without it, it skips saying `what`."""
  return pytest.mark.needs_data(what)


def pytest_configure(config):
  config.addinivalue_line(
    "markers",
    "needs_data(what): the test's subject is the shared data (../shared/data or "
    "$ALBERT_JAX_DATA); without it the test skips, saying what it needs",
  )


def pytest_collection_modifyitems(config, items):
  """Without the shared data, every test marked `needs_data` is skipped before its fixtures are set up."""
  del config
  if SHARED_DATA.is_dir():
    return
  for item in items:
    marker = item.get_closest_marker("needs_data")
    if marker is not None:
      # skipif, not skip: the summary then keeps each test's line (it drops it for `skip` marks).
      item.add_marker(pytest.mark.skipif(True, reason=f"{SKIP_REASON}: {marker.args[0]}"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The shared data folder; skips without it (tests mark themselves `needs_data` to say what they need)."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"{SKIP_REASON}: not found at {SHARED_DATA}")
  return SHARED_DATA


@pytest.fixture(scope="session")
def generated_vocab(tmp_path_factory) -> pathlib.Path:
  """An ALBERT-style 500-piece SentencePiece model ([CLS], [SEP], [MASK] at 2, 3, 4) for tests that need some
  vocabulary, not the official one."""
  path = tmp_path_factory.mktemp("generated_vocab") / "spiece.model"
  fixtures.write_vocab(path)
  return path


@pytest.fixture(scope="session")
def generated_glue(tmp_path_factory) -> pathlib.Path:
  """A GLUE root with SST-2, CoLA, MRPC and STS-B train.tsv (80 rows) and dev.tsv (40 rows)."""
  return fixtures.write_glue(tmp_path_factory.mktemp("generated_glue"))


@pytest.fixture(scope="session")
def generated_squad(tmp_path_factory) -> pathlib.Path:
  """A SQuAD folder with {train,dev}-v1.1.json (36 questions each) and {train,dev}-v2.0.json (30, 12 of them
  unanswerable)."""
  return fixtures.write_squad(tmp_path_factory.mktemp("generated_squad"))


@pytest.fixture(scope="session")
def generated_corpus(tmp_path_factory) -> pathlib.Path:
  """A pretraining corpus in the BERT "lines" format: 1,200 documents of 2 to 30 sentences."""
  return fixtures.write_lines_corpus(
    tmp_path_factory.mktemp("generated_corpus") / "corpus.txt", fixtures.documents(1200)
  )


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory):
  """A vocabulary and prepared built-in corpus shared by the CLI runs of tests/cli_helpers.py (prepared once)."""
  data_dir = tmp_path_factory.mktemp("data")
  from albert_jax.data import builtin_corpus  # pylint: disable=g-import-not-at-top

  builtin_corpus.write_vocab(data_dir / "spiece.model", 1000)
  return data_dir


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory, shared_data_dir):
  """An uninterrupted run of STEPS steps: what every interrupted run must reproduce bit for bit."""
  workdir = tmp_path_factory.mktemp("straight")
  result = cli_helpers.run(
    cli_helpers.train_command(workdir, shared_data_dir, cli_helpers.STEPS, *cli_helpers.STRAIGHT_FLAGS)
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.fixture(scope="session")
def gcs_server():
  """A local Cloud Storage server (gcp-storage-emulator, tests/gcs_emulator.py) that every client is pointed at."""
  with gcs_emulator.running() as url:
    yield url


@pytest.fixture
def gcs(gcs_server, request) -> str:
  """A folder of this test's own in the emulator's bucket: 'gs://test-bucket/<test>-<random>'."""
  del gcs_server
  name = re.sub(r"[^-\w]+", "-", request.node.name).strip("-")
  return f"gs://{gcs_emulator.BUCKET}/{name}-{uuid.uuid4().hex[:8]}"

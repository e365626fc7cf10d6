"""Shared test setup: 8 simulated CPU devices, quick compiles, exact float32 matmuls, and the shared data folder.

The suite also shares one JAX compilation cache, new for each session, with every training command it
runs in a subprocess: the same small train step is otherwise compiled again by each of them (about 40 s
of a 60 s run on 2 cores). A cached program is the same executable, so results are unchanged.
"""

import atexit
import os
import pathlib
import shutil
import tempfile

# XLA's CPU backend at LLVM optimisation level 0: the suite compiles hundreds of small programs and runs each a
# few times, and level 0 compiles them about a third faster (a cold tiny training run: 33 s -> 23 s) while
# computing the same operations. Subprocesses inherit it (tests/cli_helpers.py); benchmarks and users keep the
# default.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="albert_jax-test-jit-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("ALBERT_JAX_DATA", REPO.parent / "shared" / "data"))
SPM_MODEL = SHARED_DATA / "spm" / "albert_30k_spiece.model"


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  if not SHARED_DATA.is_dir():
    pytest.skip(f"shared data not found at {SHARED_DATA}; set ALBERT_JAX_DATA")
  return SHARED_DATA

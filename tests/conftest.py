"""Shared test setup: 8 simulated CPU devices, exact float32 matmuls, and the shared data folder."""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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

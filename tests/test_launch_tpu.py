"""launch_tpu.sh against a stand-in `gcloud` that records its arguments: the commands for a v4-32 pod slice."""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tarfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch_tpu.sh"
POD = ["--name=albert-pod", "--zone=us-central2-b", "--accelerator_type=v4-32"]
TRAIN = ["python3", "-m", "albert_jax.train", "--config=experiments/base.py", "--workdir=/mnt/shared/albert base"]
TPU_VM = ["compute", "tpus", "tpu-vm"]

# Logs each call as a JSON list; answers `describe` from $FAKE_TPU ("STATE TYPE", unset: no such TPU);
# keeps the file that `scp` copies.
FAKE_GCLOUD = f"""#!{sys.executable}
import json, os, shutil, sys
args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
  log.write(json.dumps(args) + "\\n")
if args[3] == "describe":
  if "FAKE_TPU" not in os.environ:
    sys.exit("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: Resource not found")
  print(os.environ["FAKE_TPU"].replace(" ", "\\t"))
if args[3] == "scp":
  shutil.copyfile(args[4], os.environ["FAKE_GCLOUD_LOG"] + ".tar.gz")
"""


@pytest.fixture
def fake_gcloud(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
  (bin_dir / "gcloud").chmod(0o755)
  return tmp_path / "gcloud.log"


def launch(log, *args, existing=None):
  env = dict(os.environ, PATH=f"{log.parent / 'bin'}:{os.environ['PATH']}", FAKE_GCLOUD_LOG=str(log))
  if existing:
    env["FAKE_TPU"] = existing
  return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120)


def calls(log) -> list[list[str]]:
  return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def flag(command: list[str], name: str) -> str:
  values = [a.split("=", 1)[1] for a in command if a.startswith(f"--{name}=")]
  assert len(values) == 1, (name, command)
  return values[0]


def pinned_jax() -> str:
  return re.search(r"^jax==(\S+)", (REPO / "requirements.txt").read_text(), re.M).group(1)


def check_pod_commands(commands: list[list[str]], created: bool, run: list[str] | None = TRAIN):
  """describe [create] scp ssh-install [ssh-run], each for the v4-32 slice in us-central2-b."""
  verbs = [c[3] for c in commands]
  assert verbs == ["describe", *(["create"] if created else []), "scp", "ssh", *(["ssh"] if run else [])]
  for c in commands:
    assert c[:3] == TPU_VM and flag(c, "zone") == "us-central2-b"
  if created:
    create = commands[1]
    assert create[4] == "albert-pod"
    assert flag(create, "accelerator-type") == "v4-32" and flag(create, "version") == "tpu-ubuntu2204-base"
  scp, install = commands[-3:-1] if run else commands[-2:]
  assert scp[4].endswith("albert_jax.tar.gz") and scp[5] == "albert-pod:albert_jax.tar.gz"
  assert flag(scp, "worker") == "all"
  assert install[4] == "albert-pod" and flag(install, "worker") == "all"
  install_words = shlex.split(flag(install, "command"))
  assert ["tar", "-xzf", "albert_jax.tar.gz", "-C", "albert_jax"] == install_words[4:9]
  assert install_words[-5:] == ["install", "-q", f"jax[tpu]=={pinned_jax()}", "-r", "requirements.txt"]
  if run:
    ssh = commands[-1]
    assert ssh[4] == "albert-pod" and flag(ssh, "worker") == "all"
    assert shlex.split(flag(ssh, "command")) == ["cd", "albert_jax", "&&", *run]


def test_creates_a_v4_32_pod_installs_the_checkout_and_runs_on_all_workers(fake_gcloud):
  result = launch(fake_gcloud, *POD, "--", *TRAIN)
  assert result.returncode == 0, result.stderr
  check_pod_commands(calls(fake_gcloud), created=True, run=[*TRAIN, "--config.distributed.auto=True"])
  with tarfile.open(f"{fake_gcloud}.tar.gz") as tar:
    names = set(tar.getnames())
  assert {"albert_jax/train.py", "experiments/tiny.py", "requirements.txt", "launch_tpu.sh"} <= names
  assert not any(n.startswith(".git/") or "__pycache__" in n for n in names)


def test_reuses_an_existing_ready_tpu(fake_gcloud):
  result = launch(fake_gcloud, *POD, "--", *TRAIN, existing="READY v4-32")
  assert result.returncode == 0, result.stderr
  assert "Reusing TPU VM 'albert-pod'" in result.stderr
  check_pod_commands(calls(fake_gcloud), created=False, run=[*TRAIN, "--config.distributed.auto=True"])


@pytest.mark.parametrize(
  "existing, message",
  [
    ("READY v4-8", "exists as v4-8, not v4-32"),
    ("STOPPED v4-32", "is STOPPED, not READY"),
  ],
)
def test_an_existing_tpu_that_does_not_fit_is_an_error(fake_gcloud, existing, message):
  result = launch(fake_gcloud, *POD, "--", *TRAIN, existing=existing)
  assert result.returncode == 2
  assert message in result.stderr
  assert [c[3] for c in calls(fake_gcloud)] == ["describe"]


def test_dry_run_prints_the_commands_without_calling_gcloud(fake_gcloud):
  result = launch(fake_gcloud, *POD, "--dry_run", "--", *TRAIN)
  assert result.returncode == 0, result.stderr
  assert not fake_gcloud.exists()
  printed = [shlex.split(line) for line in result.stdout.splitlines() if line.startswith("gcloud ")]
  assert all(c[0] == "gcloud" for c in printed)
  check_pod_commands([c[1:] for c in printed], created=True, run=[*TRAIN, "--config.distributed.auto=True"])


def test_without_a_command_it_only_creates_and_installs(fake_gcloud):
  result = launch(fake_gcloud, *POD)
  assert result.returncode == 0, result.stderr
  check_pod_commands(calls(fake_gcloud), created=True, run=None)


@pytest.mark.parametrize("missing", ["name", "zone", "accelerator_type"])
def test_a_missing_required_flag_is_named(fake_gcloud, missing):
  args = [a for a in POD if not a.startswith(f"--{missing}=")]
  result = launch(fake_gcloud, *args, "--", "true")
  assert result.returncode == 2
  assert f"--{missing} is required" in result.stderr
  assert not fake_gcloud.exists()


@pytest.mark.parametrize(
  "args, message",
  [
    (["--preemptible", "--spot"], "--preemptible and --spot exclude each other"),
    (["--accelerator_type=tpu32"], "is not a TPU type like v4-32"),
    (["--zone"], "--zone needs a value"),
    (["--bogus"], "unknown argument '--bogus'"),
  ],
)
def test_bad_flags_are_explained(fake_gcloud, args, message):
  result = launch(fake_gcloud, *POD, *args)
  assert result.returncode == 2
  assert message in result.stderr
  assert not fake_gcloud.exists()


def test_project_spot_and_version_reach_gcloud(fake_gcloud):
  result = launch(fake_gcloud, *POD, "--project", "my-project", "--spot", "--version=v2-alpha-tpuv5", "--", "true")
  assert result.returncode == 0, result.stderr
  commands = calls(fake_gcloud)
  assert all(flag(c, "project") == "my-project" for c in commands)
  create = commands[1]
  assert "--spot" in create and "--preemptible" not in create and flag(create, "version") == "v2-alpha-tpuv5"


@pytest.mark.parametrize(
  "accelerator_type, version",
  [
    ("v4-8", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-32", "v2-alpha-tpuv5"),
    ("v6e-16", "v2-alpha-tpuv6e"),
  ],
)
def test_the_runtime_version_follows_the_tpu_generation(fake_gcloud, accelerator_type, version):
  result = launch(fake_gcloud, "--name=t", "--zone=z", f"--accelerator_type={accelerator_type}", "--dry_run")
  assert result.returncode == 0, result.stderr
  create = next(
    shlex.split(line) for line in result.stdout.splitlines() if line.startswith("gcloud compute tpus tpu-vm create ")
  )
  assert flag(create, "version") == version


@pytest.mark.parametrize(
  "command, expected",
  [
    (
      ["python3", "-m", "albert_jax.finetune", "--config=experiments/glue.py:sst2"],
      ["python3", "-m", "albert_jax.finetune", "--config=experiments/glue.py:sst2", "--config.distributed.auto=True"],
    ),
    (
      [*TRAIN, "--config.distributed.coordinator_address=10.0.0.2:1234"],
      [*TRAIN, "--config.distributed.coordinator_address=10.0.0.2:1234"],
    ),
    (
      ["python3", "-c", "import jax; print(jax.device_count())"],
      ["python3", "-c", "import jax; print(jax.device_count())"],
    ),
  ],
)
def test_multihost_initialisation_is_added_to_albert_jax_entry_points_only(fake_gcloud, command, expected):
  result = launch(fake_gcloud, *POD, "--", *command)
  assert result.returncode == 0, result.stderr
  assert shlex.split(flag(calls(fake_gcloud)[-1], "command")) == ["cd", "albert_jax", "&&", *expected]


def test_help_describes_the_flags():
  result = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
  assert result.returncode == 0
  for name in (
    "--name",
    "--zone",
    "--accelerator_type",
    "--version",
    "--project",
    "--preemptible",
    "--spot",
    "--dry_run",
  ):
    assert name in result.stdout

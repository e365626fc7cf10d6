"""Running `albert_jax.train` in subprocesses, as a user would: tiny configs, bounded waits, no process left behind."""

import json
import os
import pathlib
import re
import subprocess
import sys
import time

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]

TINY_FLAGS = [
  "--config.model.hidden_size=32",
  "--config.model.embedding_size=16",
  "--config.model.num_attention_heads=2",
  "--config.model.intermediate_size=64",
  "--config.model.num_hidden_layers=2",
  "--config.data.max_seq_length=32",
  "--config.data.max_predictions_per_seq=5",
  "--config.batch_size=8",
  "--config.warmup_steps=2",
  "--config.log_every_steps=1",
  "--config.eval_every_steps=0",
  "--config.data.read_threads=1",
]
STEPS = 60  # long enough that a signal sent early lands mid-run
STRAIGHT_FLAGS = ("--config.checkpoint_every_steps=20",)


def train_command(workdir, data_dir, steps, *extra):
  return [
    sys.executable,
    "-m",
    "albert_jax.train",
    "--config=experiments/tiny.py",
    f"--workdir={workdir}",
    f"--config.num_train_steps={steps}",
    f"--config.data.data_dir={data_dir}",
    f"--config.data.vocab={data_dir / 'spiece.model'}",
    *TINY_FLAGS,
    *extra,
  ]


def env(devices=1):
  """The test environment (its XLA flags included) with `devices` simulated CPU devices."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")).split()
  return dict(
    os.environ,
    XLA_FLAGS=" ".join([f"--xla_force_host_platform_device_count={devices}", *flags]),
    JAX_PLATFORMS="cpu",
    PYTHONPATH=str(REPO),
  )


def run(cmd, devices=1, timeout=300):
  return subprocess.run(cmd, cwd=REPO, env=env(devices), capture_output=True, text=True, timeout=timeout)


def spawn(cmd, log, devices=1):
  """Starts a training run in the background, its stderr going to `log` (an unread pipe would fill and block it)."""
  proc = subprocess.Popen(cmd, cwd=REPO, env=env(devices), stdout=subprocess.DEVNULL, stderr=open(log, "w"))
  proc.log = pathlib.Path(log)
  return proc


def tail(proc, chars=3000):
  return proc.log.read_text()[-chars:]


def wait_for(predicate, proc, timeout=240, poll=0.02):
  """Polls `predicate` every `poll` seconds; the run is killed if it ends first or the time runs out."""
  deadline = time.time() + timeout
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError(f"training exited early: {tail(proc)}")
    if time.time() > deadline:
      proc.kill()
      raise AssertionError(f"timed out waiting for the training run: {tail(proc)}")
    time.sleep(poll)


def finish(procs, timeout):
  """Waits for every process; if one is still running after `timeout` seconds, all are killed and the test fails."""
  deadline = time.time() + timeout
  try:
    for p in procs:
      p.wait(timeout=max(deadline - time.time(), 0.1))
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
      p.wait()
    logs = "\n---\n".join(tail(p) for p in procs)
    raise AssertionError(f"not finished within {timeout} s:\n{logs}") from None
  return [p.returncode for p in procs]


def loss_rows(workdir) -> list[tuple[int, float]]:
  """(step, training loss) as logged, in order: a resumed run logs the steps after its checkpoint again."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  lines = path.read_text().splitlines() if path.exists() else []
  rows = [json.loads(line) for line in lines if line.endswith("}")]  # the last line may be half written
  return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


def losses(workdir) -> dict[int, float]:
  return dict(loss_rows(workdir))


def final_params(workdir):
  from albert_jax import checkpoints  # pylint: disable=g-import-not-at-top

  return checkpoints.load(workdir)[1]


def assert_same_params(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

"""The command lines as a user meets them: a mistake is one `error:` line, and a CPU machine hears nothing of libtpu."""

import importlib.util
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from albert_jax import checkpoints
from albert_jax import model as model_lib
from albert_jax.data import builtin_corpus
from tests.conftest import REPO

LIBTPU_LINES = ("libtpu", "TPU accelerator", "TPU_WORKER_HOSTNAMES", "backend 'tpu'", "lockfile")


def user_env(**overrides):
  """The environment of a user's shell: no JAX_PLATFORMS (albert_jax chooses), the suite's XLA flags kept."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  return dict(env, PYTHONPATH=str(REPO), **overrides)


def run(*args, timeout=120):
  return subprocess.run(
    [sys.executable, "-m", *args], cwd=REPO, env=user_env(), capture_output=True, text=True, timeout=timeout
  )


@pytest.mark.parametrize(
  "args, message",
  [
    (
      ("albert_jax.finetune", "--config=experiments/glue.py:nosuchtask", "--workdir=w"),
      "error: --config=experiments/glue.py:nosuchtask: Unknown task 'nosuchtask': use a GLUE task (cola, sst2,",
    ),
    (
      ("albert_jax.finetune", "--config=experiments/nope.py", "--workdir=w"),
      "error: --config=experiments/nope.py: there is no config file 'experiments/nope.py' here",
    ),
    (
      ("albert_jax.train", "--config=experiments/tiny.py", "--workdir=w", "--config.batch_sizee=3"),
      "error: --config.batch_sizee: the config has no field 'batch_sizee'; did you mean batch_size?",
    ),
    (
      ("albert_jax.train", "--config=experiments/tiny.py", "--workdir=w", "--config.model.hidden_size=wide"),
      "error: --config.model.hidden_size=wide: invalid literal for int()",
    ),
    (("albert_jax.train", "--config=experiments/tiny.py"), "error: --workdir is required"),
    (
      ("albert_jax.train", "--config=experiments/tiny.py", "--workdir=w", "more"),
      "error: unexpected arguments ['more']",
    ),
    (
      ("albert_jax.train", "--config=experiments/tiny.py", "--workdir=w", "--nosuchflag"),
      "error: Unknown command line flag 'nosuchflag'",
    ),
    (
      ("albert_jax.summary", "--config=experiments/base.py:large"),
      "error: --config=experiments/base.py:large: this config file takes no argument after ':'",
    ),
    (("albert_jax.predict", "--checkpoint=no/such/dir", "--text=[MASK]"), "error: no/such/dir is not a directory"),
    (("albert_jax.export", "--checkpoint=no/such/dir", "--output=out"), "error: no/such/dir is not a directory"),
    (
      ("albert_jax.compile_check", "--config=experiments/base.py", "--topology=v9:1x1"),
      "error: Unknown TPU topology 'v9:1x1'",
    ),
  ],
)
def test_a_mistake_on_the_command_line_is_one_error_line(args, message):
  result = run(*args)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr[-3000:]
  assert result.stderr.startswith(message), result.stderr[-3000:]


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
  """A tiny random model with a vocabulary trained on the built-in corpus: enough for `predict` to run."""
  root = tmp_path_factory.mktemp("cli")
  builtin_corpus.write_vocab(root / "spiece.model", 200)
  config = model_lib.AlbertConfig(
    vocab_size=200,
    embedding_size=8,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=32,
  )
  params = jax.jit(model_lib.AlbertForPreTraining(config).init)(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))
  return checkpoints.save(
    root / "checkpoint", config, jax.tree.map(np.asarray, nn.unbox(params)), root / "spiece.model"
  )


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu is not installed (requirements-tpu.txt)")
def test_two_commands_at_once_on_a_cpu_machine_with_libtpu_installed_say_nothing_of_it(small_checkpoint):
  command = [
    sys.executable,
    "-m",
    "albert_jax.predict",
    f"--checkpoint={small_checkpoint}",
    "--text=the capital of [MASK] is delhi .",
  ]
  procs = [
    subprocess.Popen(command, cwd=REPO, env=user_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(2)
  ]
  for proc in procs:
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert "[MASK] 1:" in stdout
    assert not [line for line in stderr.splitlines() if any(s in line for s in LIBTPU_LINES)], stderr[-3000:]
    assert "orbax" not in stderr and "I1" not in stderr[:2], stderr[-3000:]  # no library INFO chatter either

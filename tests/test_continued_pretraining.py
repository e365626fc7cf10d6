"""Continued pretraining (`--config.init_checkpoint=SRC`): a run starts where SRC ended, from any format.

The runs are `albert_jax.train` subprocesses on the tiny test config (tests/cli_helpers.py), sharing one
source run and its Hugging Face export.
"""

import json
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers

from albert_jax import config_lib
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.checkpoints import export
from albert_jax.data import pipeline
from tests import cli_helpers as cli
from tests import hf_reference
from tests.test_faults import _complete, _params_at
from tests.test_tf_checkpoint import _WRITER, _original_config, _tf_variables

EVAL = ("--config.eval_batches=2",)
STEPS = 30  # of the continued runs: a kill after the first interval checkpoint lands mid-run
CONTINUED = (f"--config.eval_every_steps={STEPS}", "--config.checkpoint_every_steps=4", "--config.keep_checkpoints=20")


def _rows(workdir) -> list[dict]:
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _eval_at(workdir, step) -> dict:
  return next(r for r in _rows(workdir) if r["step"] == step and "eval/mlm_loss" in r)


def _run(cmd, log):
  proc = cli.spawn(cmd, log)
  assert cli.finish([proc], timeout=300) == [0], cli.tail(proc)
  return proc.log.read_text()


@pytest.fixture(scope="module")
def source(tmp_path_factory, shared_data_dir):
  """A tiny run of 4 steps that evaluates at its end, and its Hugging Face export."""
  root = tmp_path_factory.mktemp("continued")
  cmd = cli.train_command(root / "first", shared_data_dir, 4, "--config.eval_every_steps=4", *EVAL)
  _run(cmd, root / "first.log")
  return root / "first", export.export(root / "first", root / "hf")


@pytest.fixture(scope="module")
def continued(source, shared_data_dir, tmp_path_factory):
  """A run started from the export, uninterrupted: (workdir, command, its log)."""
  workdir = tmp_path_factory.mktemp("second") / "run"
  cmd = cli.train_command(workdir, shared_data_dir, STEPS, f"--config.init_checkpoint={source[1]}", *EVAL, *CONTINUED)
  return workdir, cmd, _run(cmd, workdir.parent / "run.log")


def test_a_run_from_its_hugging_face_export_starts_where_it_ended(source, continued):
  first, _ = source
  workdir, _, log = continued
  assert "Continuing pretraining from" in log
  start, end = _eval_at(workdir, 0), _eval_at(first, 4)
  for key in ("eval/mlm_loss", "eval/mlm_accuracy", "eval/sop_loss", "eval/sop_accuracy", "eval/nsp_accuracy"):
    assert abs(start[key] - end[key]) < 1e-5, (key, start[key], end[key])
  loaded, trained = jax.tree.leaves(_params_at(workdir, 0)), jax.tree.leaves(cli.final_params(first)["params"])
  assert len(loaded) == len(trained)
  for a, b in zip(loaded, trained):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
  # A new optimizer from step 0: the first logged step is 1, its learning rate the warmup's start.
  assert min(r["step"] for r in _rows(workdir) if "train/loss" in r) == 1


def test_a_masked_lm_directory_gets_a_fresh_sop_head_named_in_the_log(source, shared_data_dir, tmp_path):
  mlm_dir = tmp_path / "mlm"
  transformers.AlbertForMaskedLM.from_pretrained(source[1]).save_pretrained(mlm_dir)
  shutil.copyfile(source[1] / "spiece.model", mlm_dir / "spiece.model")
  cmd = cli.train_command(tmp_path / "run", shared_data_dir, 2, f"--config.init_checkpoint={mlm_dir}")
  log = _run(cmd, tmp_path / "run.log")
  fresh = next(line for line in log.splitlines() if "initialised fresh" in line)
  assert "sop_classifier/classifier" in fresh and "albert/pooler" in fresh, fresh
  assert "predictions" not in fresh.split("has no", 1)[1], fresh
  start = _params_at(tmp_path / "run", 0)
  np.testing.assert_array_equal(
    start["albert"]["embeddings"]["word_embeddings"]["embedding"],
    cli.final_params(source[0])["params"]["albert"]["embeddings"]["word_embeddings"]["embedding"],
  )


def test_a_model_field_on_the_command_line_must_agree_with_the_checkpoint(source, shared_data_dir, tmp_path):
  cmd = cli.train_command(
    tmp_path / "run", shared_data_dir, 2, f"--config.init_checkpoint={source[1]}", "--config.model.hidden_size=64"
  )
  result = cli.run(cmd)
  assert result.returncode == 1
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith("error: --config.model.hidden_size=64 disagrees with") and "hidden_size is 32" in message


def test_killed_after_its_first_checkpoint_it_resumes_its_workdir_without_the_source(continued, tmp_path):
  straight, cmd, _ = continued
  source = tmp_path / "hf"
  shutil.copytree(next(a.split("=", 1)[1] for a in cmd if a.startswith("--config.init_checkpoint=")), source)
  workdir = tmp_path / "run"
  cmd = [f"--workdir={workdir}" if a.startswith("--workdir=") else a for a in cmd]
  cmd = [f"--config.init_checkpoint={source}" if a.startswith("--config.init_checkpoint=") else a for a in cmd]
  proc = cli.spawn(cmd, tmp_path / "start.log")
  cli.wait_for(lambda: any(step >= 4 for step in _complete(workdir)), proc)
  proc.send_signal(signal.SIGKILL)
  assert cli.finish([proc], timeout=60) == [-signal.SIGKILL]
  shutil.move(source, tmp_path / "gone")  # a restart that read SRC again would fail
  log = _run(cmd, tmp_path / "restart.log")
  assert "init_checkpoint is not read again" in log and "Continuing pretraining" not in log, log[-3000:]
  assert "Resumed from checkpoint at step" in log
  cli.assert_same_params(cli.final_params(workdir), cli.final_params(straight))


@pytest.fixture(scope="module")
def tf_release(tmp_path_factory, shared_data_dir):
  """An original TF checkpoint (the release's variable names, optimizer slots, albert_config.json) of a random
  Hugging Face model whose vocabulary is the shared one; returns (prefix, the HF model)."""
  root = tmp_path_factory.mktemp("tf_release")
  vocab_size = tokenizer_lib.Tokenizer(shared_data_dir / "spiece.model").vocab_size
  config = {**_original_config(), "vocab_size": vocab_size}
  hf_config = {k: config[k] for k in ("embedding_size", "hidden_size", "num_hidden_layers", "num_hidden_groups")}
  model = hf_reference.random_hf_model(
    root / "hf", vocab_size=vocab_size, num_attention_heads=2, intermediate_size=24, hidden_act="gelu_new", **hf_config
  )
  variables = _tf_variables({k: v.numpy() for k, v in model.state_dict().items()}, config["num_hidden_groups"])
  prefix = root / "albert_base" / "model.ckpt-best"
  prefix.parent.mkdir()
  np.savez(root / "arrays.npz", **variables)
  (prefix.parent / "albert_config.json").write_text(json.dumps(config))
  result = subprocess.run([sys.executable, "-c", _WRITER, str(root / "arrays.npz"), str(prefix)], capture_output=True)
  assert result.returncode == 0, result.stderr[-3000:]
  return prefix, model


def _torch_gradient_norm(model, batch) -> float:
  """The global gradient norm of Hugging Face's pretraining loss (MLM mean over the masked tokens plus SOP mean:
  ALBERT's) on one of albert_jax's batches."""
  labels = np.full_like(batch["input_ids"], -100)
  for row, (positions, ids, weights) in enumerate(
    zip(batch["masked_lm_positions"], batch["masked_lm_ids"], batch["masked_lm_weights"])
  ):
    labels[row, positions[weights > 0]] = ids[weights > 0]
  as_long = lambda x: torch.tensor(np.asarray(x), dtype=torch.long)
  model.zero_grad()
  loss = model(
    input_ids=as_long(batch["input_ids"]),
    attention_mask=as_long(batch["input_mask"]),
    token_type_ids=as_long(batch["token_type_ids"]),
    labels=as_long(labels),
    sentence_order_label=as_long(batch["sentence_order_label"]),
  ).loss
  loss.backward()
  return float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in model.parameters() if p.grad is not None)))


@pytest.mark.skipif(
  __import__("importlib").util.find_spec("tensorflow") is None, reason="needs TensorFlow to write checkpoints"
)
def test_a_tf_release_checkpoint_trains_from_its_weights(tf_release, shared_data_dir, tmp_path):
  prefix, model = tf_release
  not_model = [
    f for f in cli.train_command(tmp_path / "run", shared_data_dir, 2) if not f.startswith("--config.model.")
  ]
  log = _run([*not_model, f"--config.init_checkpoint={prefix}"], tmp_path / "run.log")
  assert "initialised fresh" not in log  # the release holds every head
  first_step = next(r for r in _rows(tmp_path / "run") if r["step"] == 1 and "train/grad_norm" in r)

  # The run's first batch, from the same stream.
  config = config_lib.load_file(cli.REPO / "experiments" / "tiny.py")
  config.data.update(max_seq_length=32, max_predictions_per_seq=5, read_threads=1, data_dir=str(shared_data_dir))
  tokenizer = tokenizer_lib.Tokenizer(tmp_path / "run" / "spiece.model")
  batch = next(pipeline.make_process_iterator(config.data, tokenizer, 8, config.seed, "train"))
  # The first step's gradient is the gradient at the release's weights (PyTorch's, on the same batch), not at a
  # random initialisation's.
  expected = _torch_gradient_norm(model, batch)
  assert abs(first_step["train/grad_norm"] - expected) < 1e-4 * expected, (first_step["train/grad_norm"], expected)
  torch.manual_seed(1)
  other = transformers.AlbertForPreTraining(model.config).eval()
  assert abs(_torch_gradient_norm(other, batch) - expected) > 1e-2 * expected

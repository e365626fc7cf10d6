"""Pretraining: sharded steps agree across meshes, the CLI resumes exactly, faults stop cleanly."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax.linen import partitioning as nn_partitioning
from jax.sharding import PartitionSpec as P

from albert_jax import config_lib, sharding
from albert_jax import model as model_lib
from albert_jax.trainers import pretraining
from tests import cli_helpers as cli
from tests import fixtures


def _small_config(**mesh):
  config = config_lib.pretraining("base")
  config.model.update(**fixtures.SMALL_MODEL)
  config.data.max_seq_length = 16
  config.data.max_predictions_per_seq = 4
  config.update(batch_size=8, num_train_steps=5, warmup_steps=2, learning_rate=1e-2)
  config.mesh.update(mesh)
  return config


def _random_batches(config, n, seed=0):
  rng = np.random.RandomState(seed)
  B, T, Pn = config.batch_size, config.data.max_seq_length, config.data.max_predictions_per_seq
  for _ in range(n):
    mask = (np.arange(T)[None] < rng.randint(T // 2, T + 1, (B, 1))).astype(np.int32)
    yield {
      "input_ids": rng.randint(5, config.model.vocab_size, (B, T)).astype(np.int32) * mask,
      "input_mask": mask,
      "token_type_ids": (np.arange(T)[None] >= T // 2).astype(np.int32).repeat(B, 0),
      "masked_lm_positions": rng.randint(1, T // 2, (B, Pn)).astype(np.int32),
      "masked_lm_ids": rng.randint(5, config.model.vocab_size, (B, Pn)).astype(np.int32),
      "masked_lm_weights": (rng.rand(B, Pn) < 0.8).astype(np.float32),
      "sentence_order_label": rng.randint(0, 2, (B,)).astype(np.int32),
    }


def _run_steps(config, devices):
  mesh = sharding.create_mesh(config.mesh, devices=devices)
  rules = sharding.axis_rules(config)
  setup = pretraining.build(config, config_lib.model_config(config), mesh, rules)
  losses = []
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    state = setup.init(jax.random.PRNGKey(0))
    for batch in _random_batches(config, config.num_train_steps):
      state, metrics = setup.train_step(state, sharding.global_batch(batch, mesh), jax.random.PRNGKey(1))
      losses.append(pretraining.summarize(jax.device_get(metrics))["loss"])
  return np.array(losses), state


@pytest.fixture(scope="module")
def single_device_losses():
  return _run_steps(_small_config(data=1), jax.devices()[:1])[0]


@pytest.mark.parametrize(
  "mesh, expected_ffn_spec, expected_embedding_spec",
  [
    (dict(data=8), P(), P()),
    (dict(fsdp=4, data=2), P("fsdp", None), P(None, "fsdp")),
    (dict(tensor=2, data=4), P(None, "tensor"), P("tensor", None)),
  ],
)
def test_sharded_steps_match_one_device(mesh, expected_ffn_spec, expected_embedding_spec, single_device_losses):
  config = _small_config(**mesh)
  losses, state = _run_steps(config, jax.devices())
  assert len(jax.devices()) == 8
  np.testing.assert_allclose(losses, single_device_losses, rtol=1e-5)
  assert losses[-1] < losses[0]

  # Parameters and LAMB moments are really laid out as the rules say.
  def spec(x):  # the mesh axes that really split x (axes of size 1 dropped)
    used = [a if a and x.sharding.mesh.shape[a] > 1 else None for a in x.sharding.spec]
    return P(*used) if any(used) else P()

  ffn = state.params["albert"]["encoder"]["layer_group"]["layer_0_ffn"]["ffn"]["kernel"]
  embedding = state.params["albert"]["embeddings"]["word_embeddings"]["embedding"]
  assert spec(ffn) == expected_ffn_spec
  assert spec(embedding) == expected_embedding_spec
  divisor = {"fsdp": mesh.get("fsdp", 1), "tensor": mesh.get("tensor", 1), None: 1}
  expected_shard = tuple(d // divisor[a] for d, a in zip(ffn.shape, tuple(expected_ffn_spec) + (None, None)))
  assert ffn.addressable_shards[0].data.shape == expected_shard
  moments = [x for x in jax.tree.leaves(state.opt_state) if getattr(x, "shape", None) == ffn.shape]
  assert moments and all(spec(m) == expected_ffn_spec for m in moments)


def test_without_a_sentence_objective_the_sentence_head_gets_no_gradient():
  """sentence_objective='none': one real training step (no weight decay, so a zero gradient is a zero update)
  moves the MLM head and leaves the pooler and the SOP classifier bitwise where they were."""
  config = _small_config(data=1)
  config.update(sentence_objective="none", weight_decay=0.0, warmup_steps=0)
  mesh, rules = sharding.create_mesh(config.mesh, devices=jax.devices()[:1]), sharding.axis_rules(config)
  setup = pretraining.build(config, config_lib.model_config(config), mesh, rules)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    state = setup.init(jax.random.PRNGKey(0))
    before = jax.device_get(state.params)
    batch = sharding.global_batch(next(_random_batches(config, 1)), mesh)
    state, metrics = setup.train_step(state, batch, jax.random.PRNGKey(1))
  after = jax.device_get(state.params)
  moved = {
    name: any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(tree(before)), jax.tree.leaves(tree(after))))
    for name, tree in {
      "sop_classifier": lambda p: p["sop_classifier"],
      "pooler": lambda p: p["albert"]["pooler"],
      "predictions": lambda p: p["predictions"],
    }.items()
  }
  assert moved == {"sop_classifier": False, "pooler": False, "predictions": True}
  assert "sop_loss_sum" not in metrics and float(metrics["grad_norm"]) > 0


def test_batch_not_divisible_by_data_parallel_size(tmp_path):
  config = _small_config(data=8)
  config.batch_size = 12
  with pytest.raises(pretraining.TrainingError, match="batch_size=12 is not divisible by the data-parallel size 8"):
    pretraining.train_and_evaluate(config, str(tmp_path))


def test_workdir_of_another_model_names_the_field(tmp_path):
  (tmp_path / "checkpoints").mkdir()
  other = model_lib.AlbertConfig(hidden_size=64, num_attention_heads=4)
  (tmp_path / "config.json").write_text(json.dumps({"format": "albert_jax", "model": other.to_dict()}))
  with pytest.raises(pretraining.TrainingError, match="hidden_size: checkpoint 64 vs config 32"):
    pretraining._check_workdir_model(tmp_path, other.replace(hidden_size=32))


# ---------------------------------------------------------------------------
# The command line, in subprocesses: NaN, bad flags, two processes. (Kills, preemption, damaged
# checkpoints and full disks during one run: tests/test_faults.py.)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(shared_data_dir, tmp_path):
  # A learning rate that really diverges: step 2 (the first after warmup's 0) throws the weights to ~1e30, and
  # the forward pass of step 3 overflows.
  workdir = tmp_path / "nan"
  result = cli.run(
    cli.train_command(workdir, shared_data_dir, 8, "--config.checkpoint_every_steps=2", "--config.learning_rate=1e30")
  )
  assert result.returncode != 0
  assert "Non-finite loss or gradient at step 3" in result.stderr, result.stderr[-3000:]
  assert "last good checkpoint is step 2" in result.stderr
  assert "Traceback" not in result.stderr
  from albert_jax.checkpoints import native

  assert native.training_steps(workdir)[-1] == 2


def test_unknown_config_key_is_refused(shared_data_dir, tmp_path):
  result = cli.run(cli.train_command(tmp_path, shared_data_dir, 5, "--config.data.max_seq_len=64"))
  assert result.returncode != 0
  assert "max_seq_len" in result.stderr


def test_two_processes_train_checkpoint_resume_and_match_one_process(shared_data_dir, tmp_path):
  """A pair that loses a process stops on its own; started again, it resumes and matches one process.

  The pair's mesh interleaves its processes, as a TPU pod's does (issue 24): each reads the data shards whose
  rows its devices hold, and with dropout a row fed elsewhere would draw another row's mask.
  """
  steps = 6
  common = [
    "--config.checkpoint_every_steps=3",
    "--config.data.num_shards=8",
    "--config.mesh.data=-1",
    "--config.model.hidden_dropout_prob=0.1",
  ]
  single = tmp_path / "single"
  result = cli.run(cli.train_command(single, shared_data_dir, steps, *common), devices=8)
  assert result.returncode == 0, result.stderr[-3000:]

  pair = tmp_path / "pair"
  port = 20000 + os.getpid() % 20000

  def launch(attempt):
    cmds = [
      cli.train_command(
        pair,
        shared_data_dir,
        steps,
        *common,
        f"--config.distributed.coordinator_address=127.0.0.1:{port + attempt}",
        "--config.distributed.num_processes=2",
        f"--config.distributed.process_id={i}",
        "--config.distributed.heartbeat_timeout_seconds=20",
        "--config.debug.interleave_processes=true",
      )
      for i in range(2)
    ]
    return [cli.spawn(cmd, tmp_path / f"stderr{i}_{attempt}.log", devices=4) for i, cmd in enumerate(cmds)]

  # Process 1 dies after the first checkpoint. Process 0 exits on its own with a clear error: ours when its
  # next collective fails, or JAX's when process 1 misses its heartbeats (20 s); never a hang.
  procs = launch(0)
  cli.wait_for(lambda: (pair / "checkpoints" / "3" / "state").is_dir(), procs[0])
  procs[1].kill()
  assert cli.finish(procs, timeout=90)[0] != 0
  log = procs[0].log.read_text()
  assert (
    "error: lost contact with another process of this 2-process run" in log
    or "another task died" in log
    and "stopped sending heartbeats" in log
  ), log[-3000:]

  procs = launch(1)
  assert cli.finish(procs, timeout=300) == [0, 0], cli.tail(procs[0]) + cli.tail(procs[1])
  assert all("Resumed from checkpoint at step 3." in p.log.read_text() for p in procs)
  single_losses, pair_losses = cli.losses(single), cli.losses(pair)
  assert sorted(pair_losses) == list(range(1, steps + 1))
  for step in range(1, steps + 1):
    assert pair_losses[step] == pytest.approx(single_losses[step], rel=1e-5)

  # The pair's checkpoints hold one data position per process: one process cannot resume them, and says why
  # (not that they are damaged; nothing is moved aside).
  result = cli.run(cli.train_command(pair, shared_data_dir, steps + 3, *common), devices=8)
  last = result.stderr.strip().splitlines()[-1]
  assert result.returncode != 0 and "written by 2 processes, and this run has 1" in last, result.stderr[-3000:]
  assert last.startswith("error: ") and "Run again with 2 processes" in last
  assert not [p.name for p in (pair / "checkpoints").iterdir() if "damaged" in p.name]


def test_metrics_reach_tensorboard_without_importing_torch(tmp_path):
  """The event files hold what metrics.jsonl holds; tensorboardX loads without torch, and torch still imports."""
  script = f"""
import sys
from albert_jax.trainers import metric_writer
writer = metric_writer.MetricWriter(__import__("pathlib").Path({str(tmp_path)!r}))
for step in (1, 2):
  writer.write(step, "train", {{"loss": 7.5 / step}})
writer.close()
assert "torch" not in sys.modules, "tensorboardX pulled in torch"
import torch
print(torch.ones(1).item())
"""
  result = subprocess.run(
    [sys.executable, "-c", script], cwd=cli.REPO, env=cli.env(), capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0 and result.stdout.strip() == "1.0", result.stderr[-3000:]
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  events = [
    (e.step, v.tag, v.simple_value)
    for path in (tmp_path / "tensorboard").iterdir()
    for e in tf.compat.v1.train.summary_iterator(str(path))
    for v in e.summary.value
  ]
  assert events == [(1, "train/loss", 7.5), (2, "train/loss", 3.75)]
  assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
    {"step": 1, "train/loss": 7.5},
    {"step": 2, "train/loss": 3.75},
  ]


def test_workdir_config_is_replaced_whole_or_not_at_all(tmp_path):
  """Another process resuming reads config.json while process 0 rewrites it: it must never see half a file."""
  from albert_jax import storage  # pylint: disable=g-import-not-at-top

  path = tmp_path / "config.json"
  storage.write_text_atomic(path, '{"model": {"hidden_size": 32}}')
  with pytest.raises(UnicodeEncodeError):  # a write that fails half way, as a kill or a full disk would
    storage.write_text_atomic(path, '{"model": ' + "x" * 100_000 + "\ud800}")
  assert json.loads(path.read_text()) == {"model": {"hidden_size": 32}}
  assert [p.name for p in tmp_path.iterdir()] == ["config.json"]

"""Mesh construction, logical axis rules and sharded arrays on 8 CPU devices."""

import os
import subprocess
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from albert_jax import config_lib, optim, sharding
from tests.conftest import REPO


def mesh_config(**sizes):
  return types.SimpleNamespace(**{"data": 1, "fsdp": 1, "tensor": 1, **sizes})


@pytest.fixture(scope="module", autouse=True)
def eight_devices():
  if jax.device_count() != 8:
    pytest.skip("needs the 8 simulated CPU devices set up by conftest.py")


@pytest.mark.parametrize(
  "sizes, shape",
  [
    (dict(data=8), (8, 1, 1)),
    (dict(data=2, fsdp=4), (2, 4, 1)),
    (dict(data=4, tensor=2), (4, 1, 2)),
    (dict(data=-1, tensor=2), (4, 1, 2)),
    (dict(data=1, fsdp=-1), (1, 8, 1)),
    (dict(data=2, fsdp=2, tensor=-1), (2, 2, 2)),
  ],
)
def test_mesh_shape_from_config(sizes, shape):
  mesh = sharding.create_mesh(mesh_config(**sizes))
  assert mesh.axis_names == ("data", "fsdp", "tensor")
  assert tuple(mesh.shape.values()) == shape
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


@pytest.mark.parametrize(
  "sizes, message",
  [
    (dict(data=4), "needs 4 devices but 8 are present"),
    (dict(data=16), "needs 16 devices"),
    (dict(data=-1, fsdp=3), "not divisible by 3"),
    (dict(data=-1, fsdp=-1), "at most one -1"),
    (dict(data=0), "must be positive"),
  ],
)
def test_mesh_errors_say_what_to_change(sizes, message):
  with pytest.raises(ValueError, match=message):
    sharding.create_mesh(mesh_config(**sizes))


def test_mesh_on_a_subset_of_devices():
  mesh = sharding.create_mesh(mesh_config(data=-1), devices=jax.devices()[:2])
  assert mesh.shape["data"] == 2


# The logical names of ALBERT's arrays -> mesh axes under DEFAULT_RULES.
EXPECTED_SPECS = {
  ("vocab", "embed"): P("tensor", "fsdp"),  # word embeddings
  (None, "embed"): P(None, "fsdp"),  # position / type
  ("embed", "hidden"): P(None, "fsdp"),  # E -> H projection
  ("hidden", "embed"): P("fsdp", None),  # MLM dense
  ("hidden", "heads", "kv"): P("fsdp", "tensor", None),
  ("heads", "kv", "hidden"): P("tensor", None, "fsdp"),
  ("hidden", "heads"): P("fsdp", "tensor"),
  ("hidden", "mlp"): P("fsdp", "tensor"),
  ("mlp", "hidden"): P("tensor", "fsdp"),
  ("layers", "hidden", "mlp"): P(None, "fsdp", "tensor"),
  ("hidden",): P("fsdp"),
  ("mlp",): P("tensor"),
  ("vocab",): P("tensor"),
  ("batch", "length", "act_hidden"): P(("data", "fsdp"), None, "tensor"),
  ("batch", "length"): P(("data", "fsdp"), None),
}


def test_default_rules_shard_big_matrices_and_never_reuse_a_mesh_axis():
  for names, expected in EXPECTED_SPECS.items():
    spec = nn.logical_to_mesh_axes(names, sharding.DEFAULT_RULES)
    assert spec == expected, names
    used = [a for axes in spec if axes for a in ((axes,) if isinstance(axes, str) else axes)]
    assert len(used) == len(set(used)), names


def test_config_rules_override_the_default():
  config = types.SimpleNamespace(logical_axis_rules=[["batch", ["data"]], ["mlp", "tensor"]])
  assert sharding.axis_rules(config) == (("batch", ("data",)), ("mlp", "tensor"))
  assert sharding.axis_rules(config_lib.pretraining()) == sharding.DEFAULT_RULES


def test_logical_axis_rules_can_be_set_on_the_command_line():
  rules = "(('batch', ('data', 'fsdp')), ('vocab', 'fsdp'))"
  script = (
    "from absl import app; from ml_collections import config_flags; from albert_jax import sharding; "
    "c = config_flags.DEFINE_config_file('config', lock_config=True); "
    "app.run(lambda argv: print(sharding.axis_rules(c.value)))"
  )
  result = subprocess.run(
    [sys.executable, "-c", script, "--config=experiments/tiny.py", f"--config.logical_axis_rules={rules}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    env=dict(os.environ, PYTHONPATH=str(REPO)),
    timeout=120,
  )
  assert result.stdout.strip() == rules, result.stderr[-2000:]


class Tiny(nn.Module):
  """Boxed params with the model's logical names (and one odd size)."""

  @nn.compact
  def __call__(self):
    init = lambda names: nn.with_logical_partitioning(nn.initializers.normal(0.02), names)
    return {
      "word": self.param("word", init(("vocab", "embed")), (32, 8)),
      "ffn": self.param("ffn", init(("hidden", "mlp")), (16, 64)),
      "stacked": self.param("stacked", init(("layers", "hidden", "mlp")), (3, 16, 64)),
      "scale": self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("hidden",)), (16,)),
      "odd": self.param("odd", init(("hidden", "mlp")), (6, 64)),
    }


@pytest.mark.parametrize(
  "sizes, expected",
  [
    (
      dict(data=2, fsdp=4),
      {
        "word": P("tensor", "fsdp"),
        "ffn": P("fsdp", "tensor"),
        "stacked": P(None, "fsdp", "tensor"),
        "scale": P("fsdp"),
        "odd": P(None, "tensor"),
      },
    ),  # 6 rows do not split 4 ways
    (
      dict(data=4, tensor=2),
      {
        "word": P("tensor", "fsdp"),
        "ffn": P("fsdp", "tensor"),
        "stacked": P(None, "fsdp", "tensor"),
        "scale": P("fsdp"),
        "odd": P("fsdp", "tensor"),
      },
    ),
  ],
)
def test_init_under_jit_is_sharded_as_the_rules_say(sizes, expected):
  mesh = sharding.create_mesh(mesh_config(**sizes))
  model = Tiny()
  init = lambda rng: model.init(rng)
  abstract = jax.eval_shape(init, jax.random.key(0))
  shardings = sharding.logical_shardings(abstract, mesh)
  specs = jax.tree.map(lambda s: s.spec, shardings["params"])
  assert specs == expected
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
    params = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
  params = nn.unbox(params)["params"]
  for name, spec in expected.items():
    array = params[name]
    assert array.sharding.spec == spec, name
    shard = array.addressable_shards[0].data.shape
    splits = [
      1 if axes is None else np.prod([mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes)])
      for axes in tuple(spec) + (None,) * (array.ndim - len(spec))
    ]
    assert shard == tuple(d // s for d, s in zip(array.shape, splits)), name
  assert params["ffn"].addressable_shards[0].data.size < params["ffn"].size


def test_optimizer_state_inherits_parameter_shardings():
  mesh = sharding.create_mesh(mesh_config(data=2, fsdp=4))
  config = config_lib.pretraining()
  config.update(learning_rate=1e-3, warmup_steps=0, num_train_steps=10)
  tx, _ = optim.make_optimizer(config)
  init = lambda rng: (lambda p: (p, tx.init(p)))(Tiny().init(rng))
  abstract = jax.eval_shape(init, jax.random.key(0))
  shardings = sharding.logical_shardings(abstract, mesh)
  with jax.set_mesh(mesh):
    params, opt_state = jax.jit(init, out_shardings=shardings)(jax.random.key(0))
  params, opt_state = nn.unbox((params, opt_state))
  adam = opt_state[1]
  assert adam.mu["params"]["ffn"].sharding.spec == P("fsdp", "tensor")
  assert adam.nu["params"]["word"].sharding.spec == P("tensor", "fsdp")
  assert adam.count.sharding.spec == P()
  assert params["params"]["ffn"].sharding.spec == P("fsdp", "tensor")


def test_global_batch_is_split_over_data_and_fsdp():
  mesh = sharding.create_mesh(mesh_config(data=2, fsdp=2, tensor=2))
  local = {"input_ids": np.arange(8 * 5).reshape(8, 5), "label": np.arange(8)}
  batch = sharding.global_batch(local, mesh)
  assert sharding.data_parallel_size(mesh) == 4
  assert batch["input_ids"].sharding.spec == P(("data", "fsdp"))
  assert batch["input_ids"].addressable_shards[0].data.shape == (2, 5)
  np.testing.assert_array_equal(batch["input_ids"], local["input_ids"])
  with pytest.raises(ValueError, match="not divisible by its 4"):
    sharding.global_batch({"x": np.zeros((6, 2))}, mesh)


class FakeDistributed:
  def __init__(self):
    self.calls = []

  def is_initialized(self):
    return False

  def initialize(self, **kwargs):
    self.calls.append(kwargs)


@pytest.fixture
def fake_distributed(monkeypatch):
  fake = FakeDistributed()
  monkeypatch.setattr(jax.distributed, "initialize", fake.initialize)
  monkeypatch.setattr(jax.distributed, "is_initialized", fake.is_initialized)
  for env in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(env, raising=False)
  return fake


def test_distributed_from_config_env_or_not_at_all(fake_distributed, monkeypatch):
  assert not sharding.maybe_initialize_distributed(types.SimpleNamespace())
  config = types.SimpleNamespace(
    distributed=types.SimpleNamespace(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=1)
  )
  assert sharding.maybe_initialize_distributed(config)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:99")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  assert sharding.maybe_initialize_distributed(None)
  auto = types.SimpleNamespace(distributed=types.SimpleNamespace(auto=True))
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
  assert sharding.maybe_initialize_distributed(auto)
  assert fake_distributed.calls == [
    dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=1),
    dict(coordinator_address="10.0.0.1:99", num_processes=4, process_id=3),
    {},
  ]


def test_distributed_needs_all_three_fields(fake_distributed):
  config = types.SimpleNamespace(distributed=types.SimpleNamespace(coordinator_address="127.0.0.1:1234"))
  with pytest.raises(ValueError, match="num_processes"):
    sharding.maybe_initialize_distributed(config)


def test_real_model_shardings_use_each_mesh_axis_once_and_split_big_arrays():
  from albert_jax import model  # pylint: disable=g-import-not-at-top

  mesh = sharding.create_mesh(mesh_config(data=2, fsdp=2, tensor=2))
  abstract = jax.eval_shape(
    model.AlbertForPreTraining(model.AlbertConfig.preset("base")).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32)
  )
  shardings = sharding.logical_shardings(abstract, mesh)
  for leaf, named in zip(jax.tree.leaves(nn.unbox(abstract)), jax.tree.leaves(shardings)):
    used = [a for axes in named.spec if axes for a in ((axes,) if isinstance(axes, str) else axes)]
    assert len(used) == len(set(used))
    if leaf.size >= 128 * 768:  # every matrix is split at least 2 ways
      assert used, leaf.shape

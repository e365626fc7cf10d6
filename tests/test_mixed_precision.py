"""Mixed precision: bfloat16 products and activations; float32 parameters, optimizer state, LayerNorm statistics,
softmax and losses. The pod experiments run it; CPU configs stay float32."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from albert_jax import config_lib, sharding
from albert_jax import model as model_lib
from albert_jax.trainers import pretraining
from tests.conftest import REPO

SMALL = dict(
  vocab_size=101, embedding_size=16, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48
)


def _batch(batch=2, length=8, predictions=3):
  rng = np.random.default_rng(0)
  return {
    "input_ids": rng.integers(5, 101, (batch, length)).astype(np.int32),
    "input_mask": np.ones((batch, length), np.int32),
    "token_type_ids": np.zeros((batch, length), np.int32),
    "masked_lm_positions": rng.integers(1, length, (batch, predictions)).astype(np.int32),
    "masked_lm_ids": rng.integers(5, 101, (batch, predictions)).astype(np.int32),
    "masked_lm_weights": np.ones((batch, predictions), np.float32),
    "sentence_order_label": np.zeros((batch,), np.int32),
  }


def _input_dtypes(jaxpr, found=None):
  """primitive -> Counter of its operands' dtypes, through every nested jaxpr (scan, remat, custom rules)."""
  found = collections.defaultdict(collections.Counter) if found is None else found
  for eqn in jaxpr.eqns:
    found[eqn.primitive.name][tuple(str(v.aval.dtype) for v in eqn.invars if hasattr(v, "aval"))] += 1
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      _input_dtypes(sub, found)
  return found


def test_bfloat16_multiplies_in_bfloat16_and_normalises_and_scores_in_float32():
  config = model_lib.AlbertConfig(**SMALL, dtype="bfloat16")
  model, batch = model_lib.AlbertForPreTraining(config), _batch()
  params = model.init(jax.random.PRNGKey(0), batch["input_ids"])["params"]
  loss = lambda p: pretraining.total_loss(pretraining.pretraining_losses(pretraining._apply(model, p, batch), batch))
  grads = jax.grad(loss)(params)
  found = _input_dtypes(jax.make_jaxpr(loss)(params).jaxpr)
  # Every matrix product of the forward pass (projections, attention, FFN, MLM decoder) takes bfloat16.
  assert set(found["dot_general"]) == {("bfloat16", "bfloat16")} and sum(found["dot_general"].values()) >= 20
  # The softmax (attention, both losses), the log-probabilities, LayerNorm's mean and variance (reduce_sum,
  # rsqrt) and the loss sums see float32 only.
  for primitive in ("exp", "log", "reduce_max", "rsqrt"):
    assert set(found[primitive]) == {("float32",)}, (primitive, found[primitive])
  assert set(found["reduce_sum"]) <= {("float32",), ("int32",)}
  assert loss(params).dtype == jnp.float32
  assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype("float32")}


def test_the_train_state_stays_float32_under_bfloat16():
  config = config_lib.pretraining("base")
  config.model.update(SMALL, dtype="bfloat16", max_position_embeddings=16)
  config.data.update(max_seq_length=8, max_predictions_per_seq=3)
  config.batch_size = 2
  mesh = sharding.create_mesh(config.mesh, jax.devices()[:1])
  setup = pretraining.build(config, config_lib.model_config(config), mesh, sharding.axis_rules(config))
  dtypes = {x.dtype for x in jax.tree.leaves((setup.abstract_state.params, setup.abstract_state.opt_state))}
  assert dtypes <= {jnp.dtype("float32"), jnp.dtype("int32")} and jnp.dtype("float32") in dtypes


@pytest.mark.parametrize("size", ["base", "large", "xlarge", "xxlarge"])
def test_pod_experiments_run_bfloat16_with_flash_attention(size):
  model = config_lib.load_file(REPO / "experiments" / f"{size}.py").model
  assert (model.dtype, model.attention, model.remat_policy) == (
    "bfloat16",
    "flash",
    config_lib.POD_REMAT_POLICIES[size],
  )


def test_cpu_configs_and_fine_tuning_stay_float32_with_xla_attention():
  configs = [
    config_lib.load_file(REPO / "experiments" / "tiny.py"),
    config_lib.load_file(REPO / "experiments" / "shared_text.py"),
    config_lib.pretraining("base"),
    config_lib.finetuning("sst2", "/nonexistent"),
  ]
  assert {(c.model.dtype, c.model.attention) for c in configs} == {("float32", "xla")}

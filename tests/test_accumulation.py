"""Gradient accumulation gives the full-batch update: exact sums, a dropout key per microbatch, one reduction.

Must-show: the full-batch step and `grad_accum_steps=4` give gradients equal to 1e-6 relative on a batch whose
microbatches hold different numbers of masked tokens, on one device and with the batch split over a data axis.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import partitioning as nn_partitioning

from albert_jax import config_lib, optim, sharding
from albert_jax import model as model_lib
from albert_jax.tools import compile_check, hlo_collectives
from albert_jax.trainers import core, pretraining
from tests import fixtures

BATCH, LENGTH, PREDICTIONS = 16, 16, 4


def _config(**model):
  config = config_lib.pretraining("base")
  config.model.update(dict(fixtures.SMALL_MODEL, **model))
  return config_lib.model_config(config)


def _batch(seed=0):
  """Microbatch i of 4 holds rows i, i+4, ...: row r has 1 + r % 4 masked tokens, so the four microbatches hold
  4, 8, 12 and 16 of them."""
  rng = np.random.RandomState(seed)
  lengths = rng.randint(LENGTH // 2, LENGTH + 1, (BATCH, 1))
  mask = (np.arange(LENGTH)[None] < lengths).astype(np.int32)
  weights = (np.arange(PREDICTIONS)[None] < (1 + np.arange(BATCH) % 4)[:, None]).astype(np.float32)
  return {
    "input_ids": rng.randint(5, 128, (BATCH, LENGTH)).astype(np.int32) * mask,
    "input_mask": mask,
    "token_type_ids": (np.arange(LENGTH)[None] >= LENGTH // 2).astype(np.int32).repeat(BATCH, 0),
    "masked_lm_positions": rng.randint(1, LENGTH // 2, (BATCH, PREDICTIONS)).astype(np.int32),
    "masked_lm_ids": rng.randint(5, 128, (BATCH, PREDICTIONS)).astype(np.int32),
    "masked_lm_weights": weights,
    "sentence_order_label": rng.randint(0, 2, (BATCH,)).astype(np.int32),
  }


def _loss_and_params(model_config):
  model = model_lib.AlbertForPreTraining(model_config)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, LENGTH), jnp.int32))["params"]
  apply = lambda p, b, rng: pretraining.pretraining_losses(
    model.apply({"params": p}, b["input_ids"], b["input_mask"], b["token_type_ids"], b["masked_lm_positions"]), b
  )
  return apply, params


def _gradients(model_config, batch, steps, mesh=None):
  apply, params = _loss_and_params(model_config)
  denominators, total = pretraining.denominators, pretraining.total_loss
  step = lambda p, b: core.loss_gradients(apply, total, denominators, p, b, jax.random.PRNGKey(1), steps)
  if mesh is None:
    return jax.jit(step)(params, batch)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(sharding.DEFAULT_RULES):
    return jax.jit(step)(params, sharding.global_batch(batch, mesh))


def _relative_error(a, b) -> float:
  """The largest error of any leaf relative to that leaf's largest entry. A leaf whose gradient is zero in exact
  arithmetic (the key bias: softmax ignores a constant added to all scores) holds only rounding noise, so it is
  measured against the whole gradient's largest entry instead."""
  largest = max(float(jnp.max(jnp.abs(y))) for y in jax.tree.leaves(b))

  def leaf_error(x, y):
    scale = float(jnp.max(jnp.abs(y)))
    return float(jnp.max(jnp.abs(x - y))) / (scale if scale > 1e-9 * largest else largest)

  return max(leaf_error(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.parametrize("data, fsdp", [(1, 1), (2, 1), (2, 2)])
def test_four_microbatches_give_the_full_batch_gradient_with_uneven_masked_tokens(data, fsdp):
  config, batch = _config(), _batch()
  mesh = sharding.create_mesh(type("Mesh", (), dict(data=data, fsdp=fsdp)), jax.devices()[: data * fsdp])
  full_sums, full = _gradients(config, batch, 1, mesh)
  sums, accumulated = _gradients(config, batch, 4, mesh)
  assert float(sums["mlm_count"]) == 40.0  # 4 + 8 + 12 + 16 masked tokens over the microbatches
  assert _relative_error(accumulated, full) < 1e-6
  assert _relative_error(sums, full_sums) < 1e-6


def test_the_mean_of_microbatch_means_is_not_the_full_batch_gradient():
  # What accumulation did before: each microbatch's loss divided by its own counts, the gradients averaged. On
  # this batch it is off by far more than the tolerance above, so the test above can tell the two apart.
  apply, params = _loss_and_params(_config())

  def grad_fn(p, micro, rng):
    grads, sums = jax.grad(
      lambda p: (pretraining.total_loss(apply(p, micro, rng)) / 4, apply(p, micro, rng)), has_aux=True
    )(p)
    return sums, grads

  _, mean_of_means = jax.jit(lambda p, b: optim.accumulate_gradients(grad_fn, p, b, jax.random.PRNGKey(1), 4))(
    params, _batch()
  )
  _, full = _gradients(_config(), _batch(), 1)
  assert _relative_error(mean_of_means, full) > 1e-2


def test_every_microbatch_draws_its_own_dropout_masks():
  # The batch's two microbatches are the same rows: with one key for both they would give the same loss.
  config = _config(hidden_dropout_prob=0.5)
  model = model_lib.AlbertForPreTraining(config)
  half = {k: v[: BATCH // 2] for k, v in _batch().items()}
  twice = {k: np.repeat(v, 2, axis=0) for k, v in half.items()}  # rows r, r: microbatch 0 = 1 = `half`
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, LENGTH), jnp.int32))["params"]

  def grad_fn(p, micro, rng):
    out = model.apply(
      {"params": p}, micro["input_ids"], micro["input_mask"], deterministic=False, rngs={"dropout": rng}
    )
    return {"loss": jnp.sum(out["sop_logits"] ** 2)}, p

  rng = jax.random.PRNGKey(7)
  sums, _ = jax.jit(lambda p, b: optim.accumulate_gradients(grad_fn, p, b, rng, 2))(params, twice)
  first, _ = grad_fn(params, half, jax.random.fold_in(rng, 0))
  second, _ = grad_fn(params, half, jax.random.fold_in(rng, 1))
  assert float(first["loss"]) != pytest.approx(float(second["loss"]), rel=1e-3)
  assert float(sums["loss"]) == pytest.approx(float(first["loss"] + second["loss"]), rel=1e-5)


@pytest.mark.parametrize("data, fsdp", [(4, 1), (1, 4)])
def test_the_gradient_is_reduced_over_the_batch_axes_once_per_step(data, fsdp):
  # On 4 CPU devices, compiled: with accumulation jit alone reduces every microbatch's gradient inside the loop
  # (all-reduces over data; over fsdp 24 all-reduces of 463 KB per step against a 54 KB gradient, and the
  # parameters gathered per microbatch). The shard_map over the batch axes gathers the parameters once, adds
  # each device's microbatches first and reduces once, outside any loop.
  config = config_lib.pretraining("base")
  config.model.update(**fixtures.SMALL_MODEL)
  config.data.update(max_seq_length=LENGTH, max_predictions_per_seq=PREDICTIONS)
  config.update(batch_size=BATCH, grad_accum_steps=4)
  config.mesh.update(data=data, fsdp=fsdp)
  mesh = sharding.create_mesh(config.mesh, jax.devices()[:4])
  rules = sharding.axis_rules(config)
  setup = pretraining.build(config, config_lib.model_config(config), mesh, rules)
  batch = compile_check.abstract_batch(config, mesh)
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    hlo = setup.train_step.lower(setup.abstract_state, batch, rng).compile().as_text()
  table = hlo_collectives.summarize(hlo_collectives.collectives(hlo))
  for kind in ("all-reduce", "reduce-scatter", "all-gather"):
    assert table["inside_loop"][kind]["per_step"] == 0, table
  reduced = sum(table["outside_loop"][kind]["bytes_per_step"] for kind in ("all-reduce", "reduce-scatter"))
  grad_bytes = 4 * sum(np.prod(x.shape) for x in jax.tree.leaves(setup.abstract_state.params))
  assert grad_bytes <= reduced < 1.1 * grad_bytes

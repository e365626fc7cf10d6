"""Flash attention against the XLA path: the Pallas TPU kernel run in interpret mode on this CPU, float32.

Must-show: the two agree to 1e-5, forward and gradients, with padding masks, with fewer queries than keys (the
last layer's gathered positions), inside the model under remat and `nn.scan`, and sharded over a mesh.
"""

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import partitioning as nn_partitioning

from albert_jax import attention as attention_lib
from albert_jax import model as model_lib
from albert_jax import sharding

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def _qkv(batch, length, heads, head_dim, queries=None, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 3)
  q = jax.random.normal(keys[0], (batch, queries or length, heads, head_dim), jnp.float32)
  k, v = (jax.random.normal(r, (batch, length, heads, head_dim), jnp.float32) for r in keys[1:])
  return q, k, v


def _mask(length, lengths):
  return (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)


def _forward_and_grads(implementation, q, k, v, mask, weights):
  """The output, and the gradients of a loss that reads every example with its weight."""

  def loss(q, k, v):
    out = attention_lib.attention(q, k, v, mask, implementation)
    return jnp.sum(jnp.sin(out) * weights[:, None, None, None])

  return attention_lib.attention(q, k, v, mask, implementation), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


@pytest.mark.parametrize(
  "length, queries, head_dim",
  [
    (128, None, 64),  # one key block
    (200, None, 32),  # keys and queries padded to 256 inside
    (256, 21, 64),  # 1 + 20 gathered queries: one query block of 21
  ],
)
def test_pallas_flash_equals_xla_forward_and_gradients_with_padding(length, queries, head_dim):
  q, k, v = _qkv(3, length, 2, head_dim, queries)
  mask = _mask(length, [length, length * 5 // 8, 0])  # full, padded, all padding
  weights = jnp.array([1.0, 1.0, 0.0])  # all padding: its output is checked, its gradient is not (see below)
  want, want_grads = _forward_and_grads("xla", q, k, v, mask, weights)
  with attention_lib.pallas_interpret_mode():
    got, got_grads = _forward_and_grads("flash", q, k, v, mask, weights)
  np.testing.assert_allclose(got, want, **TOLERANCE)
  for name, a, b in zip("qkv", got_grads, want_grads, strict=True):
    np.testing.assert_allclose(a, b, **TOLERANCE, err_msg=f"d{name}")
  # The padding is really masked: attending to every key gives other numbers.
  unmasked = attention_lib.attention(q, k, v, np.ones_like(mask), "xla")
  assert float(jnp.max(jnp.abs(unmasked[1] - want[1]))) > 0.1


def test_an_all_padding_example_attends_evenly_as_under_the_additive_mask():
  # Its gradient is the one place the two differ: the additive mask's is a float32 rounding artefact (scores
  # swamped by the most negative float still pass gradients), the kernel's is zero for queries and keys.
  q, k, v = _qkv(1, 128, 2, 32)
  with attention_lib.pallas_interpret_mode():
    got = attention_lib.attention(q, k, v, np.zeros((1, 128), np.int32), "flash")
  np.testing.assert_allclose(got, jnp.broadcast_to(v.mean(axis=1, keepdims=True), got.shape), **TOLERANCE)


SMALL = dict(
  vocab_size=101, embedding_size=16, hidden_size=64, num_hidden_layers=3, num_attention_heads=2, intermediate_size=96
)


def _model_loss_and_grads(config, params, batch):
  model = model_lib.AlbertForPreTraining(config)

  def loss(p):
    out = model.apply(p, batch["ids"], batch["mask"], masked_positions=batch["positions"])
    return jnp.sum(jnp.sin(out["mlm_logits"])) + jnp.sum(out["sop_logits"] ** 2)

  return jax.value_and_grad(loss)(params)


def _model_batch(length=40):
  rng = np.random.default_rng(0)
  return {
    "ids": rng.integers(5, SMALL["vocab_size"], (4, length)).astype(np.int32),
    "mask": _mask(length, [length, 31, 9, length - 1]),
    "positions": rng.integers(1, 9, (4, 5)).astype(np.int32),
  }


@pytest.mark.parametrize("remat_policy", ["save_all", "full"])
def test_model_with_flash_equals_xla_loss_and_gradients(remat_policy):
  batch = _model_batch()
  config = model_lib.AlbertConfig(**SMALL, remat_policy=remat_policy)
  params = model_lib.AlbertForPreTraining(config).init(jax.random.PRNGKey(0), batch["ids"])
  want, want_grads = _model_loss_and_grads(config, params, batch)
  with attention_lib.pallas_interpret_mode():
    got, got_grads = _model_loss_and_grads(config.replace(attention="flash"), params, batch)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(a, b, **TOLERANCE)


def test_flash_sharded_over_a_mesh_equals_xla():
  batch = _model_batch()
  config = model_lib.AlbertConfig(**SMALL)
  # Batch over fsdp, heads over tensor. (With data=2, fsdp=2, tensor=2 the gathered last layer of the XLA path
  # itself drifts 4e-4 from one device on XLA:CPU, at main too: not the kernel's doing, left for its own issue.)
  mesh = sharding.create_mesh(type("Mesh", (), dict(data=1, fsdp=4, tensor=2)), jax.devices()[:8])
  params = model_lib.AlbertForPreTraining(config).init(jax.random.PRNGKey(0), batch["ids"])
  want, want_grads = _model_loss_and_grads(config, params, batch)
  put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh))
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(sharding.DEFAULT_RULES), attention_lib.pallas_interpret_mode():
    flash = config.replace(attention="flash")
    lowered = jax.jit(_model_loss_and_grads, static_argnums=0).lower(flash, params, jax.tree.map(put, batch))
    assert "manual_computation" in lowered.as_text()  # a shard_map: the kernel runs per shard of batch and heads
    got, got_grads = lowered.compile()(params, jax.tree.map(put, batch))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(a, b, **TOLERANCE)


def _kernels_in_gradient(config) -> int:
  batch = _model_batch()
  params = model_lib.AlbertForPreTraining(config).init(jax.random.PRNGKey(0), batch["ids"])
  with attention_lib.pallas_interpret_mode():
    jaxpr = jax.make_jaxpr(lambda p: _model_loss_and_grads(config, p, batch))(params)
  return str(jaxpr).count("pallas_call[")


def test_named_residuals_spare_the_backward_pass_a_second_forward_kernel():
  # Per application (the scanned layer, the gathered last layer): forward, dk/dv and dq kernels. A policy that
  # saves the kernel's named residuals needs no more; "full" recomputes the scanned layer's forward kernel.
  flash = model_lib.AlbertConfig(**SMALL, attention="flash")
  assert _kernels_in_gradient(flash.replace(remat_policy="save_all")) == 6
  assert _kernels_in_gradient(flash.replace(remat_policy="dots")) == 6
  assert _kernels_in_gradient(flash.replace(remat_policy="full")) == 7


def test_flash_without_a_kernel_or_with_attention_dropout_is_the_xla_path():
  batch = _model_batch()
  config = model_lib.AlbertConfig(**SMALL, attention="flash", attention_probs_dropout_prob=0.1)
  model = model_lib.AlbertForPreTraining(config)
  params = model.init(jax.random.PRNGKey(0), batch["ids"])
  apply = lambda cfg, **kw: model_lib.AlbertForPreTraining(cfg).apply(params, batch["ids"], batch["mask"], **kw)
  # On a CPU outside interpret mode there is no fused kernel.
  assert "pallas_call" not in str(jax.make_jaxpr(lambda: apply(config))())
  with attention_lib.pallas_interpret_mode():
    # Evaluation (no dropout) runs the kernel; a training step with attention dropout runs the XLA path.
    assert "pallas_call" in str(jax.make_jaxpr(lambda: apply(config))())
    train = dict(deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
    np.testing.assert_array_equal(
      apply(config, **train)["mlm_logits"], apply(config.replace(attention="xla"), **train)["mlm_logits"]
    )


def test_remat_policies_keep_what_their_names_say():
  # The policies are built from the tags; a misspelt tag would silently keep nothing.
  config = model_lib.AlbertConfig(**SMALL)
  x = jnp.ones((2, 8, SMALL["hidden_size"]))
  mask = jnp.ones((2, 8), jnp.int32)
  layer = model_lib.AlbertLayerGroup(config)
  params = layer.init(jax.random.PRNGKey(0), x, mask, None)

  def saved(policy):
    fn = jax.checkpoint(lambda p, x: jnp.sum(layer.apply(p, x, mask, None)[0]), policy=policy)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
      jax.ad_checkpoint.print_saved_residuals(fn, params, x)
    tags = (*model_lib.ATTENTION_TAGS, model_lib.FFN_INNER, model_lib.FFN_OUTPUT)
    return {n for n in tags if f"named '{n}'" in printed.getvalue()}

  policies = model_lib.REMAT_POLICIES
  assert saved(policies["save_all"]) == {
    *model_lib.PROJECTIONS,
    "context",
    "attention_output",
    "ffn_inner",
    "ffn_output",
  }
  assert saved(policies["save_attention"]) == saved(policies["save_all"]) - {"ffn_inner"}
  assert saved(policies["save_qkv_ffn"]) == {*model_lib.PROJECTIONS, "ffn_inner", "ffn_output"}
  assert saved(policies["save_ffn"]) == {"ffn_inner", "ffn_output"}
  assert saved(policies["full"]) == set()

"""LAMB / AdamW against an independent NumPy transcription of the original.

The reference below follows google-research/albert `lamb_optimizer.py` and
`optimization.py` line by line: clip_by_global_norm(1.0) on all gradients,
m and v without bias correction, update = m / (sqrt(v) + eps) (+ wd * param
unless the name matches LayerNorm|layer_norm|bias), the trust ratio
||param|| / ||update|| when both are > 0 (same exclusions), and the learning
rate from `polynomial_decay` overridden during warmup.
"""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from albert_jax import config_lib, optim

EXCLUDE = ["LayerNorm", "layer_norm", "bias"]


def original_lr(step, init_lr, warmup, total):
  """create_optimizer's schedule: polynomial_decay, then the warmup override."""
  lr = init_lr * (1.0 - min(step, total) / total)
  if warmup and step < warmup:
    lr = init_lr * step / warmup
  return lr


def flatten(tree, prefix=""):
  """{'a': {'b': x}} -> {'a/b': x}, independent of optim.param_path."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}/{key}" if prefix else key
    if isinstance(value, dict):
      out.update(flatten(value, name))
    else:
      out[name] = value
  return out


def original_step(params, grads, m, v, lr, *, lamb, wd=0.01, b1=0.9, b2=0.999, eps=1e-6, clip=1.0):
  """One update of the TF original on flat {name: float64 array} dicts."""
  global_norm = np.sqrt(sum(np.sum(g**2) for g in grads.values()))
  scale = clip / max(global_norm, clip)
  new_params = {}
  for name, param in params.items():
    grad = grads[name] * scale
    m[name] = b1 * m[name] + (1 - b1) * grad
    v[name] = b2 * v[name] + (1 - b2) * grad**2
    update = m[name] / (np.sqrt(v[name]) + eps)
    excluded = any(re.search(r, name) for r in EXCLUDE)
    if not excluded:
      update = update + wd * param
    ratio = 1.0
    if lamb and not excluded:
      w_norm, g_norm = np.linalg.norm(param), np.linalg.norm(update)
      if w_norm > 0 and g_norm > 0:
        ratio = w_norm / g_norm
    new_params[name] = param - ratio * lr * update
  return new_params


def small_tree(rng):
  """A little ALBERT-shaped tree: kernels, embeddings, LayerNorm, biases."""
  n = lambda *shape: rng.normal(size=shape).astype(np.float32)
  return {
    "params": {
      "albert": {
        "embeddings": {
          "word_embeddings": {"embedding": n(11, 4)},
          "LayerNorm": {"scale": 1 + 0.1 * n(4), "bias": n(4)},
        },
        "encoder": {
          "layer": {
            "attention": {"query": {"kernel": n(4, 6), "bias": n(6)}},
            "ffn": {
              "kernel": np.zeros((6, 5), np.float32),  # ||w|| = 0
              "bias": np.zeros(5, np.float32),
            },
            "full_layer_layer_norm": {"scale": 1 + n(6), "bias": n(6)},
          }
        },
      },
      "predictions": {"dense": {"kernel": n(6, 4)}, "bias": n(11)},
    }
  }


def run_both(config, steps, seed=0, grad_scales=(3.0, 0.05, 1.0, 10.0, 0.2, 0.5, 2.0, 0.01)):
  rng = np.random.default_rng(seed)
  params = small_tree(rng)
  tx, schedule = optim.make_optimizer(config)
  state = tx.init(params)
  update = jax.jit(tx.update)
  ref = {k: v.astype(np.float64) for k, v in flatten(params).items()}
  m = {k: np.zeros_like(v) for k, v in ref.items()}
  v = {k: np.zeros_like(x) for k, x in ref.items()}
  for step in range(steps):
    scale = grad_scales[step]
    grads = jax.tree.map(lambda p, scale=scale: scale * rng.normal(size=p.shape).astype(np.float32), params)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    lr = original_lr(step, config.learning_rate, config.warmup_steps, config.num_train_steps)
    assert float(schedule(step)) == pytest.approx(lr, rel=1e-6, abs=1e-12)
    ref = original_step(
      ref, {k: g.astype(np.float64) for k, g in flatten(grads).items()}, m, v, lr, lamb=config.optimizer == "lamb"
    )
  return flatten(jax.tree.map(np.asarray, params)), ref


def make_config(**overrides):
  """The pretraining config's optimizer fields (config_lib's defaults), with a short schedule."""
  config = config_lib.pretraining("base")
  config.update({"optimizer": "lamb", "learning_rate": 0.05, "warmup_steps": 2, "num_train_steps": 10, **overrides})
  return config


@pytest.mark.parametrize("name", ["lamb", "adamw"])
def test_update_matches_original_albert_formula(name):
  # 8 steps: lr 0 at step 0, warmup, the drop at its end, linear decay;
  # gradient norms both above and below the clipping threshold.
  params, ref = run_both(make_config(optimizer=name), steps=8)
  for key in ref:
    np.testing.assert_allclose(params[key], ref[key], rtol=2e-5, atol=1e-6, err_msg=key)
  # The reference moved every leaf, so the test is not vacuous.
  initial = flatten(small_tree(np.random.default_rng(0)))
  assert all(np.abs(ref[k] - initial[k]).max() > 1e-4 for k in ref)


def test_lamb_differs_from_adamw_only_by_the_trust_ratio_on_decayed_leaves():
  lamb, _ = run_both(make_config(optimizer="lamb"), steps=3)
  adamw, _ = run_both(make_config(optimizer="adamw"), steps=3)
  for key in lamb:
    excluded = any(re.search(r, key) for r in EXCLUDE)
    same = np.allclose(lamb[key], adamw[key], rtol=1e-6, atol=1e-7)
    assert same == excluded or key.endswith("ffn/kernel"), key


def test_bias_correction_option_matches_optax_adamw():
  config = make_config(optimizer="adamw", bias_correction=True, grad_clip_norm=0.0, lr_schedule="linear")
  tx, schedule = optim.make_optimizer(config)
  params = small_tree(np.random.default_rng(1))
  reference = optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01, mask=optim.decay_mask)

  def run(tx):
    def step(carry, grad_value):
      params, state = carry
      grads = jax.tree.map(lambda p: jnp.full_like(p, grad_value), params)
      updates, state = tx.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), None

    return jax.lax.scan(step, (params, tx.init(params)), jnp.arange(4.0) - 1.5)[0][0]

  p1, p2 = jax.jit(lambda: (run(tx), run(reference)))()
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_stacked_layers_get_one_trust_ratio_per_layer():
  rng = np.random.default_rng(2)
  stacked = rng.normal(size=(3, 4, 5)).astype(np.float32)
  stacked[1] *= 100.0  # per-layer norms differ a lot
  params = {"encoder": {"ffn": {"kernel": stacked}}}
  config = make_config(warmup_steps=0)
  tx, _ = optim.make_optimizer(config, stacked_layers={"encoder": {"ffn": {"kernel": True}}})
  state = tx.init(params)
  ref = {f"layer_{i}": stacked[i].astype(np.float64) for i in range(3)}
  m = {k: np.zeros_like(x) for k, x in ref.items()}
  v = {k: np.zeros_like(x) for k, x in ref.items()}
  for step in range(3):
    grads = rng.normal(size=stacked.shape).astype(np.float32)
    updates, state = tx.update({"encoder": {"ffn": {"kernel": grads}}}, state, params)
    params = optax.apply_updates(params, updates)
    ref = original_step(
      ref,
      {f"layer_{i}": grads[i].astype(np.float64) for i in range(3)},
      m,
      v,
      original_lr(step, 0.05, 0, 10),
      lamb=True,
    )
  for i in range(3):
    np.testing.assert_allclose(params["encoder"]["ffn"]["kernel"][i], ref[f"layer_{i}"], rtol=2e-5, atol=1e-6)


def test_stacked_layers_mask_reads_the_logical_layers_axis():
  boxed = {
    "ffn": {"kernel": nn.Partitioned(jnp.zeros((2, 3, 4)), ("layers", "hidden", "mlp"))},
    "LayerNorm": {"scale": nn.Partitioned(jnp.zeros(3), ("hidden",))},
    "plain": jnp.zeros(3),
  }
  assert optim.stacked_layers_mask(boxed) == {"ffn": {"kernel": True}, "LayerNorm": {"scale": False}, "plain": False}


@pytest.mark.parametrize("style", ["albert", "linear"])
def test_schedule_warmup_then_linear_decay_to_zero(style):
  peak, warmup, total = 1e-3, 4, 20
  schedule = optim.learning_rate_schedule(peak, warmup, total, style)
  for step in range(total + 3):
    if style == "albert":
      expected = original_lr(step, peak, warmup, total)
    else:  # transformers.get_linear_schedule_with_warmup
      expected = peak * (step / warmup if step < warmup else max(0.0, (total - step) / (total - warmup)))
    assert float(schedule(step)) == pytest.approx(expected, abs=1e-10), step


def test_bad_config_says_what_to_fix():
  with pytest.raises(ValueError, match="'lamb' or 'adamw'"):
    optim.make_optimizer(make_config(optimizer="sgd"))
  with pytest.raises(ValueError, match="warmup_steps"):
    optim.make_optimizer(make_config(warmup_steps=20))


ALBERT_PATHS = {  # path -> gets weight decay and the trust ratio
  "albert/embeddings/word_embeddings/embedding": True,
  "albert/embeddings/position_embeddings/embedding": True,
  "albert/embeddings/token_type_embeddings/embedding": True,
  "albert/embeddings/LayerNorm/scale": False,
  "albert/embeddings/LayerNorm/bias": False,
  "albert/encoder/embedding_hidden_mapping_in/kernel": True,
  "albert/encoder/embedding_hidden_mapping_in/bias": False,
  "albert/encoder/layer/attention/query/kernel": True,
  "albert/encoder/layer/attention/query/bias": False,
  "albert/encoder/layer/attention/key/kernel": True,
  "albert/encoder/layer/attention/value/bias": False,
  "albert/encoder/layer/attention/dense/kernel": True,
  "albert/encoder/layer/attention/LayerNorm/scale": False,
  "albert/encoder/layer/attention/LayerNorm/bias": False,
  "albert/encoder/layer/ffn/kernel": True,
  "albert/encoder/layer/ffn/bias": False,
  "albert/encoder/layer/ffn_output/kernel": True,
  "albert/encoder/layer/ffn_output/bias": False,
  "albert/encoder/layer/full_layer_layer_norm/scale": False,
  "albert/encoder/layer/full_layer_layer_norm/bias": False,
  "albert/pooler/kernel": True,
  "albert/pooler/bias": False,
  "predictions/dense/kernel": True,
  "predictions/dense/bias": False,
  "predictions/LayerNorm/scale": False,
  "predictions/LayerNorm/bias": False,
  "predictions/bias": False,
  "sop_classifier/kernel": True,
  "sop_classifier/bias": False,
}


def nest(flat, leaf):
  tree = {}
  for path in flat:
    node = tree
    *parents, name = path.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[name] = leaf(path)
  return tree


@pytest.mark.parametrize("boxed", [False, True])
def test_decay_mask_selects_exactly_kernels_and_embeddings(boxed):
  def leaf(_):
    value = jax.ShapeDtypeStruct((2, 2), jnp.float32)
    return nn.Partitioned(value, ("embed", "hidden")) if boxed else value

  params = {"params": nest(ALBERT_PATHS, leaf)}
  mask = optim.decay_mask(params)
  if boxed:
    mask = jax.tree.map(lambda b: b.value, mask, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert mask == {"params": nest(ALBERT_PATHS, ALBERT_PATHS.get)}


def test_accumulated_gradients_add_up_to_the_full_batch_gradient():
  # Each microbatch's loss is its share of the full batch's (its sum over the full batch's count), so the
  # microbatch gradients add up to the full-batch gradient (tests/test_accumulation.py: the pretraining loss).
  rng = np.random.default_rng(3)
  batch = {"x": rng.normal(size=(12, 3)).astype(np.float32), "y": rng.normal(size=(12,)).astype(np.float32)}
  params = {"w": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}

  def grad_fn(params, batch, rng):
    del rng

    def loss(params):
      err = batch["x"] @ params["w"] - batch["y"]
      return jnp.sum(err**2) / 12, {"sse": jnp.sum(err**2), "count": err.size}

    grads, aux = jax.grad(loss, has_aux=True)(params)
    return aux, grads

  key = jax.random.PRNGKey(0)
  full_aux, full_grads = grad_fn(params, batch, key)
  aux, grads = jax.jit(optim.accumulate_gradients, static_argnums=(0, 4))(grad_fn, params, batch, key, 4)
  np.testing.assert_allclose(grads["w"], full_grads["w"], rtol=1e-5)
  np.testing.assert_allclose(aux["sse"], full_aux["sse"], rtol=1e-5)
  assert int(aux["count"]) == 12
  with pytest.raises(ValueError, match="grad_accum_steps=5"):
    optim.accumulate_gradients(grad_fn, params, batch, key, 5)


def test_lamb_on_boxed_params_equals_lamb_on_unboxed():
  rng = np.random.default_rng(4)
  names = {2: ("hidden", "mlp"), 3: ("layers", "hidden", "mlp"), 1: ("hidden",)}
  plain = {
    "ffn": {
      "kernel": rng.normal(size=(3, 4, 5)).astype(np.float32),
      "bias": rng.normal(size=(3, 5)).astype(np.float32),
    },
    "LayerNorm": {"scale": np.ones(4, np.float32)},
    "pooler": {"kernel": rng.normal(size=(4, 4)).astype(np.float32)},
  }
  boxed = jax.tree.map(lambda x: nn.Partitioned(x, names[x.ndim]), plain)
  stacked = optim.stacked_layers_mask(boxed)
  tx, _ = optim.make_optimizer(make_config(warmup_steps=0), stacked_layers=stacked)
  grads = jax.tree.map(lambda x: np.float32(0.3) * x + 1.0, plain)
  boxed_grads = jax.tree.map(lambda x: nn.Partitioned(x, names[x.ndim]), grads)
  u1, _ = jax.jit(tx.update)(grads, tx.init(plain), plain)
  u2, _ = jax.jit(tx.update)(boxed_grads, tx.init(boxed), boxed)
  assert isinstance(u2["ffn"]["kernel"], nn.Partitioned)
  for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_decay_and_stacked_masks_on_the_real_model():
  from albert_jax import model  # pylint: disable=g-import-not-at-top

  config = dataclasses.replace(model.AlbertConfig.preset("base"), sharing="attention")
  abstract = jax.eval_shape(model.AlbertForPreTraining(config).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  params = nn.unbox(abstract)
  paths = [optim.param_path(p) for p, _ in jax.tree.leaves_with_path(params)]
  decayed = dict(zip(paths, jax.tree.leaves(optim.decay_mask(params))))
  stacked = dict(zip(paths, jax.tree.leaves(optim.stacked_layers_mask(abstract))))
  for path, leaf in zip(paths, jax.tree.leaves(params)):
    last = path.split("/")[-1]
    assert decayed[path] == (last in ("kernel", "embedding")), path
    assert last in ("kernel", "embedding", "bias", "scale"), path
    # 'attention' sharing: attention shared, the FFN block stacked per layer.
    assert stacked[path] == ("_ffn/" in path), path
    if stacked[path]:
      assert leaf.shape[0] == config.num_hidden_layers, path
  assert sum(decayed.values()) == 13 and sum(stacked.values()) == 6

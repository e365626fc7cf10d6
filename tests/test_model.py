"""The Flax ALBERT against Hugging Face: parameter counts, logits, sharing modes, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from albert_jax import checkpoints
from albert_jax import model as model_lib
from albert_jax.checkpoints import hf
from albert_jax.tools import summary
from tests import hf_reference

SMALL = dict(
  vocab_size=101, embedding_size=16, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=48
)


@pytest.mark.parametrize("preset", ["base", "large", "xlarge", "xxlarge"])
def test_param_counts_equal_hugging_face(preset):
  config = model_lib.AlbertConfig.preset(preset)
  hf_config = transformers.AlbertConfig(**hf.config_to_hf(config))
  with torch.device("meta"):
    hf_backbone = sum(p.numel() for p in transformers.AlbertModel(hf_config).parameters())
    hf_total = sum(p.numel() for p in transformers.AlbertForPreTraining(hf_config).parameters())
  assert summary.param_counts(config) == (hf_backbone, hf_total)


def test_param_counts_match_design_table():
  expected = {
    "base": (11_683_584, 11_813_810),
    "large": (17_683_968, 17_847_474),
    "xlarge": (58_724_864, 59_021_490),
    "xxlarge": (222_595_584, 223_158_450),
  }
  assert {p: summary.param_counts(model_lib.AlbertConfig.preset(p)) for p in expected} == expected


@pytest.mark.parametrize(
  "embedding_size, expected",
  [
    (768, {"all": 31_705_344, "attention": 83_668_992, "ffn": 57_708_288, "none": 109_671_936}),
    (128, {"all": 11_683_584, "attention": 63_647_232, "ffn": 37_686_528, "none": 89_650_176}),
  ],
)
def test_sharing_ablation_counts_paper_table_4(embedding_size, expected):
  counts = {
    mode: summary.param_counts(model_lib.AlbertConfig.preset("base", embedding_size=embedding_size, sharing=mode))[0]
    for mode in expected
  }
  assert counts == expected
  # Not-shared equals Hugging Face's ALBERT with one group per layer.
  hf_config = transformers.AlbertConfig(
    **hf.config_to_hf(model_lib.AlbertConfig.preset("base", embedding_size=embedding_size, num_hidden_groups=12))
  )
  with torch.device("meta"):
    assert sum(p.numel() for p in transformers.AlbertModel(hf_config).parameters()) == expected["none"]


PARITY_CONFIGS = {
  "e_lt_h": dict(SMALL),
  "e_eq_h": dict(SMALL, embedding_size=32),
  "odd_heads": dict(SMALL, hidden_size=30, num_attention_heads=3, embedding_size=10),
  "two_groups": dict(SMALL, num_hidden_groups=2),
  "inner_group_2": dict(SMALL, inner_group_num=2, num_hidden_layers=3),
  "exact_gelu": dict(SMALL, hidden_act="gelu"),
}


@pytest.mark.parametrize("name", sorted(PARITY_CONFIGS))
def test_logits_equal_hugging_face(name, tmp_path):
  hf_config = PARITY_CONFIGS[name]
  hf_model = hf_reference.random_hf_model(tmp_path, seed=len(name), **hf_config)
  config, params = checkpoints.load(tmp_path)
  ids, mask, types = hf_reference.random_inputs(hf_config["vocab_size"])
  hf_mlm, hf_sop = hf_reference.hf_pretraining_logits(hf_model, ids, mask, types)

  model = model_lib.AlbertForPreTraining(config)
  out = model.apply(params, ids, mask, types)
  np.testing.assert_allclose(out["mlm_logits"], hf_mlm, atol=1e-4, rtol=0)
  np.testing.assert_allclose(out["sop_logits"], hf_sop, atol=1e-4, rtol=0)

  positions = np.array([[0, 5, 11], [2, 2, 7], [10, 1, 3]], np.int32)
  masked = model.apply(params, ids, mask, types, masked_positions=positions)
  np.testing.assert_allclose(
    masked["mlm_logits"], np.take_along_axis(hf_mlm, positions[..., None], axis=1), atol=1e-4, rtol=0
  )
  np.testing.assert_allclose(masked["sop_logits"], hf_sop, atol=1e-4, rtol=0)


@pytest.mark.parametrize("overrides", [{}, {"remat_policy": "none"}, {"num_hidden_layers": 1}])
def test_last_layer_at_the_masked_positions_only_gives_the_full_models_gradients(overrides):
  # With masked_positions the last layer runs at [CLS] and those positions alone; the loss and every gradient
  # must equal those of the whole encoder followed by a gather.
  config = model_lib.AlbertConfig(**dict(SMALL, **overrides))
  ids, mask, types = (jnp.asarray(x) for x in hf_reference.random_inputs(SMALL["vocab_size"]))
  positions = jnp.array([[0, 5, 11], [2, 2, 7], [10, 1, 3]], jnp.int32)
  model = model_lib.AlbertForPreTraining(config)
  params = _init(config, ids)

  def full_then_gather(m):
    sequence, pooled = m.albert(ids, mask, types)
    mlm = m.predictions(model_lib.gather_positions(sequence, positions), m.albert.attend)
    return {"mlm_logits": mlm, "sop_logits": m.sop_classifier(pooled, True)}

  def loss(p, gathered):
    out = (
      model.apply(p, ids, mask, types, masked_positions=positions)
      if gathered
      else model.apply(p, method=full_then_gather)
    )
    return jnp.sum(out["mlm_logits"] ** 2) + jnp.sum(out["sop_logits"] ** 2)

  (got, got_grads), (want, want_grads) = (jax.value_and_grad(loss)(params, g) for g in (True, False))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # float32 rounding of reordered sums


def _init(config, ids):
  return model_lib.AlbertForPreTraining(config).init(jax.random.PRNGKey(0), ids)


def test_shared_layer_has_one_unstacked_parameter_set():
  config = model_lib.AlbertConfig(**SMALL)
  params = nn.unbox(_init(config, jnp.ones((1, 4), jnp.int32)))["params"]
  layer = params["albert"]["encoder"]["layer_group"]
  assert layer["layer_0_attention"]["query"]["kernel"].shape == (32, 4, 8)
  assert layer["layer_0_ffn"]["ffn"]["kernel"].shape == (32, 48)


@pytest.mark.parametrize(
  "sharing, shared_name, stacked_name",
  [("attention", "shared_attention", "layer_0_ffn"), ("ffn", "shared_ffn", "layer_0_attention")],
)
def test_partial_sharing_with_equal_copies_equals_full_sharing(sharing, shared_name, stacked_name):
  ids = jnp.asarray(hf_reference.random_inputs(SMALL["vocab_size"])[0])
  full_config = model_lib.AlbertConfig(**SMALL)
  full = nn.unbox(_init(full_config, ids))
  partial_config = full_config.replace(sharing=sharing)
  partial = nn.unbox(_init(partial_config, ids))
  layer = full["params"]["albert"]["encoder"]["layer_group"]
  encoder = partial["params"]["albert"]["encoder"]
  encoder[shared_name] = layer[
    stacked_name.replace("0_ffn", "0_attention")
    if sharing == "attention"
    else stacked_name.replace("0_attention", "0_ffn")
  ]
  stack = lambda x: jnp.broadcast_to(x, (SMALL["num_hidden_layers"],) + x.shape)
  encoder["layer_group"][stacked_name] = jax.tree.map(stack, layer[stacked_name])
  for name in ("embeddings", "pooler"):
    partial["params"]["albert"][name] = full["params"]["albert"][name]
  encoder["embedding_hidden_mapping_in"] = full["params"]["albert"]["encoder"]["embedding_hidden_mapping_in"]
  partial["params"]["predictions"] = full["params"]["predictions"]
  partial["params"]["sop_classifier"] = full["params"]["sop_classifier"]
  expected = model_lib.AlbertForPreTraining(full_config).apply(full, ids)
  got = model_lib.AlbertForPreTraining(partial_config).apply(partial, ids)
  np.testing.assert_allclose(got["mlm_logits"], expected["mlm_logits"], atol=1e-5)


def test_every_parameter_has_logical_axis_names():
  config = model_lib.AlbertConfig(**SMALL, sharing="attention")
  boxed = jax.eval_shape(lambda: _init(config, jnp.ones((1, 4), jnp.int32)))
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  assert all(len(x.names) == x.value.ndim for x in leaves)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  config = model_lib.AlbertConfig(**SMALL, dtype="bfloat16")
  ids = jnp.ones((2, 6), jnp.int32)
  variables = _init(config, ids)
  assert {x.dtype for x in jax.tree.leaves(nn.unbox(variables))} == {jnp.dtype("float32")}
  out = model_lib.AlbertForPreTraining(config).apply(variables, ids)
  assert out["mlm_logits"].dtype == jnp.float32 and bool(jnp.isfinite(out["mlm_logits"]).all())


def test_remat_gives_the_same_gradients():
  ids = jnp.asarray(hf_reference.random_inputs(SMALL["vocab_size"])[0])
  config = model_lib.AlbertConfig(**SMALL)
  params = _init(config, ids)

  def grads(cfg):
    loss = lambda p: model_lib.AlbertForPreTraining(cfg).apply(p, ids)["mlm_logits"].mean()
    return jax.grad(loss)(params)

  for a, b in zip(jax.tree.leaves(grads(config)), jax.tree.leaves(grads(config.replace(remat_policy="full")))):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_dropout_is_active_only_when_not_deterministic():
  config = model_lib.AlbertConfig.preset("base-v1", **{k: v for k, v in SMALL.items()})
  assert config.hidden_dropout_prob == 0.1
  ids = jnp.ones((2, 6), jnp.int32)
  model = model_lib.AlbertForPreTraining(config)
  params = model.init(jax.random.PRNGKey(0), ids)
  a = model.apply(params, ids)["mlm_logits"]
  b = model.apply(params, ids, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})["mlm_logits"]
  np.testing.assert_array_equal(a, model.apply(params, ids)["mlm_logits"])
  assert not np.allclose(a, b)


def test_presets_v1_dropout_and_xxlarge_without():
  assert model_lib.AlbertConfig.preset("large-v1").attention_probs_dropout_prob == 0.1
  assert model_lib.AlbertConfig.preset("xxlarge-v1").hidden_dropout_prob == 0.0
  assert model_lib.AlbertConfig.preset("base").hidden_dropout_prob == 0.0


def test_fine_tuning_heads_shapes():
  config = model_lib.AlbertConfig(**SMALL)
  ids = jnp.ones((2, 6), jnp.int32)
  for module, shape in [
    (model_lib.AlbertForSequenceClassification(config, num_labels=3), (2, 3)),
    (model_lib.AlbertForSequenceClassification(config, num_labels=1), (2, 1)),
  ]:
    assert module.apply(module.init(jax.random.PRNGKey(0), ids), ids).shape == shape
  qa = model_lib.AlbertForQuestionAnswering(config)
  out = qa.apply(qa.init(jax.random.PRNGKey(0), ids), ids)
  assert out["start_logits"].shape == out["end_logits"].shape == (2, 6)
  mc = model_lib.AlbertForMultipleChoice(config)
  choices = jnp.ones((2, 4, 6), jnp.int32)
  assert mc.apply(mc.init(jax.random.PRNGKey(0), choices), choices).shape == (2, 4)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(hidden_size=30, num_attention_heads=4), "divisible by num_attention_heads"),
    (dict(sharing="some"), "is not one of"),
    (dict(hidden_act="swish"), "not supported"),
    (dict(num_hidden_layers=5, num_hidden_groups=2), "multiple of num_hidden_groups"),
  ],
)
def test_bad_config_is_refused_with_a_clear_message(kwargs, message):
  with pytest.raises(ValueError, match=message):
    model_lib.AlbertConfig(**kwargs)


def test_unknown_preset_lists_the_known_ones():
  with pytest.raises(ValueError, match="Unknown ALBERT preset 'huge'.*'base'"):
    model_lib.AlbertConfig.preset("huge")


def test_sop_logits_have_no_dropout_in_pretraining():
  """run_pretraining.py feeds the pooled output to the SOP classifier as it is: no classifier dropout."""
  config = model_lib.AlbertConfig(**SMALL, classifier_dropout_prob=0.1)  # backbone dropout 0, as the v2 models
  ids = jax.random.randint(jax.random.PRNGKey(0), (4, 8), 0, 101)
  rng = {"dropout": jax.random.PRNGKey(1)}
  model = model_lib.AlbertForPreTraining(config)
  params = model.init(jax.random.PRNGKey(0), ids)
  deterministic = model.apply(params, ids)["sop_logits"]
  np.testing.assert_array_equal(model.apply(params, ids, deterministic=False, rngs=rng)["sop_logits"], deterministic)
  # The same rng does drop units in a fine-tuning classifier, which keeps classifier_dropout_prob.
  classifier = model_lib.AlbertForSequenceClassification(config, num_labels=2)
  params = classifier.init(jax.random.PRNGKey(0), ids)
  assert not np.allclose(classifier.apply(params, ids), classifier.apply(params, ids, deterministic=False, rngs=rng))


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _xlnet_head_reference(p, h, p_mask, start_positions, start_n_top, end_n_top):
  """squad_utils.create_v2_model transcribed to NumPy (float64) from the head's parameters and the backbone output."""
  dense = lambda x, layer: x @ layer["kernel"] + layer.get("bias", 0.0)
  masked = lambda x, m: x * (1 - m) - 1e30 * m
  layer_norm = lambda x, n: (
    (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-12) * n["scale"] + n["bias"]
  )

  def end_logits(tokens, start_state):  # [T, H], [H] -> [T]
    concat = np.concatenate([tokens, np.broadcast_to(start_state, tokens.shape)], -1)
    x = layer_norm(np.tanh(dense(concat, p["end_logits"]["dense_0"])), p["end_logits"]["LayerNorm"])
    return dense(x, p["end_logits"]["dense_1"])[..., 0]

  start = masked(dense(h, p["start_logits"]["dense"])[..., 0], p_mask)
  start_log_probs = _log_softmax(start)
  out = {k: [] for k in ("cls_logits", "start_log_probs", "end_log_probs", "start_top_index")}
  out.update(end_top_index=[], end_top_log_probs=[])
  for b in range(len(h)):
    probs = np.exp(start_log_probs[b])
    features = np.concatenate([probs @ h[b], h[b, 0]])  # [start-weighted state ; [CLS]]
    out["cls_logits"].append(
      dense(np.tanh(dense(features, p["answer_class"]["dense_0"])), p["answer_class"]["dense_1"])
    )
    out["start_log_probs"].append(start_log_probs[b])
    out["end_log_probs"].append(_log_softmax(masked(end_logits(h[b], h[b, start_positions[b]]), p_mask[b])))
    top_starts = np.argsort(-start_log_probs[b], kind="stable")[:start_n_top]
    out["start_top_index"].append(top_starts)
    ends, end_log_probs = [], []
    for s in top_starts:  # start-major: the ends of the best start first
      log_probs = _log_softmax(masked(end_logits(h[b], h[b, s]), p_mask[b]))
      ends += list(np.argsort(-log_probs, kind="stable")[:end_n_top])
      end_log_probs += list(log_probs[ends[-end_n_top:]])
    out["end_top_index"].append(ends)
    out["end_top_log_probs"].append(end_log_probs)
  out = {k: np.array(v) for k, v in out.items()}
  out["cls_logits"] = out["cls_logits"][:, 0]
  return out


def test_xlnet_squad_head_computes_the_original_v2_head():
  config = model_lib.AlbertConfig(**SMALL, classifier_dropout_prob=0.1)
  ids = jax.random.randint(jax.random.PRNGKey(0), (3, 12), 0, 101)
  p_mask = np.ones((3, 12), np.int32)
  p_mask[:, 0] = p_mask[0, 3:11] = p_mask[1, 5:7] = p_mask[2, 4:10] = 0  # [CLS] and a context block
  model = model_lib.AlbertForQuestionAnsweringXLNet(config, start_n_top=4, end_n_top=3)
  params = nn.unbox(model.init(jax.random.PRNGKey(1), ids))["params"]
  # The TensorFlow variable tree of create_v2_model (answer_class/dense_1 has no bias), around the backbone.
  head = {k: v for k, v in params.items() if k != "albert"}
  names = {
    jax.tree_util.keystr(k, simple=True, separator="/"): v.shape for k, v in jax.tree_util.tree_leaves_with_path(head)
  }
  assert names == {
    "start_logits/dense/kernel": (32, 1),
    "start_logits/dense/bias": (1,),
    "end_logits/dense_0/kernel": (64, 32),
    "end_logits/dense_0/bias": (32,),
    "end_logits/LayerNorm/scale": (32,),
    "end_logits/LayerNorm/bias": (32,),
    "end_logits/dense_1/kernel": (32, 1),
    "end_logits/dense_1/bias": (1,),
    "answer_class/dense_0/kernel": (64, 32),
    "answer_class/dense_0/bias": (32,),
    "answer_class/dense_1/kernel": (32, 1),
  }
  assert "pooler" not in params["albert"]
  head = jax.tree.map(lambda x: np.asarray(x, np.float64), head)
  sequence, _ = model_lib.AlbertModel(config, add_pooling_layer=False).apply({"params": params["albert"]}, ids)
  starts = np.array([3, 0, 9])
  want = _xlnet_head_reference(head, np.asarray(sequence, np.float64), p_mask, starts, 4, 3)
  trained = model.apply({"params": params}, ids, p_mask=p_mask, start_positions=starts)
  predicted = model.apply({"params": params}, ids, p_mask=p_mask)
  for key, got in [*trained.items(), *predicted.items()]:
    if key.endswith("index"):
      np.testing.assert_array_equal(got, want[key], err_msg=key)
    elif key in want:
      np.testing.assert_allclose(got, want[key], rtol=1e-5, atol=1e-5, err_msg=key)
  rows = np.arange(3)[:, None]
  np.testing.assert_allclose(
    predicted["start_top_log_probs"], want["start_log_probs"][rows, want["start_top_index"]], atol=1e-5
  )
  assert predicted["end_top_log_probs"].shape == (3, 12)  # start_n_top x end_n_top per row
  # The answerability classifier is the head's only dropout.
  rng = {"dropout": jax.random.PRNGKey(2)}
  dropped = model.apply({"params": params}, ids, p_mask=p_mask, start_positions=starts, deterministic=False, rngs=rng)
  np.testing.assert_array_equal(dropped["start_log_probs"], trained["start_log_probs"])
  np.testing.assert_array_equal(dropped["end_log_probs"], trained["end_log_probs"])
  assert not np.allclose(dropped["cls_logits"], trained["cls_logits"])

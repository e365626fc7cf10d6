"""Original google-research/albert TF checkpoints: written by TensorFlow here, read without it by albert_jax."""

import importlib.util
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from albert_jax import checkpoints
from albert_jax import model as model_lib
from albert_jax.checkpoints import original_tf
from tests import hf_reference

pytestmark = pytest.mark.skipif(
  importlib.util.find_spec("tensorflow") is None,
  reason="needs TensorFlow to write checkpoints (pip install tensorflow-cpu)",
)

# Two parameter groups, E != H: every kind of name in the original layout.
SMALL = dict(
  vocab_size=64,
  embedding_size=8,
  hidden_size=16,
  num_hidden_layers=4,
  num_hidden_groups=2,
  num_attention_heads=2,
  intermediate_size=24,
  hidden_act="gelu_new",
)

# Runs in a child process so that TensorFlow and JAX never share one. Saves each npz as a TF1 `Saver` does (the
# original run_pretraining.py), or for `bundle*` prefixes straight with the SaveV2 op that `Saver` runs, which
# takes thousands of tensors quickly. Arrays are saved as they are, except that `*bf16` ones become bfloat16.
_WRITER = """
import sys
import numpy as np
import tensorflow as tf
tf.compat.v1.disable_eager_execution()
for npz, prefix in zip(sys.argv[1::2], sys.argv[2::2]):
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    arrays = np.load(npz)
    values = {}
    for name in arrays.files:
      value = tf.constant(arrays[name])
      values[name] = tf.cast(value, tf.bfloat16) if name.endswith('bf16') else value
    if prefix.rsplit('/', 1)[-1].startswith('bundle'):
      session.run(tf.raw_ops.SaveV2(prefix=prefix, tensor_names=list(values), shape_and_slices=[''] * len(values),
                                    tensors=list(values.values())))
    else:
      for name, value in values.items():
        tf.compat.v1.Variable(value, name=name)
      session.run(tf.compat.v1.global_variables_initializer())
      tf.compat.v1.train.Saver().save(session, prefix, write_meta_graph=False)
"""


def _tf_variables(state, num_groups):
  """A Hugging Face AlbertForPreTraining state dict → the original TF variables, written out name by name."""
  t = lambda key: state[key].T  # PyTorch [out, in] → TF [in, out]
  tf = {
    "bert/embeddings/word_embeddings": state["albert.embeddings.word_embeddings.weight"],
    "bert/embeddings/position_embeddings": state["albert.embeddings.position_embeddings.weight"],
    "bert/embeddings/token_type_embeddings": state["albert.embeddings.token_type_embeddings.weight"],
    "bert/embeddings/LayerNorm/gamma": state["albert.embeddings.LayerNorm.weight"],
    "bert/embeddings/LayerNorm/beta": state["albert.embeddings.LayerNorm.bias"],
    "bert/encoder/embedding_hidden_mapping_in/kernel": t("albert.encoder.embedding_hidden_mapping_in.weight"),
    "bert/encoder/embedding_hidden_mapping_in/bias": state["albert.encoder.embedding_hidden_mapping_in.bias"],
    "bert/pooler/dense/kernel": t("albert.pooler.weight"),
    "bert/pooler/dense/bias": state["albert.pooler.bias"],
    "cls/predictions/transform/dense/kernel": t("predictions.dense.weight"),
    "cls/predictions/transform/dense/bias": state["predictions.dense.bias"],
    "cls/predictions/transform/LayerNorm/gamma": state["predictions.LayerNorm.weight"],
    "cls/predictions/transform/LayerNorm/beta": state["predictions.LayerNorm.bias"],
    "cls/predictions/output_bias": state["predictions.bias"],
    "cls/seq_relationship/output_weights": state["sop_classifier.classifier.weight"],  # [2, H] in both
    "cls/seq_relationship/output_bias": state["sop_classifier.classifier.bias"],
  }
  for g in range(num_groups):
    tf_layer = f"bert/encoder/transformer/group_{g}/inner_group_0/"
    hf_layer = f"albert.encoder.albert_layer_groups.{g}.albert_layers.0."
    for name in ("query", "key", "value"):
      tf[f"{tf_layer}attention_1/self/{name}/kernel"] = t(f"{hf_layer}attention.{name}.weight")
      tf[f"{tf_layer}attention_1/self/{name}/bias"] = state[f"{hf_layer}attention.{name}.bias"]
    tf[f"{tf_layer}attention_1/output/dense/kernel"] = t(f"{hf_layer}attention.dense.weight")
    tf[f"{tf_layer}attention_1/output/dense/bias"] = state[f"{hf_layer}attention.dense.bias"]
    tf[f"{tf_layer}LayerNorm/gamma"] = state[f"{hf_layer}attention.LayerNorm.weight"]
    tf[f"{tf_layer}LayerNorm/beta"] = state[f"{hf_layer}attention.LayerNorm.bias"]
    tf[f"{tf_layer}ffn_1/intermediate/dense/kernel"] = t(f"{hf_layer}ffn.weight")
    tf[f"{tf_layer}ffn_1/intermediate/dense/bias"] = state[f"{hf_layer}ffn.bias"]
    tf[f"{tf_layer}ffn_1/intermediate/output/dense/kernel"] = t(f"{hf_layer}ffn_output.weight")
    tf[f"{tf_layer}ffn_1/intermediate/output/dense/bias"] = state[f"{hf_layer}ffn_output.bias"]
    tf[f"{tf_layer}LayerNorm_1/gamma"] = state[f"{hf_layer}full_layer_layer_norm.weight"]
    tf[f"{tf_layer}LayerNorm_1/beta"] = state[f"{hf_layer}full_layer_layer_norm.bias"]
  # What a pretraining checkpoint also holds: optimizer slots and the step counter.
  slots = {f"{name}/{slot}": np.full_like(value, 7.0) for name, value in tf.items() for slot in ("adam_m", "adam_v")}
  return {**tf, **slots, "global_step": np.int64(125000)}


def _original_config():
  """albert_config.json as the releases ship it: "gelu" there is the tanh approximation."""
  return {
    **{k: v for k, v in SMALL.items() if k != "hidden_act"},
    "hidden_act": "gelu",
    "inner_group_num": 1,
    "down_scale_factor": 1,
    "hidden_dropout_prob": 0,
    "attention_probs_dropout_prob": 0,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
  }


def _dtype_arrays():
  """Every dtype the reader decodes, plus enough variables that the index spans several SSTable blocks (256 KiB)."""
  rng = np.random.RandomState(1)
  arrays = {
    "f32": rng.randn(3, 5).astype(np.float32),
    "f16": rng.randn(7).astype(np.float16),
    "f64": rng.randn(2, 2),
    "i32": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
    "i64": np.int64(2**40),
    "flags": np.array([True, False, True]),
    "u8": np.arange(4, dtype=np.uint8),
    # bfloat16 keeps 8 significant bits: these values survive the cast exactly.
    "x_bf16": np.array([1.5, -0.25, 3.0, 1024.0], np.float32),
  }
  arrays.update(
    {
      f"many/scope_{i:04d}/a_long_name_so_that_the_index_fills_more_than_one_block/kernel": np.full((2,), i, np.float32)
      for i in range(4000)
    }
  )
  return arrays


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  """HF reference model, and TF checkpoints of its weights: plain, TF-Hub (`module/`), BERT-like, mixed dtypes."""
  root = tmp_path_factory.mktemp("tf")
  hf_dir = root / "hf"
  model = hf_reference.random_hf_model(hf_dir, **SMALL)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  variables = _tf_variables(state, SMALL["num_hidden_groups"])
  layouts = {
    "albert_base/model.ckpt-best": variables,
    "hub/variables/variables": {f"module/{k}": v for k, v in variables.items() if "/adam_" not in k},
    "bert/bert_model.ckpt": {
      k.replace("transformer/group_0/inner_group_0", "layer_0"): v for k, v in variables.items() if "group_1" not in k
    },
    "dtypes/bundle": _dtype_arrays(),
  }
  args = []
  for prefix, arrays in layouts.items():
    path = root / prefix
    path.parent.mkdir(parents=True)
    np.savez(path.parent / "arrays.npz", **arrays)
    args += [str(path.parent / "arrays.npz"), str(path)]
  for directory in ("albert_base", "hub", "bert"):
    (root / directory / "albert_config.json").write_text(json.dumps(_original_config()))
  result = subprocess.run([sys.executable, "-c", _WRITER, *args], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return root, hf_dir


def _logits(config, params):
  ids, mask, types = hf_reference.random_inputs(SMALL["vocab_size"], length=8)
  out = model_lib.AlbertForPreTraining(config).apply(params, ids, mask, types)
  return np.asarray(out["mlm_logits"]), np.asarray(out["sop_logits"])


@pytest.fixture(scope="module")
def reference(written):
  """The same weights read from the Hugging Face directory: config, params and logits."""
  config, params = checkpoints.load(written[1])
  return config, params, _logits(config, params)


def _assert_same_params(got, want):
  leaves = jax.tree_util.tree_leaves_with_path(want)
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for (path, value), other in zip(leaves, jax.tree_util.tree_leaves(got)):
    np.testing.assert_array_equal(other, value, err_msg=jax.tree_util.keystr(path))


def test_reader_decodes_every_dtype_as_tensorflow_wrote_it(written):
  root, _ = written
  expected = _dtype_arrays()
  tensors = original_tf.read_bundle(root / "dtypes" / "bundle")
  assert sorted(tensors) == sorted(expected)
  for name, value in expected.items():
    assert tensors[name].shape == np.shape(value), name
    np.testing.assert_array_equal(tensors[name], value, err_msg=name)
  assert tensors["f16"].dtype == np.float16 and tensors["i64"].dtype == np.int64


@pytest.mark.parametrize("source", ["albert_base/model.ckpt-best", "hub"])
def test_original_checkpoint_gives_the_logits_of_the_same_weights_in_hf_format(written, reference, source):
  config, params = checkpoints.load(written[0] / source)
  assert config == reference[0]  # including "gelu" → "gelu_new"
  for got, want in zip(_logits(config, params), reference[2]):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
  "source,prefix",
  [
    ("albert_base", "albert_base/model.ckpt-best"),  # via the `checkpoint` state file
    ("albert_base/model.ckpt-best", "albert_base/model.ckpt-best"),
    ("albert_base/model.ckpt-best.index", "albert_base/model.ckpt-best"),
    ("hub", "hub/variables/variables"),
    ("hub/variables/variables", "hub/variables/variables"),
    ("hf", None),  # a Hugging Face directory is not a TF checkpoint
  ],
)
def test_every_way_of_naming_a_checkpoint_finds_its_prefix(written, source, prefix):
  root, _ = written
  assert original_tf.find_prefix(root / source) == (root / prefix if prefix else None)


def test_convert_accepts_a_tf_checkpoint_and_copies_its_vocabulary(written, reference, tmp_path):
  root, _ = written
  vocab = root / "albert_base" / "30k-clean.model"  # the releases' name for spiece.model
  vocab.write_bytes(b"stands in for the SentencePiece model")
  out = checkpoints.convert(root / "albert_base", tmp_path / "converted")
  assert (out / "spiece.model").read_bytes() == vocab.read_bytes()
  config, params = checkpoints.load(out)
  assert config == reference[0]
  _assert_same_params(params, reference[1])


def test_a_bert_checkpoint_is_refused_with_a_clear_message(written):
  root, _ = written
  with pytest.raises(checkpoints.CheckpointError, match="no ALBERT encoder variables.*not BERT"):
    checkpoints.load(root / "bert")


def test_missing_albert_config_says_where_to_put_it(written, tmp_path):
  root, _ = written
  for name in ("index", "data-00000-of-00001"):
    (tmp_path / f"model.ckpt.{name}").write_bytes((root / "dtypes" / f"bundle.{name}").read_bytes())
  with pytest.raises(checkpoints.CheckpointError, match="No albert_config.json beside"):
    checkpoints.load(tmp_path / "model.ckpt")


def test_truncated_data_file_is_reported(written, tmp_path):
  root, _ = written
  (tmp_path / "albert_config.json").write_text(json.dumps(_original_config()))
  (tmp_path / "model.ckpt.index").write_bytes((root / "albert_base" / "model.ckpt-best.index").read_bytes())
  data = (root / "albert_base" / "model.ckpt-best.data-00000-of-00001").read_bytes()
  (tmp_path / "model.ckpt.data-00000-of-00001").write_bytes(data[: len(data) // 2])
  with pytest.raises(checkpoints.CheckpointError, match="Cannot read the TensorFlow checkpoint.*truncated"):
    checkpoints.load(tmp_path)


def test_a_file_that_is_not_an_index_is_reported(tmp_path):
  (tmp_path / "model.ckpt.index").write_bytes(b"not an sstable")
  (tmp_path / "albert_config.json").write_text(json.dumps(_original_config()))
  with pytest.raises(checkpoints.CheckpointError, match="not a TensorFlow checkpoint index"):
    checkpoints.load(tmp_path / "model.ckpt")

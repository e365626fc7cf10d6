"""Hugging Face ALBERT directories, and the name map between their tensors and albert_jax's parameters.

The map lives here once and serves both directions (`hf_to_params`,
`params_to_hf`); the original TensorFlow reader renames its variables to
Hugging Face names and uses it too. `HEADS` extends it to the fine-tuning
heads that have a Hugging Face class: one row per head, read by the export
and by `load_hf` alike.
"""

import dataclasses
import io
import json
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath

from albert_jax import model as model_lib
from albert_jax import storage
from albert_jax.checkpoints.errors import CheckpointError

HF_CONFIG_FIELDS = (
  "vocab_size",
  "embedding_size",
  "hidden_size",
  "num_hidden_layers",
  "num_hidden_groups",
  "inner_group_num",
  "num_attention_heads",
  "intermediate_size",
  "hidden_act",
  "hidden_dropout_prob",
  "attention_probs_dropout_prob",
  "classifier_dropout_prob",
  "max_position_embeddings",
  "type_vocab_size",
  "initializer_range",
  "layer_norm_eps",
)
# Heads that released checkpoints may lack (albert-base-v2 has no SOP head; an `AlbertForMaskedLM` directory has no
# pooler either): initialised fresh, with a warning.
OPTIONAL_PREFIXES = ("sop_classifier/", "albert/pooler/")


# The name map: one row per tensor, (Hugging Face key, params path, to_flax, to_hf).


def _t(w):
  return w.T


def _name_map(cfg: model_lib.AlbertConfig) -> list[tuple[str, str, Callable, Callable]]:
  """Rows for every tensor of `AlbertForPreTraining`; stacked group tensors are handled by the caller."""
  H, nh, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim
  ident = lambda w: w
  rows = [
    ("albert.embeddings.word_embeddings.weight", "albert/embeddings/word_embeddings/embedding", ident, ident),
    ("albert.embeddings.position_embeddings.weight", "albert/embeddings/position_embeddings/embedding", ident, ident),
    (
      "albert.embeddings.token_type_embeddings.weight",
      "albert/embeddings/token_type_embeddings/embedding",
      ident,
      ident,
    ),
    ("albert.embeddings.LayerNorm.weight", "albert/embeddings/LayerNorm/scale", ident, ident),
    ("albert.embeddings.LayerNorm.bias", "albert/embeddings/LayerNorm/bias", ident, ident),
    ("albert.encoder.embedding_hidden_mapping_in.weight", "albert/encoder/embedding_hidden_mapping_in/kernel", _t, _t),
    (
      "albert.encoder.embedding_hidden_mapping_in.bias",
      "albert/encoder/embedding_hidden_mapping_in/bias",
      ident,
      ident,
    ),
    ("albert.pooler.weight", "albert/pooler/kernel", _t, _t),
    ("albert.pooler.bias", "albert/pooler/bias", ident, ident),
    ("predictions.dense.weight", "predictions/dense/kernel", _t, _t),
    ("predictions.dense.bias", "predictions/dense/bias", ident, ident),
    ("predictions.LayerNorm.weight", "predictions/LayerNorm/scale", ident, ident),
    ("predictions.LayerNorm.bias", "predictions/LayerNorm/bias", ident, ident),
    ("predictions.bias", "predictions/bias", ident, ident),
    ("sop_classifier.classifier.weight", "sop_classifier/classifier/kernel", _t, _t),
    ("sop_classifier.classifier.bias", "sop_classifier/classifier/bias", ident, ident),
  ]
  qkv_in = lambda w: w.T.reshape(H, nh, hd)
  qkv_out = lambda k: k.reshape(H, nh * hd).T
  for j in range(cfg.inner_group_num):
    hf = f"albert_layers.{j}."
    att, ffn = f"layer_{j}_attention/", f"layer_{j}_ffn/"
    for name in ("query", "key", "value"):
      rows.append((f"{hf}attention.{name}.weight", f"{att}{name}/kernel", qkv_in, qkv_out))
      rows.append(
        (f"{hf}attention.{name}.bias", f"{att}{name}/bias", lambda b: b.reshape(nh, hd), lambda b: b.reshape(nh * hd))
      )
    rows += [
      (
        f"{hf}attention.dense.weight",
        f"{att}dense/kernel",
        lambda w: w.T.reshape(nh, hd, H),
        lambda k: k.reshape(nh * hd, H).T,
      ),
      (f"{hf}attention.dense.bias", f"{att}dense/bias", ident, ident),
      (f"{hf}attention.LayerNorm.weight", f"{att}LayerNorm/scale", ident, ident),
      (f"{hf}attention.LayerNorm.bias", f"{att}LayerNorm/bias", ident, ident),
      (f"{hf}ffn.weight", f"{ffn}ffn/kernel", _t, _t),
      (f"{hf}ffn.bias", f"{ffn}ffn/bias", ident, ident),
      (f"{hf}ffn_output.weight", f"{ffn}ffn_output/kernel", _t, _t),
      (f"{hf}ffn_output.bias", f"{ffn}ffn_output/bias", ident, ident),
      (f"{hf}full_layer_layer_norm.weight", f"{ffn}full_layer_layer_norm/scale", ident, ident),
      (f"{hf}full_layer_layer_norm.bias", f"{ffn}full_layer_layer_norm/bias", ident, ident),
    ]
  return rows


@dataclasses.dataclass(frozen=True)
class Head:
  """A fine-tuning head's Hugging Face class and its tensors.

  Attributes:
    architecture: the transformers class (config.json's `architectures`).
    rows: (Hugging Face key, params path, to_flax, to_hf) of the head's tensors, as `_name_map`'s.
    pooler: whether the class's backbone has the pooler (the span and token heads read the sequence only).
  """

  architecture: str
  rows: tuple[tuple[str, str, Callable, Callable], ...]
  pooler: bool = True


def _dense_rows(hf_name: str, path: str) -> tuple[tuple[str, str, Callable, Callable], ...]:
  ident = lambda w: w
  return ((f"{hf_name}.weight", f"{path}/kernel", _t, _t), (f"{hf_name}.bias", f"{path}/bias", ident, ident))


_SEQUENCE_CLASSIFIER = Head("AlbertForSequenceClassification", _dense_rows("classifier", "classifier_head/classifier"))
# Task head (TaskSpec.head) -> its Hugging Face class. The SQuAD 2.0 XLNet-style head ('span_xlnet') has none.
HEADS = {
  "classification": _SEQUENCE_CLASSIFIER,
  "regression": _SEQUENCE_CLASSIFIER,
  "span": Head("AlbertForQuestionAnswering", _dense_rows("qa_outputs", "qa_outputs"), pooler=False),
  "multiple_choice": Head("AlbertForMultipleChoice", _dense_rows("classifier", "classifier_head/classifier")),
  "tagging": Head("AlbertForTokenClassification", _dense_rows("classifier", "classifier"), pooler=False),
}


def head_of_hf_config(hf_config: dict[str, Any]) -> str | None:
  """The task head of a Hugging Face config.json (None: a pretraining or backbone-only model)."""
  architecture = (hf_config.get("architectures") or [None])[0]
  heads = [name for name, head in HEADS.items() if head.architecture == architecture]
  if not heads:
    return None
  if heads == ["classification", "regression"]:
    regression = hf_config.get("problem_type") == "regression" or len(hf_config.get("id2label") or {0: 0, 1: 1}) == 1
    return "regression" if regression else "classification"
  return heads[0]


def _is_layer_row(hf_key: str) -> bool:
  return hf_key.startswith("albert_layers.")


def _group_key(g: int, layer_key: str) -> str:
  return f"albert.encoder.albert_layer_groups.{g}.{layer_key}"


def _layer_path(cfg: model_lib.AlbertConfig, layer_path: str) -> str:
  stacked = "layers/" if cfg.num_hidden_groups > 1 else ""
  return f"albert/encoder/layer_group/{stacked}{layer_path}"


def _normalise_hf_keys(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Accept the legacy spellings: `LayerNorm.gamma/beta`, a missing `albert.` prefix, `position_ids` buffers."""
  out = {}
  for key, value in state.items():
    if key.endswith("position_ids"):
      continue
    key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    if key.startswith(("embeddings.", "encoder.", "pooler.")):
      key = "albert." + key
    if key == "predictions.decoder.bias":
      key = "predictions.bias"  # tied to predictions.bias; older files store only this copy
    out.setdefault(key, value)
  return out


def _rows(cfg: model_lib.AlbertConfig, head: str | None):
  """`_name_map`'s rows for `AlbertForPreTraining`, or for the backbone of `HEADS[head]` and then the head's own."""
  if head is None:
    return _name_map(cfg)
  task = HEADS[head]
  skipped = ("predictions.", "sop_classifier.") + (() if task.pooler else ("albert.pooler.",))
  return [row for row in _name_map(cfg) if not row[0].startswith(skipped)] + list(task.rows)


def hf_to_params(
  state: dict[str, np.ndarray], cfg: model_lib.AlbertConfig, head: str | None = None, complete: bool = True
) -> dict[str, Any]:
  """A Hugging Face state dict → a `{'params': ...}` tree.

  Of `AlbertForPreTraining`, or with `head` (a key of `HEADS`) of that head's task model: its backbone (`albert`)
  and head, as albert_jax's fine-tuning writes them. Without `head`, the pretraining heads the state lacks
  (OPTIONAL_PREFIXES) are initialised, or with `complete=False` left out.
  """
  state = _normalise_hf_keys(state)
  expected = _abstract_params(cfg)
  flat, used = {}, set()
  for hf_key, path, to_flax, _ in _rows(cfg, head):
    if _is_layer_row(hf_key):
      keys = [_group_key(g, hf_key) for g in range(cfg.num_hidden_groups)]
      path = _layer_path(cfg, path)
    else:
      keys = [hf_key]
    if any(k not in state for k in keys):
      if path.startswith(OPTIONAL_PREFIXES):
        continue
      missing = next(k for k in keys if k not in state)
      raise CheckpointError(
        f"The checkpoint has no tensor {missing!r}; is it an ALBERT checkpoint matching its "
        f"config.json (num_hidden_groups={cfg.num_hidden_groups}, "
        f"inner_group_num={cfg.inner_group_num}, architectures)?"
      )
    if path in expected:
      want = expected[path][1:] if cfg.num_hidden_groups > 1 and len(keys) > 1 else expected[path]
    else:  # a task head's tensor: its width is the number of labels, which only the file says
      want = np.shape(to_flax(np.asarray(state[keys[0]])))
    values = [_converted(state[k], k, to_flax, want) for k in keys]
    flat[path] = np.stack(values) if cfg.num_hidden_groups > 1 and len(keys) > 1 else values[0]
    used.update(keys)
  unused = sorted(k for k in set(state) - used if not k.startswith("predictions.decoder."))
  if unused:
    what = HEADS[head].architecture if head else "AlbertForPreTraining"
    logging.warning("Ignoring %d tensors not used by %s: %s", len(unused), what, unused[:8])
  params = {"params": _unflatten(flat)}
  return _complete(params, cfg) if complete and not head else params


def _converted(value, hf_key, to_flax, want):
  """`to_flax(value)`, after checking the tensor against the shape config.json implies (naming it if not)."""
  value = np.asarray(value)
  converted = to_flax(value) if value.size == int(np.prod(want)) else None
  if converted is None or tuple(converted.shape) != tuple(want):
    raise CheckpointError(
      f"Tensor {hf_key!r} has shape {tuple(value.shape)}, which does not fit config.json (expected "
      f"{tuple(want)} in albert_jax layout). The weights do not belong to this config.json; fix the config or "
      "use the matching weights."
    )
  return np.asarray(converted)


def params_to_hf(
  params: dict[str, Any], cfg: model_lib.AlbertConfig, backbone_only: bool = False, head: str | None = None
) -> dict[str, np.ndarray]:
  """The `{'params': ...}` tree → a Hugging Face `AlbertForPreTraining` state dict (decoder tensors as copies).

  `backbone_only`: the `albert.` tensors alone (an `AlbertModel`; the pooler only if the tree has one), e.g. of a
  fine-tuned task model. `head` (a key of `HEADS`): a task model's, as that head's Hugging Face class names them.
  """
  flat = _flatten(params["params"])
  state = {}
  for hf_key, path, _, to_hf in _rows(cfg, head):
    path = _layer_path(cfg, path) if _is_layer_row(hf_key) else path
    if backbone_only and (hf_key.startswith(("predictions.", "sop_classifier.")) or path not in flat):
      continue  # the heads, and the pooler of a span model (which has none)
    if _is_layer_row(hf_key):
      value = np.asarray(flat[path])
      groups = value if cfg.num_hidden_groups > 1 else value[None]
      for g in range(cfg.num_hidden_groups):
        state[_group_key(g, hf_key)] = np.ascontiguousarray(to_hf(groups[g]))
    else:
      state[hf_key] = np.ascontiguousarray(to_hf(np.asarray(flat[path])))
  if not backbone_only and head is None:
    state["predictions.decoder.weight"] = state["albert.embeddings.word_embeddings.weight"].copy()
    state["predictions.decoder.bias"] = state["predictions.bias"].copy()
  return state


def _flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _unflatten(flat):
  tree = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def _dummy_inputs():
  return jnp.zeros((1, 2), jnp.int32)


def _abstract_params(cfg):
  shapes = jax.eval_shape(
    lambda: nn.unbox(model_lib.AlbertForPreTraining(cfg).init(jax.random.PRNGKey(0), _dummy_inputs()))
  )
  return {path: tuple(v.shape) for path, v in _flatten(shapes["params"]).items()}


def _complete(params, cfg):
  """Fill heads missing from the file (see OPTIONAL_PREFIXES) with a fresh initialisation."""
  flat = _flatten(params["params"])
  expected = _abstract_params(cfg)
  missing = sorted(set(expected) - set(flat))
  if missing:
    if not all(p.startswith(OPTIONAL_PREFIXES) for p in missing):
      raise CheckpointError(f"Checkpoint lacks parameters {missing}.")
    logging.warning("Checkpoint has no %s; initialising them randomly.", missing)
    fresh = _flatten(
      nn.unbox(model_lib.AlbertForPreTraining(cfg).init(jax.random.PRNGKey(0), _dummy_inputs()))["params"]
    )
    flat.update({p: np.asarray(fresh[p]) for p in missing})
  return {"params": _unflatten(flat)}


def config_from_hf(hf_config: dict[str, Any]) -> model_lib.AlbertConfig:
  model_type = hf_config.get("model_type")
  if model_type != "albert":
    raise CheckpointError(
      f"config.json says model_type={model_type!r}; albert_jax reads ALBERT checkpoints only (model_type 'albert')."
    )
  values = {k: hf_config[k] for k in HF_CONFIG_FIELDS if k in hf_config}
  return model_lib.AlbertConfig(**values)


def config_to_hf(cfg: model_lib.AlbertConfig) -> dict[str, Any]:
  values = {k: getattr(cfg, k) for k in HF_CONFIG_FIELDS}
  return {
    "architectures": ["AlbertForPreTraining"],
    "model_type": "albert",
    "tie_word_embeddings": True,
    "pad_token_id": 0,
    "bos_token_id": 2,
    "eos_token_id": 3,
    **values,
  }


def read_json(path: epath.Path) -> dict[str, Any]:
  try:
    return json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"Cannot read {path}: {e}") from e


def read_hf_weights(directory: epath.Path) -> dict[str, np.ndarray]:
  """model.safetensors (preferred) or pytorch_model.bin as numpy arrays (a bucket's files read into memory)."""
  safetensors_file = directory / "model.safetensors"
  if safetensors_file.exists():
    from safetensors import numpy as safetensors_numpy

    if storage.is_remote(safetensors_file):
      return safetensors_numpy.load(safetensors_file.read_bytes())
    return safetensors_numpy.load_file(str(safetensors_file))
  torch_file = directory / "pytorch_model.bin"
  if torch_file.exists():
    try:
      import torch
    except ImportError as e:
      raise CheckpointError(
        f"{torch_file} is a PyTorch file; `pip install torch` to read it, or save the model with safetensors."
      ) from e
    source = io.BytesIO(torch_file.read_bytes()) if storage.is_remote(torch_file) else torch_file
    state = torch.load(source, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}
  raise CheckpointError(f"{directory} has config.json but no model.safetensors or pytorch_model.bin.")


def load_hf(directory, complete: bool = True) -> tuple[model_lib.AlbertConfig, dict[str, Any]]:
  """A Hugging Face directory's config and parameters: with its head when its class is one of `HEADS`."""
  directory = storage.path(directory)
  hf_config = read_json(directory / "config.json")
  cfg = config_from_hf(hf_config)
  return cfg, hf_to_params(read_hf_weights(directory), cfg, head_of_hf_config(hf_config), complete)

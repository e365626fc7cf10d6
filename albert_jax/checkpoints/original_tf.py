"""Original google-research/albert TensorFlow checkpoints, read without TensorFlow.

The released ALBERT models (and TF-Hub modules) are TensorFlow "V2" checkpoints:
a tensor bundle of two files beside a common prefix such as `model.ckpt-best`:

- `PREFIX.index`: an SSTable (the LevelDB table format). Its data blocks map
  each variable name to a `BundleEntryProto` (dtype, shape, shard id, byte
  offset and size in the data file); the empty key holds a
  `BundleHeaderProto` (shard count, endianness). TensorFlow writes the index
  uncompressed; only that is supported.
- `PREFIX.data-SSSSS-of-NNNNN`: the raw little-endian tensor bytes.

`read_bundle` parses both with nothing but the standard library and NumPy.
`load` then renames the ALBERT variables (`bert/...`, `cls/...`, optionally
under TF-Hub's `module/`) to Hugging Face names, so that the one name map in
`checkpoints.hf` turns them into albert_jax parameters. Optimizer slots
(`*/adam_m`, `*/adam_v`, `*/lamb_*`) and `global_step` are skipped.
"""

import contextlib
import json
import re
import struct
from typing import Any

import numpy as np
from absl import logging
from etils import epath

from albert_jax import model as model_lib
from albert_jax.checkpoints import hf
from albert_jax.checkpoints.errors import CheckpointError

CONFIG_NAME = "albert_config.json"
_TABLE_MAGIC = 0xDB4775248B80FB57  # LevelDB/TensorFlow SSTable footer magic.
_FOOTER_SIZE = 48  # Two block handles padded to 40 bytes, then the 8-byte magic.
_BLOCK_TRAILER_SIZE = 5  # One byte compression type, four bytes masked CRC32C.
_LITTLE_ENDIAN = 0  # BundleHeaderProto.Endianness.LITTLE
# tensorflow/core/framework/types.proto DataType values → NumPy dtypes.
_DTYPES = {
  1: np.float32,
  2: np.float64,
  3: np.int32,
  4: np.uint8,
  5: np.int16,
  6: np.int8,
  9: np.int64,
  10: np.bool_,
  17: np.uint16,
  19: np.float16,
  22: np.uint32,
  23: np.uint64,
}
_DT_BFLOAT16 = 14
_SKIPPED = re.compile(r"(^|/)(global_step|adam_[mv]|lamb_[mv]|Momentum|ExponentialMovingAverage)($|/)")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
  """A protobuf/LevelDB base-128 varint at `pos` → (value, position after it)."""
  value = shift = 0
  while True:
    byte = buf[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      return value, pos
    shift += 7


def _proto_fields(buf: bytes) -> list[tuple[int, Any]]:
  """A protobuf message → [(field number, value)]: ints for varint/fixed fields, bytes for length-delimited."""
  fields, pos = [], 0
  while pos < len(buf):
    key, pos = _varint(buf, pos)
    number, wire_type = key >> 3, key & 7
    if wire_type == 0:
      value, pos = _varint(buf, pos)
    elif wire_type == 1:
      value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
    elif wire_type == 2:
      size, pos = _varint(buf, pos)
      value, pos = buf[pos : pos + size], pos + size
    elif wire_type == 5:
      value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
    else:
      raise ValueError(f"unsupported protobuf wire type {wire_type}")
    fields.append((number, value))
  return fields


def _block(data: bytes, handle: bytes) -> list[tuple[bytes, bytes]]:
  """The (key, value) entries of the SSTable block that `handle` (offset, size varints) points to."""
  offset, pos = _varint(handle, 0)
  size, _ = _varint(handle, pos)
  if data[offset + size] != 0:
    raise ValueError(
      "the index is compressed; re-save the checkpoint with TensorFlow's default (uncompressed) settings"
    )
  block = data[offset : offset + size]
  num_restarts = struct.unpack_from("<I", block, size - 4)[0]
  end = size - 4 - 4 * num_restarts  # Restart points (uint32 each) close the block; entries come before them.
  entries, pos, key = [], 0, b""
  while pos < end:
    shared, pos = _varint(block, pos)  # Keys are prefix-compressed against the previous key.
    unshared, pos = _varint(block, pos)
    value_size, pos = _varint(block, pos)
    key = key[:shared] + block[pos : pos + unshared]
    pos += unshared
    entries.append((key, block[pos : pos + value_size]))
    pos += value_size
  return entries


def _index_entries(index_file: epath.Path) -> dict[str, bytes]:
  """Every key of the `.index` SSTable → its serialized proto."""
  data = index_file.read_bytes()
  if len(data) < _FOOTER_SIZE or struct.unpack_from("<Q", data, len(data) - 8)[0] != _TABLE_MAGIC:
    raise ValueError(f"{index_file} is not a TensorFlow checkpoint index (no SSTable footer)")
  footer = data[-_FOOTER_SIZE:]
  _, pos = _varint(footer, _varint(footer, 0)[1])  # Skip the metaindex handle (offset, size).
  index_handle = footer[pos:]
  entries = {}
  for _, data_handle in _block(data, index_handle):
    for key, value in _block(data, data_handle):
      entries[key.decode("utf-8")] = value
  return entries


def _shape(shape_proto: bytes) -> tuple[int, ...]:
  """TensorShapeProto → shape; each `dim` (field 2) is a message with `size` in field 1."""
  dims = []
  for number, dim in _proto_fields(shape_proto):
    if number == 2:
      dims.append(dict(_proto_fields(dim)).get(1, 0))
  return tuple(dims)


def read_bundle(prefix, skip=lambda name: False) -> dict[str, np.ndarray]:
  """Every tensor of the checkpoint at `prefix` (whose `.index` is `PREFIX.index`) except those `skip` names.

  Args:
    prefix: the checkpoint prefix, e.g. `albert_base/model.ckpt-best`.
    skip: a predicate on variable names; those tensors are not read from the data files.

  Returns:
    Variable name → NumPy array (bfloat16 comes back as float32).
  """
  prefix = epath.Path(prefix)
  entries = _index_entries(epath.Path(f"{prefix}.index"))
  header = dict(_proto_fields(entries.pop("", b"")))
  num_shards, endianness = header.get(1, 1), header.get(2, _LITTLE_ENDIAN)
  if endianness != _LITTLE_ENDIAN:
    raise ValueError(f"{prefix} was written big-endian, which this reader does not support")
  tensors = {}
  with contextlib.ExitStack() as stack:
    shards = {}  # Opened on first use; only the wanted tensors are read (optimizer slots can be 2/3 of the bytes).
    for name, entry in entries.items():
      if skip(name):
        continue
      fields = dict(_proto_fields(entry))  # BundleEntryProto: dtype, shape, shard_id, offset, size, crc32c, slices.
      if 7 in fields:
        raise ValueError(f"variable {name!r} is stored as partitioned slices, which this reader does not support")
      shard_id = fields.get(3, 0)
      if shard_id not in shards:
        shard = epath.Path(f"{prefix}.data-{shard_id:05d}-of-{num_shards:05d}")
        shards[shard_id] = stack.enter_context(shard.open("rb"))
      shards[shard_id].seek(fields.get(4, 0))
      raw = shards[shard_id].read(fields.get(5, 0))
      tensors[name] = _tensor(name, fields.get(1, 0), _shape(fields.get(2, b"")), raw)
  return tensors


def _tensor(name: str, dtype: int, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
  """The bytes of one tensor as an array of TensorFlow dtype number `dtype`."""
  if dtype == _DT_BFLOAT16:
    stored = np.dtype("<u2")  # The upper half of a float32.
  elif dtype in _DTYPES:
    stored = np.dtype(_DTYPES[dtype]).newbyteorder("<")
  else:
    raise ValueError(f"variable {name!r} has TensorFlow dtype {dtype}, which this reader does not support")
  if len(raw) != stored.itemsize * int(np.prod(shape)):
    raise ValueError(
      f"variable {name!r}: {len(raw)} bytes do not hold a tensor of shape {shape}; the data file "
      "is truncated or does not belong to this index"
    )
  array = np.frombuffer(raw, stored).reshape(shape)
  return (array.astype(np.uint32) << 16).view(np.float32) if dtype == _DT_BFLOAT16 else array


# ---------------------------------------------------------------------------
# Finding checkpoints and their config.


def find_prefix(path) -> epath.Path | None:
  """The checkpoint prefix that `path` names, or None when `path` is not a TensorFlow checkpoint.

  `path` may be the prefix itself (`.../model.ckpt-best`), its `.index` file,
  a directory holding one checkpoint (or a `checkpoint` state file naming
  the newest), or a TF-Hub module directory (`variables/variables`). A
  directory with a `config.json` is a Hugging Face or albert_jax checkpoint,
  never a TensorFlow one.
  """
  path = epath.Path(path)
  if path.suffix == ".index" and path.is_file():
    return path.with_suffix("")
  if epath.Path(f"{path}.index").is_file():
    return path
  if not path.is_dir() or (path / "config.json").exists():
    return None
  state = path / "checkpoint"
  if state.is_file():
    match = re.search(r'^model_checkpoint_path:\s*"(.*)"', state.read_text(), re.MULTILINE)
    if match:
      prefix = path / epath.Path(match.group(1)).name  # Absolute paths in the file go stale when copied.
      if epath.Path(f"{prefix}.index").is_file():
        return prefix
  indexes = sorted(path.glob("*.index")) or sorted(path.glob("variables/*.index"))
  if len(indexes) > 1:
    raise CheckpointError(
      f"{path} holds several TensorFlow checkpoints ({', '.join(p.stem for p in indexes)}); pass the prefix of "
      f"the one you want, e.g. {indexes[-1].with_suffix('')}"
    )
  return indexes[0].with_suffix("") if indexes else None


def _find_config(prefix: epath.Path) -> epath.Path:
  for directory in (prefix.parent, prefix.parent.parent):
    if (directory / CONFIG_NAME).is_file():
      return directory / CONFIG_NAME
  raise CheckpointError(
    f"No {CONFIG_NAME} beside the TensorFlow checkpoint {prefix}. Put the model's {CONFIG_NAME} (it comes in "
    "every google-research/albert release archive) in that directory."
  )


def config_from_original(values: dict[str, Any]) -> model_lib.AlbertConfig:
  """An original `albert_config.json` → AlbertConfig.

  The original's "gelu" is the tanh approximation (modeling.py `gelu`), which
  Hugging Face and albert_jax call "gelu_new".
  """
  act = values.get("hidden_act", "gelu")
  return hf.config_from_hf({**values, "model_type": "albert", "hidden_act": "gelu_new" if act == "gelu" else act})


# ---------------------------------------------------------------------------
# TF names → Hugging Face names.

_LAYER = r"bert/encoder/transformer/group_(\d+)/inner_group_(\d+)/"
_HF_LAYER = r"albert.encoder.albert_layer_groups.\1.albert_layers.\2."
# (pattern over the scope without its leaf, Hugging Face module name); `\1`, `\2` are group and inner group.
_SCOPES = [
  (r"bert/embeddings/(word|position|token_type)_embeddings", r"albert.embeddings.\1_embeddings"),
  (r"bert/embeddings/LayerNorm", "albert.embeddings.LayerNorm"),
  (r"bert/encoder/embedding_hidden_mapping_in", "albert.encoder.embedding_hidden_mapping_in"),
  (_LAYER + r"attention_1/self/(query|key|value)", _HF_LAYER + r"attention.\3"),
  (_LAYER + r"attention_1/output/dense", _HF_LAYER + "attention.dense"),
  (_LAYER + r"LayerNorm", _HF_LAYER + "attention.LayerNorm"),
  (_LAYER + r"ffn_1/intermediate/dense", _HF_LAYER + "ffn"),
  (_LAYER + r"ffn_1/intermediate/output/dense", _HF_LAYER + "ffn_output"),
  (_LAYER + r"LayerNorm_1", _HF_LAYER + "full_layer_layer_norm"),
  (r"bert/pooler/dense", "albert.pooler"),
  (r"cls/predictions/transform/dense", "predictions.dense"),
  (r"cls/predictions/transform/LayerNorm", "predictions.LayerNorm"),
  (r"cls/predictions", "predictions"),
  (r"cls/seq_relationship", "sop_classifier.classifier"),
]
# Leaf name → (Hugging Face leaf, transpose). TF kernels are [in, out]; PyTorch weights are [out, in].
_LEAVES = {
  "kernel": ("weight", True),
  "bias": ("bias", False),
  "gamma": ("weight", False),
  "beta": ("bias", False),
  "output_bias": ("bias", False),
  "output_weights": ("weight", False),
}


def _hf_name(name: str) -> tuple[str, bool] | None:
  """A TF variable name → (Hugging Face key, transpose?), or None for a variable ALBERT does not use."""
  for pattern, hf_scope in _SCOPES:
    if re.fullmatch(pattern, name):  # The embedding tables: the scope is the variable itself.
      return re.sub(pattern, hf_scope, name) + ".weight", False
    scope, _, leaf = name.rpartition("/")
    if leaf in _LEAVES and re.fullmatch(pattern, scope):
      hf_leaf, transpose = _LEAVES[leaf]
      return f"{re.sub(pattern, hf_scope, scope)}.{hf_leaf}", transpose
  return None


def to_hf_state(variables: dict[str, np.ndarray], cfg: model_lib.AlbertConfig) -> dict[str, np.ndarray]:
  """TF variables → a Hugging Face `AlbertForPreTraining` state dict (for `hf.hf_to_params`)."""
  state, unused = {}, []
  for name, value in variables.items():
    mapped = _hf_name(name.removeprefix("module/"))
    if mapped is None:
      unused.append(name)
    else:
      key, transpose = mapped
      state[key] = value.T if transpose else value
  if unused:  # e.g. a fine-tuned task head, which AlbertForPreTraining has no place for
    logging.warning(
      "Ignoring %d TensorFlow variables that are not ALBERT pretraining weights: %s", len(unused), sorted(unused)[:8]
    )
  if not any(k.startswith("albert.encoder.albert_layer_groups.") for k in state):
    raise CheckpointError(
      f"The TensorFlow checkpoint has no ALBERT encoder variables (bert/encoder/transformer/group_0/...); its "
      f"variables are {sorted(variables)[:8]}... Is it an ALBERT checkpoint (not BERT or another model)?"
    )
  if "albert.encoder.embedding_hidden_mapping_in.weight" not in state and cfg.embedding_size == cfg.hidden_size:
    # The original creates this projection only when E != H; an identity map is the same computation.
    state["albert.encoder.embedding_hidden_mapping_in.weight"] = np.eye(cfg.hidden_size, dtype=np.float32)
    state["albert.encoder.embedding_hidden_mapping_in.bias"] = np.zeros(cfg.hidden_size, np.float32)
  return state


def load(prefix, complete: bool = True) -> tuple[model_lib.AlbertConfig, dict[str, Any]]:
  """An original ALBERT TF checkpoint (prefix, with `albert_config.json` beside it) → (config, params)."""
  prefix = epath.Path(prefix)
  config_file = _find_config(prefix)
  try:
    values = json.loads(config_file.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"Cannot read {config_file}: {e}") from None
  cfg = config_from_original(values)
  try:
    variables = read_bundle(prefix, skip=lambda name: bool(_SKIPPED.search(name)))
  except (OSError, ValueError, IndexError, struct.error) as e:
    raise CheckpointError(f"Cannot read the TensorFlow checkpoint {prefix}: {e}") from None
  return cfg, hf.hf_to_params(to_hf_state(variables, cfg), cfg, complete=complete)

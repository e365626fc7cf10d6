"""ALBERT's attention, softmax(q·kᵀ/√d + padding mask)·v, computed by XLA or by a fused flash kernel.

`AlbertConfig.attention` chooses the implementation:

  'xla'    two einsums around a float32 softmax: the [B, heads, Q, T] probabilities are materialised (and kept
           for the backward pass unless the remat policy recomputes them). The only path with attention dropout.
  'flash'  the fused kernel of the platform the step is compiled for, which never materialises the
           probabilities:
             TPU  the Pallas kernel `jax.experimental.pallas.ops.tpu.flash_attention`, inside a `shard_map` over
                  the mesh axes of the batch and the heads (Mosaic kernels cannot be partitioned automatically);
                  the padding mask becomes segment ids, keys are padded to a multiple of 128 (the kernel's
                  lane width) and more than 128 queries too; fewer queries (the last layer's gathered [CLS] and
                  masked positions) run as one query block; on TPU v2/v3 the kernel multiplies float32 tiles
                  (Mosaic has no bfloat16 q·kᵀ there);
             GPU  `jax.nn.dot_product_attention(implementation='cudnn')` with the key lengths (right padding,
                  as every albert_jax input); cuDNN takes bfloat16 or float16 only;
             else (a CPU; a GPU computing in float32) the 'xla' path, said once in the log.
           With attention dropout active (`attention_probs_dropout_prob` > 0 in a training step) 'flash' also
           takes the 'xla' path for that call, since no fused kernel applies dropout to its probabilities;
           `config_lib.check` warns about it.

Both paths compute the same function: tests/test_attention.py runs the Pallas kernel in interpret mode on a
CPU (`pallas_interpret_mode`) against the XLA path, forward and gradients.

For remat policies the flash kernel's residuals carry names (`CONTEXT`, `SOFTMAX_STATS`): a policy that saves
them keeps the backward pass from running the forward kernel again (`model.REMAT_POLICIES`).
"""

import contextlib
import functools

import flax.linen as nn
import jax
import jax.ad_checkpoint  # noqa: F401  (makes jax.ad_checkpoint an attribute)
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.ad_checkpoint import checkpoint_name
from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash

from albert_jax import sharding

IMPLEMENTATIONS = ("xla", "flash")
CONTEXT = "context"  # the attention's output before the output projection, [B, Q, heads, head_dim]
SOFTMAX_STATS = ("softmax_max", "softmax_sum")  # the flash kernel's per-query row max and normaliser
LANES = 128  # the TPU kernel's key blocks are multiples of this


def attention(q, k, v, mask, implementation: str = "xla", dropout=None):
  """[B, Q, heads, D] queries against [B, T, heads, D] keys and values; `mask` [B, T] is 1 at real keys.

  `dropout`: None, or a function applied to the [B, heads, Q, T] probabilities (attention dropout; it
  needs the XLA path). Every query, padded ones too, attends to the real keys only; a row without any real
  key attends to all T keys evenly, as the additive mask of the original does.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention={implementation!r} is not one of {IMPLEMENTATIONS}.")
  kernel = flash_kernel(q.dtype) if implementation == "flash" and dropout is None else None
  if kernel == "pallas_tpu":
    return checkpoint_name(pallas_tpu_attention(q, k, v, mask), CONTEXT)
  if kernel == "cudnn":
    return checkpoint_name(cudnn_attention(q, k, v, mask), CONTEXT)
  return checkpoint_name(xla_attention(q, k, v, mask, dropout), CONTEXT)


def xla_attention(q, k, v, mask, dropout=None):
  """Scores in float32, the additive mask (the most negative float32 at padded keys), softmax, dropout, einsum."""
  bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  probs = jax.nn.softmax(scores / jnp.sqrt(q.shape[-1]).astype(jnp.float32) + bias, axis=-1)
  if dropout is not None:
    probs = dropout(probs)
  return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


# ---------------------------------------------------------------------------
# Which fused kernel.

_INTERPRET_PALLAS = [False]


@contextlib.contextmanager
def pallas_interpret_mode():
  """Runs 'flash' on a CPU as the Pallas TPU kernel in Pallas' HLO interpreter: the kernel's own arithmetic,
  slowly. For tests. (The public `pltpu.force_tpu_interpret_mode` cannot run under `jax.checkpoint`, which every
  remat policy uses; this is the private option that `pallas_call(interpret=True)` sets, part of the jit cache
  key.)"""
  from jax._src import config as jax_config  # pylint: disable=g-import-not-at-top

  option = jax_config.pallas_tpu_interpret_mode_context_manager
  previous = option.swap_local(True)
  _INTERPRET_PALLAS.append(True)
  try:
    yield
  finally:
    _INTERPRET_PALLAS.pop()
    option.set_local(previous)


def target_platform() -> str:
  """The platform the step is traced for: the ambient mesh's devices (a TPU slice compiled from a CPU host
  counts as TPU), else the default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  return jax.default_backend() if mesh.empty else mesh.abstract_device.platform


@functools.cache
def _say_once(message: str):
  logging.warning(message)


def flash_kernel(dtype) -> str | None:
  """'pallas_tpu', 'cudnn', or None when this platform and dtype have no fused kernel (the XLA path)."""
  platform = target_platform()
  if platform == "tpu" or (platform == "cpu" and _INTERPRET_PALLAS[-1]):
    return "pallas_tpu"
  if platform in ("gpu", "cuda"):
    if jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16):
      return "cudnn"
    _say_once("attention='flash': cuDNN attention takes bfloat16 or float16; float32 uses the XLA path.")
    return None
  _say_once(f"attention='flash': no fused attention kernel on {platform}; using the XLA path.")
  return None


# ---------------------------------------------------------------------------
# TPU: Pallas.


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def kernel_lengths(q_len: int, kv_len: int) -> tuple[int, int]:
  """The (queries, keys) lengths the Pallas kernel runs at: keys padded to a multiple of 128, and queries too
  when there are more than 128 (fewer are one block as they are)."""
  return (q_len if q_len <= LANES else _round_up(q_len, LANES)), _round_up(kv_len, LANES)


def _block(length: int) -> int:
  """The largest of 512, 256, 128 that divides `length` (a multiple of 128)."""
  return next(b for b in (512, 256, 128) if length % b == 0)


def block_sizes(q_len: int, kv_len: int) -> pallas_flash.BlockSizes:
  """Kernel tiles: key blocks divide `kv_len` (a multiple of 128); up to 128 queries are one block."""
  bq = q_len if q_len <= LANES else _block(q_len)
  bk = _block(kv_len)
  return pallas_flash.BlockSizes(
    block_q=bq,
    block_k_major=bk,
    block_k=bk,
    block_b=1,
    block_q_major_dkv=bq,
    block_k_major_dkv=bk,
    block_k_dkv=bk,
    block_q_dkv=bq,
    block_k_major_dq=bk,
    block_k_dq=bk,
    block_q_dq=bq,
  )


def _kernel_precision(dtype):
  """Products of bfloat16 (or float16) tiles in the kernel run at the default precision, accumulating in float32:
  Mosaic refuses a float32-precision product of bfloat16 tiles (which `jax_default_matmul_precision=highest`,
  as the tests set it, would ask for)."""
  return contextlib.nullcontext() if dtype == jnp.float32 else jax.default_matmul_precision("default")


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _flash(q, k, v, segment_ids, sm_scale, blocks):
  # The kernel module's own forward and backward (private; jax is pinned in requirements.txt), re-wrapped so that
  # its residuals carry names a remat policy can save.
  with _kernel_precision(q.dtype):
    return pallas_flash._flash_attention(q, k, v, None, segment_ids, False, False, sm_scale, blocks, False)  # pylint: disable=protected-access


def _flash_forward(q, k, v, segment_ids, sm_scale, blocks):
  with _kernel_precision(q.dtype):
    o, row_sum, row_max = pallas_flash._flash_attention(
      q, k, v, None, segment_ids, True, False, sm_scale, blocks, False
    )  # pylint: disable=protected-access
  row_max, row_sum = checkpoint_name(row_max, SOFTMAX_STATS[0]), checkpoint_name(row_sum, SOFTMAX_STATS[1])
  return o, (q, k, v, segment_ids, checkpoint_name(o, CONTEXT), row_sum, row_max)


def _flash_backward(sm_scale, blocks, residuals, do):
  q, k, v, segment_ids, o, row_sum, row_max = residuals
  residuals = (q, k, v, None, segment_ids, o, row_sum, row_max)
  with _kernel_precision(q.dtype):
    dq, dk, dv, _, _ = pallas_flash._flash_attention_bwd(False, False, sm_scale, blocks, False, residuals, do)  # pylint: disable=protected-access
  return dq, dk, dv, None


_flash.defvjp(_flash_forward, _flash_backward)


def _rows_without_keys_attend_evenly(q, mask):
  """(queries, key mask) for a fused kernel: an example without any real key (all padding) attends to all its
  keys with equal weight, as under the additive mask (every score is then the most negative float32): its
  queries become 0 and every key counts."""
  has_key = jnp.any(mask > 0, axis=1)
  q = jnp.where(has_key[:, None, None, None], q, jnp.zeros_like(q))
  return q, (mask > 0) | ~has_key[:, None]


def _needs_float32_tiles() -> bool:
  """TPU v2 and v3: Mosaic has no bfloat16 product with a transposed right-hand side there (the kernel's q·kᵀ;
  "Unsupported matmul RHS type on target: vector<128x128xbf16>"), so the kernel takes float32 tiles."""
  mesh = jax.sharding.get_abstract_mesh()
  return not mesh.empty and mesh.abstract_device.device_kind.startswith(("TPU v2", "TPU v3"))


def _pallas_local(q, k, v, mask):
  """One device's share: [B, Q, heads, D] in and out, the kernel in [B, heads, Q, D]."""
  if q.dtype != jnp.float32 and _needs_float32_tiles():
    return _pallas_local(*(x.astype(jnp.float32) for x in (q, k, v)), mask).astype(q.dtype)
  q_len, kv_len = q.shape[1], k.shape[1]
  q_padded, kv_padded = kernel_lengths(q_len, kv_len)
  q_pad, kv_pad = q_padded - q_len, kv_padded - kv_len
  q, keys = _rows_without_keys_attend_evenly(q, mask)
  pad = lambda x, n: jnp.pad(x, [(0, 0), (0, n)] + [(0, 0)] * (x.ndim - 2))
  to_kernel = lambda x, n: jnp.swapaxes(pad(x, n), 1, 2)
  keys = pad(keys.astype(jnp.int32), kv_pad)
  segment_ids = pallas_flash.SegmentIds(q=jnp.ones((q.shape[0], q_len + q_pad), jnp.int32), kv=keys)
  o = _flash(
    to_kernel(q, q_pad),
    to_kernel(k, kv_pad),
    to_kernel(v, kv_pad),
    segment_ids,
    q.shape[-1] ** -0.5,
    block_sizes(q_padded, kv_padded),
  )
  return jnp.swapaxes(o, 1, 2)[:, :q_len]


def _auto_axes(mesh) -> set[str]:
  """The mesh axes jit partitions automatically (not made manual by an enclosing `shard_map`)."""
  return {n for n, t in zip(mesh.axis_names, mesh.axis_types) if t == jax.sharding.AxisType.Auto}


def _manual_axes(logical: str, size: int, mesh) -> tuple[str, ...] | None:
  """The mesh axes the logical rules give `logical`, keeping the Auto ones whose product divides `size`."""
  auto = _auto_axes(mesh)
  axes = tuple(
    a for a in sharding.entry_axes(nn.logical_to_mesh_axes((logical,))[0]) if a in auto and mesh.shape[a] > 1
  )
  while axes and size % int(np.prod([mesh.shape[a] for a in axes])):
    axes = axes[:-1]  # e.g. the batch of 1 the model is initialised with
  return axes or None


def pallas_tpu_attention(q, k, v, mask):
  """The Pallas kernel in a `shard_map` manual over every automatic mesh axis (Mosaic kernels cannot be
  partitioned automatically, even over an axis of size 1): batch and heads split as the logical axis rules in
  effect say, the rest replicated. Axes already manual (an enclosing `shard_map`, e.g. gradient accumulation's)
  are left alone."""
  mesh = jax.sharding.get_abstract_mesh()
  auto = _auto_axes(mesh)
  if mesh.empty or not auto:
    return _pallas_local(q, k, v, mask)
  batch, heads = _manual_axes("batch", q.shape[0], mesh), _manual_axes("heads", q.shape[2], mesh)
  spec = jax.sharding.PartitionSpec(batch, None, heads, None)
  return jax.shard_map(
    _pallas_local,
    mesh=mesh,
    in_specs=(spec, spec, spec, jax.sharding.PartitionSpec(batch, None)),
    out_specs=spec,
    axis_names=auto,
    check_vma=False,  # the kernel's outputs carry no varying-axes type
  )(q, k, v, mask)


# ---------------------------------------------------------------------------
# GPU: cuDNN.


def cudnn_attention(q, k, v, mask):
  """cuDNN's fused attention with per-example key lengths (right-padded inputs; no bias tensor)."""
  q, keys = _rows_without_keys_attend_evenly(q, mask)
  lengths = jnp.sum(keys, axis=-1, dtype=jnp.int32)
  return jax.nn.dot_product_attention(q, k, v, key_value_seq_lengths=lengths, implementation="cudnn")

"""Analytic FLOPs of ALBERT and the peak FLOP/s of the devices, for MFU.

Counts multiply-adds of the matrix products as 2 FLOPs each (elementwise work,
softmax and LayerNorm are left out, as MaxText and PaLM count). A training step
is 3x the forward pass (forward, and backward for activations and weights);
recomputation under remat is not counted, so MFU stays comparable across remat
policies.
"""

import time

import jax
import jax.numpy as jnp

from albert_jax import model as model_lib

# Dense bf16 peak per chip (jax device), FLOP/s, from the vendors' data sheets.
PEAK_FLOPS = {
  "TPU v2": 45e12 / 2,  # per core: jax sees each of the two cores of a chip as a device
  "TPU v3": 123e12 / 2,
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v5": 459e12,
  "TPU v6 lite": 918e12,
  "TPU v6e": 918e12,
  "NVIDIA H100": 989e12,
  "NVIDIA H200": 989e12,
  "NVIDIA A100": 312e12,
}


def forward_flops_per_sequence(
  config: model_lib.AlbertConfig, seq_len: int, num_predictions: int | None, full_last_layer: bool = False
) -> float:
  """Forward-pass FLOPs for one sequence; MLM logits at `num_predictions` positions (None: every position).

  With `num_predictions`, the last layer of a model that
  `model.gathers_last_layer` runs its queries, attention output and FFN at
  [CLS] and the predicted positions only, as `model.AlbertEncoder` does; keys
  and values stay at every position. `full_last_layer=True` counts that layer
  at every position instead.
  """
  T, E, H, I, V = seq_len, config.embedding_size, config.hidden_size, config.intermediate_size, config.vocab_size  # noqa: E741

  def layer(queries):  # key/value projections at T, the rest at `queries` positions
    return 2 * T * H * 2 * H + 2 * queries * H * (2 * H + 2 * I) + 2 * 2 * queries * T * H

  applications = config.num_hidden_layers * config.inner_group_num
  P = T if num_predictions is None else num_predictions
  gathered = not full_last_layer and num_predictions is not None and model_lib.gathers_last_layer(config)
  last = layer(min(T, P + 1)) if gathered else layer(T)
  return 2 * T * E * H + (applications - 1) * layer(T) + last + 2 * H * H + 2 * H * 2 + 2 * P * (H * E + E * V)


def train_flops_per_step(
  config: model_lib.AlbertConfig,
  batch_size: int,
  seq_len: int,
  num_predictions: int | None,
  full_last_layer: bool = False,
) -> float:
  return 3 * batch_size * forward_flops_per_sequence(config, seq_len, num_predictions, full_last_layer)


def device_peak_flops(device=None, measure_cpu: bool = True) -> float | None:
  """Peak FLOP/s of one device: the data-sheet figure, or for a CPU a measured float32 matmul rate."""
  device = device or jax.devices()[0]
  kind = device.device_kind
  for name, peak in PEAK_FLOPS.items():
    if kind.startswith(name):
      return peak
  if device.platform == "cpu" and measure_cpu:
    return measured_matmul_flops()
  return None


def measured_matmul_flops(n: int = 2048, repeats: int = 5, dtype=jnp.float32) -> float:
  """Best FLOP/s of an n×n matmul on the default device: the machine's practical limit for dense work."""
  a = jnp.ones((n, n), dtype)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best

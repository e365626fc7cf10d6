"""Shared pieces of the side-by-side benchmarks: inputs, the PyTorch side, timing, the machine's peak.

Every comparison runs its implementations round-robin in one process, so
that the noise of a shared machine hits all of them alike; results are
reported as medians with their spread, and as ratios.

PyTorch's OpenMP threads are told to sleep rather than spin while waiting
(OMP_WAIT_POLICY=PASSIVE, set before PyTorch loads, unless already set): on a
loaded machine spinning threads made PyTorch eager 10x slower here (2x32
forward 3.9 s instead of 0.45 s), which would flatter albert_jax.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# pylint: disable=g-import-not-at-top,wrong-import-position
import gc
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from albert_jax import model as model_lib
from albert_jax.checkpoints import hf


def set_threads() -> int:
  """Gives PyTorch every core, as XLA:CPU takes by default; returns the count for the report."""
  import torch

  torch.set_num_threads(os.cpu_count() or 1)
  return torch.get_num_threads()


def pretraining_batch(config: model_lib.AlbertConfig, batch: int, seq: int, predictions: int, seed: int = 0):
  """A full-length pretraining batch as the data pipeline yields it (NumPy), with distinct masked positions."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(5, config.vocab_size, (batch, seq)).astype(np.int32)
  types = np.zeros_like(ids)
  types[:, seq // 2 :] = 1
  positions = np.stack([np.sort(rng.choice(np.arange(1, seq), predictions, replace=False)) for _ in range(batch)])
  return {
    "input_ids": ids,
    "input_mask": np.ones_like(ids),
    "token_type_ids": types,
    "masked_lm_positions": positions.astype(np.int32),
    "masked_lm_ids": rng.randint(5, config.vocab_size, (batch, predictions)).astype(np.int32),
    "masked_lm_weights": np.ones((batch, predictions), np.float32),
    "sentence_order_label": rng.randint(0, 2, (batch,)).astype(np.int32),
  }


def hf_model(config: model_lib.AlbertConfig, cls_name: str = "AlbertForPreTraining", **extra):
  """The Hugging Face PyTorch model with the same configuration (random weights)."""
  import torch
  import transformers

  torch.manual_seed(0)
  hf_config = transformers.AlbertConfig(**hf.config_to_hf(config), **extra)
  return getattr(transformers, cls_name)(hf_config)


def hf_pretraining_inputs(batch):
  """Torch tensors for `AlbertForPreTraining(..., labels=, sentence_order_label=)`.

  MLM labels are -100 except at the masked positions: Hugging Face's own loss
  then averages over exactly the positions albert_jax predicts, but its head
  computes logits at every position first.
  """
  import torch

  labels = np.full_like(batch["input_ids"], -100)
  np.put_along_axis(labels, batch["masked_lm_positions"], batch["masked_lm_ids"], axis=1)
  as_long = lambda x: torch.tensor(x, dtype=torch.long)
  return dict(
    input_ids=as_long(batch["input_ids"]),
    attention_mask=as_long(batch["input_mask"]),
    token_type_ids=as_long(batch["token_type_ids"]),
    labels=as_long(labels),
    sentence_order_label=as_long(batch["sentence_order_label"]),
  )


class TorchLamb:
  """ALBERT's LAMB in PyTorch, step for step as `albert_jax.optim` (pretraining setting).

  Global-norm clipping at 1.0, Adam moments without bias correction, weight
  decay 0.01 and the trust ratio on all but LayerNorm and bias parameters.
  PyTorch ships no LAMB; this is the same arithmetic, so both sides do the
  same optimizer work.
  """

  def __init__(self, named_parameters, lr=1e-4, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01):
    import torch

    self.params = [(p, "LayerNorm" in n or "layer_norm" in n or "bias" in n) for n, p in named_parameters]
    self.m = [torch.zeros_like(p) for p, _ in self.params]
    self.v = [torch.zeros_like(p) for p, _ in self.params]
    self.lr, self.b1, self.b2, self.eps, self.weight_decay = lr, b1, b2, eps, weight_decay

  def step(self):
    import torch

    with torch.no_grad():
      torch.nn.utils.clip_grad_norm_([p for p, _ in self.params], 1.0)
      for (p, excluded), m, v in zip(self.params, self.m, self.v):
        g = p.grad
        m.mul_(self.b1).add_(g, alpha=1 - self.b1)
        v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
        update = m / (v.sqrt() + self.eps)
        ratio = 1.0
        if not excluded:
          update.add_(p, alpha=self.weight_decay)
          p_norm, u_norm = p.norm(), update.norm()
          ratio = torch.where((p_norm > 0) & (u_norm > 0), p_norm / u_norm, torch.ones_like(p_norm))
        p.sub_(self.lr * ratio * update)
        p.grad = None


MATMUL_N = 2048
MATMULS_PER_CALL = 10


def matmul_fns(n: int = MATMUL_N) -> dict[str, Callable[[], None]]:
  """Ten back-to-back float32 n×n products through XLA and through PyTorch, as round-robin entries.

  Timed in turn with the implementations, they see the same machine load,
  so `peak_flops` can compare like with like: median with median, best with
  best.
  """
  import torch

  a = jnp.ones((n, n), jnp.float32)
  xla = jax.jit(lambda x: jax.lax.fori_loop(0, MATMULS_PER_CALL, lambda _, y: x @ y * (1.0 / n), x))
  t = torch.ones((n, n))

  def torch_products():
    y = t
    for _ in range(MATMULS_PER_CALL):
      y = torch.mm(t, y) * (1.0 / n)

  return {"matmul/xla": lambda: xla(a).block_until_ready(), "matmul/torch": torch_products}


def peak_flops(times: dict[str, dict[str, float]], n: int = MATMUL_N) -> dict[str, float]:
  """The float32 matmul rate from `matmul_fns` timings: the faster library, at its median and at its best turn."""
  flops = MATMULS_PER_CALL * 2 * n**3
  rates = {
    f"{name}/{kind}": flops / times[name][f"{kind}_s"]
    for name in times
    if name.startswith("matmul/")
    for kind in ("median", "min")
  }
  return {
    **rates,
    "median": max(v for k, v in rates.items() if k.endswith("/median")),
    "best": max(v for k, v in rates.items() if k.endswith("/min")),
  }


def round_robin(
  fns: dict[str, Callable[[], None]], rounds: int, steps: int, pause: float = 0.3
) -> dict[str, list[float]]:
  """Seconds per call of each function, `steps` calls per turn, the functions taking turns for `rounds` rounds.

  `pause` lets the previous implementation's spinning worker threads go idle
  before the next one is timed.
  """
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      gc.collect()
      time.sleep(pause)
      start = time.perf_counter()
      for _ in range(steps):
        fn()
      times[name].append((time.perf_counter() - start) / steps)
  return times


def stats(seconds: list[float]) -> dict[str, float]:
  """Median, best and spread ((max - min) / median) of per-step times."""
  median = statistics.median(seconds)
  return {
    "median_s": median,
    "min_s": min(seconds),
    "max_s": max(seconds),
    "spread": (max(seconds) - min(seconds)) / median,
    "samples": seconds,
  }


def cpu_model() -> str:
  """The CPU as lscpu names it, with its family and model numbers (a virtual machine's name can be bare, as
  "AMD EPYC": family 25 model 17 is Zen 4), and whether it has AVX-512."""
  fields = {}
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    return "unknown CPU"
  avx512 = "avx512f" in fields.get("flags", "").split()
  return (
    f"{fields.get('model name', 'unknown CPU')} (family {fields.get('cpu family', '?')}, model "
    f"{fields.get('model', '?')}), {os.cpu_count()} cores, AVX-512 {'yes' if avx512 else 'no'}"
  )


def machine() -> dict[str, object]:
  import torch

  return {
    "cpu": cpu_model(),
    "cpu_count": os.cpu_count(),
    "torch_threads": torch.get_num_threads(),
    "jax": jax.__version__,
    "torch": torch.__version__,
    "jax_device": jax.devices()[0].device_kind,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
  }

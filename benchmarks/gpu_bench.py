r"""One-GPU training throughput: ALBERT-base, large and xxlarge at seq 512, XLA against fused attention, float32
against bfloat16: tokens/s and MFU.

One command, sized to finish in about 10 minutes on one H100 or H200:

  python -m benchmarks.gpu_bench --json=gpu_bench.json
  python -m benchmarks.gpu_bench --smoke          # tiny shapes, any backend (CPU): checks the script end to end
  python -m benchmarks.gpu_bench --smoke --pallas_interpret  # ... with 'flash' as the Pallas kernel, interpreted

Each model runs the trainer's own jitted step (`pretraining.build`: LAMB, state
donated) in three variants: float32 with XLA attention, bfloat16 with XLA
attention, and bfloat16 with `attention='flash'` (float32 parameters and
optimizer state throughout). 'flash' is the backend's fused kernel: cuDNN on a
GPU, the Pallas kernel on a TPU; where the backend has none (a CPU) the
variant runs the XLA path and the table's kernel column says so. The MFU
denominator is the card's bf16 matrix-product peak MEASURED in the same run
(a large bf16 matmul, best of several); the data-sheet figure from
`albert_jax.tools.flops.PEAK_FLOPS` is shown next to it. A model that runs out
of memory is retried with the remat policies that keep less
(`--remat` first, then save_all, then full), and the table says which ran.
"""

import argparse
import contextlib
import json
import pathlib
import time

import jax
import jax.numpy as jnp
from flax.linen import partitioning as nn_partitioning

from albert_jax import attention as attention_lib
from albert_jax import config_lib, sharding
from albert_jax.tools import flops as flops_lib
from albert_jax.trainers import pretraining
from benchmarks import harness

PREDICTIONS = 20
# Per-model batch at seq 512 for one 80 GB card; xxlarge's 64 heads make attention the memory bound.
DEFAULT_BATCHES = "base=32,large=32,xxlarge=16"
VARIANTS = (("float32", "xla"), ("bfloat16", "xla"), ("bfloat16", "flash"))  # (dtype, attention)
REMAT_FALLBACKS = ("save_all", "full")
SMOKE_MODEL = dict(
  vocab_size=512, embedding_size=16, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
)


def bf16_matmul_peak(n: int, repeats: int) -> float:
  """Best bf16 FLOP/s of an n×n product (float32 accumulation), timed over 10 back-to-back products."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
  chain = jax.jit(
    lambda x: jax.lax.fori_loop(0, 10, lambda _, y: (y @ x).astype(jnp.bfloat16) * jnp.bfloat16(1 / n**0.5), x)
  )
  chain(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    chain(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 10 * 2 * n**3 / best


def run_model(preset: str, batch_size: int, seq: int, variant: dict, steps: int, smoke: bool) -> dict[str, float]:
  """Compiles and times the training step; returns seconds per step, compile seconds and FLOPs per step."""
  config = config_lib.pretraining(preset)
  config.batch_size, config.warmup_steps, config.num_train_steps = batch_size, 10, 1000
  config.data.max_seq_length, config.data.max_predictions_per_seq = seq, PREDICTIONS
  config.model.update(dict(SMOKE_MODEL if smoke else {}, **variant))
  model_config = config_lib.model_config(config)
  mesh = sharding.create_mesh(config.mesh, jax.devices()[:1])
  rules = sharding.axis_rules(config)
  setup = pretraining.build(config, model_config, mesh, rules)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    kernel = attention_lib.flash_kernel(model_config.dtype) if model_config.attention == "flash" else None
    state = setup.init(jax.random.PRNGKey(0))
    batch = sharding.global_batch(harness.pretraining_batch(model_config, batch_size, seq, PREDICTIONS), mesh)
    rng = jax.random.PRNGKey(1)
    start = time.perf_counter()
    state, metrics = setup.train_step(state, batch, rng)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    state, metrics = setup.train_step(state, batch, rng)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = setup.train_step(state, batch, rng)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / steps
  loss = float(pretraining.summarize(jax.device_get(metrics))["loss"])
  return {
    "kernel": kernel or "xla",
    "step_s": step_s,
    "compile_s": compile_s,
    "loss": loss,
    "flops_per_step": flops_lib.train_flops_per_step(model_config, batch_size, seq, PREDICTIONS),
  }


def run_with_fallbacks(preset, batch_size, seq, variant, args, steps) -> dict:
  """`run_model` with the first remat policy, from `--remat` on, whose step fits in memory."""
  policies = [args.remat] + [p for p in REMAT_FALLBACKS if p != args.remat]
  for i, remat in enumerate(policies):
    try:
      return dict(run_model(preset, batch_size, seq, dict(variant, remat_policy=remat), steps, args.smoke), remat=remat)
    except Exception as e:  # pylint: disable=broad-except  # out of memory shows as XlaRuntimeError
      if "RESOURCE_EXHAUSTED" not in str(e) or i == len(policies) - 1:
        raise
  raise AssertionError("unreachable")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--presets", default="base,large,xxlarge")
  parser.add_argument("--batches", default=DEFAULT_BATCHES, help="preset=batch, comma-separated")
  parser.add_argument("--seq", type=int, default=512)
  parser.add_argument("--remat", default="none", help="first-try remat policy (out of memory: save_all, then full)")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--smoke", action="store_true", help="tiny model and shapes: checks the script on any backend")
  parser.add_argument(
    "--pallas_interpret", action="store_true", help="on a CPU, run 'flash' as the Pallas TPU kernel in interpret mode"
  )
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  batches = {k: int(v) for k, v in (item.split("=") for item in args.batches.split(","))}
  seq, steps, matmul_n = (64, 2, 256) if args.smoke else (args.seq, args.steps, 8192)
  device = jax.devices()[0]
  peak = bf16_matmul_peak(matmul_n, 3 if args.smoke else 10)
  sheet = flops_lib.device_peak_flops(device, measure_cpu=False)
  results = {
    "device": device.device_kind,
    "platform": device.platform,
    "cpu": harness.cpu_model(),
    "smoke": args.smoke,
    "seq": seq,
    "bf16_matmul_peak": peak,
    "datasheet_peak": sheet,
    "models": {},
  }
  print(
    f"{device.device_kind} ({device.platform}): measured bf16 matmul peak {peak / 1e12:.3g} TFLOP/s"
    + (f", data sheet {sheet / 1e12:.0f}" if sheet else "")
    + (" [SMOKE: tiny shapes]" if args.smoke else "")
  )
  print(
    f"{'model':<8} {'dtype':<8} {'attention':<9} {'kernel':<10} {'batch':>5} {'remat':>8} {'compile s':>9} "
    f"{'step s':>8} {'tokens/s':>10} {'MFU':>6} {'MFU sheet':>9}"
  )
  for preset in args.presets.split(","):
    batch_size = 2 if args.smoke else batches[preset]
    for dtype, attention in VARIANTS:
      interpret = attention_lib.pallas_interpret_mode() if args.pallas_interpret else contextlib.nullcontext()
      with interpret:
        r = run_with_fallbacks(preset, batch_size, seq, dict(dtype=dtype, attention=attention), args, steps)
      r.update(
        batch=batch_size,
        tokens_per_s=batch_size * seq / r["step_s"],
        mfu=r["flops_per_step"] / r["step_s"] / peak,
        mfu_datasheet=r["flops_per_step"] / r["step_s"] / sheet if sheet else None,
      )
      results["models"][f"{preset}/{dtype}/{attention}"] = r
      sheet_mfu = f"{100 * r['mfu_datasheet']:>8.1f}%" if sheet else f"{'-':>9}"
      print(
        f"{preset:<8} {dtype:<8} {attention:<9} {r['kernel']:<10} {batch_size:>5} {r['remat']:>8} "
        f"{r['compile_s']:>9.1f} {r['step_s']:>8.4f} {r['tokens_per_s']:>10.0f} {100 * r['mfu']:>5.1f}% {sheet_mfu}"
      )
  print("MFU: analytic FLOPs (albert_jax.flops, MLM at 20 positions, 3x forward) / step time / measured bf16 peak")
  if args.json:
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
  main()

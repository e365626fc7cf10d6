r"""One-GPU training throughput: ALBERT-base, large and xxlarge at seq 512, bfloat16 compute, tokens/s and MFU.

One command, sized to finish in under 8 minutes on one H100 or H200:

  python -m benchmarks.gpu_bench --json=gpu_bench.json
  python -m benchmarks.gpu_bench --smoke          # tiny shapes, any backend (CPU): checks the script end to end

Each model runs the trainer's own jitted step (`pretraining.build`: LAMB, state
donated) with `dtype=bfloat16` (float32 parameters and optimizer state). The
MFU denominator is the card's bf16 matrix-product peak MEASURED in the same
run (a large bf16 matmul, best of several); the data-sheet figure from
`albert_jax.flops.PEAK_FLOPS` is shown next to it. A model that runs out of
memory is retried once with `remat_policy=full`, and the table says so.
"""

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
from flax.linen import partitioning as nn_partitioning

from albert_jax import config_lib, sharding
from albert_jax.tools import flops as flops_lib
from albert_jax.trainers import pretraining
from benchmarks import harness

PREDICTIONS = 20
# Per-model batch at seq 512 for one 80 GB card; xxlarge's 64 heads make attention the memory bound.
DEFAULT_BATCHES = "base=32,large=32,xxlarge=16"
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


def run_model(preset: str, batch_size: int, seq: int, remat: str, steps: int, smoke: bool) -> dict[str, float]:
  """Compiles and times the training step; returns seconds per step, compile seconds and FLOPs per step."""
  config = config_lib.pretraining(preset)
  config.batch_size, config.warmup_steps, config.num_train_steps = batch_size, 10, 1000
  config.data.max_seq_length, config.data.max_predictions_per_seq = seq, PREDICTIONS
  config.model.update(dict(SMOKE_MODEL if smoke else {}, dtype="bfloat16", remat_policy=remat))
  model_config = config_lib.model_config(config)
  mesh = sharding.create_mesh(config.mesh, jax.devices()[:1])
  rules = sharding.axis_rules(config)
  setup = pretraining.build(config, model_config, mesh, rules)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
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
    "step_s": step_s,
    "compile_s": compile_s,
    "loss": loss,
    "flops_per_step": flops_lib.train_flops_per_step(model_config, batch_size, seq, PREDICTIONS),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--presets", default="base,large,xxlarge")
  parser.add_argument("--batches", default=DEFAULT_BATCHES, help="preset=batch, comma-separated")
  parser.add_argument("--seq", type=int, default=512)
  parser.add_argument("--remat", default="none", help="first-try remat policy (OOM falls back to full)")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--smoke", action="store_true", help="tiny model and shapes: checks the script on any backend")
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
    f"{'model':<8} {'batch':>5} {'remat':>6} {'compile s':>9} {'step s':>8} {'tokens/s':>10} {'MFU':>6} "
    f"{'MFU sheet':>9}"
  )
  for preset in args.presets.split(","):
    batch_size = 2 if args.smoke else batches[preset]
    remat = args.remat
    try:
      r = run_model(preset, batch_size, seq, remat, steps, args.smoke)
    except Exception as e:  # pylint: disable=broad-except  # out of memory shows as XlaRuntimeError
      if "RESOURCE_EXHAUSTED" not in str(e) or remat == "full":
        raise
      remat = "full"
      r = run_model(preset, batch_size, seq, remat, steps, args.smoke)
    r.update(
      batch=batch_size,
      remat=remat,
      tokens_per_s=batch_size * seq / r["step_s"],
      mfu=r["flops_per_step"] / r["step_s"] / peak,
      mfu_datasheet=r["flops_per_step"] / r["step_s"] / sheet if sheet else None,
    )
    results["models"][preset] = r
    sheet_mfu = f"{100 * r['mfu_datasheet']:>8.1f}%" if sheet else f"{'-':>9}"
    print(
      f"{preset:<8} {batch_size:>5} {remat:>6} {r['compile_s']:>9.1f} {r['step_s']:>8.4f} "
      f"{r['tokens_per_s']:>10.0f} {100 * r['mfu']:>5.1f}% {sheet_mfu}"
    )
  print("MFU: analytic FLOPs (albert_jax.flops, MLM at 20 positions, 3x forward) / step time / measured bf16 peak")
  if args.json:
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
  main()

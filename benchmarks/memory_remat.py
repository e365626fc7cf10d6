r"""Memory and time of rematerialisation at seq 512, and the largest ALBERT-xxlarge batch that fits 24 GB on CPU.

What is counted (from XLA's `compiled.memory_analysis()` of the real
`pretraining.build` step, state donated):
  temp       XLA's temporary buffers: activations kept for the backward pass,
             gradients and workspace ("peak activation memory" below);
  total      arguments + outputs - aliased (donated) + temp: the parameters,
             both LAMB moments, the batch and the temporaries, i.e. the peak
             the step needs while it runs.
`--rss` also runs one step per policy in a fresh subprocess and reports its
peak resident set (ru_maxrss), which adds the runtime, PyTorch-free Python
and allocator slack.

Step time: the base model's policies take turns (round robin) in one process.
xxlarge: the batch where `total` first exceeds the budget, found by a
linear fit on two compiled sizes and confirmed by compiling around it.

  python -m benchmarks.memory_remat --json=benchmarks/results/memory_remat.json
"""

import argparse
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
from flax.linen import partitioning as nn_partitioning

from albert_jax import config_lib, sharding
from albert_jax.trainers import pretraining
from benchmarks import harness, train_step_cpu

GB = 1e9


def compiled_memory(preset: str, remat: str, batch_size: int, seq: int) -> dict[str, float]:
  """Bytes of the compiled training step (no execution): temp, arguments, outputs, aliased, total."""
  config = config_lib.pretraining(preset)
  config.batch_size, config.data.max_seq_length = batch_size, seq
  config.model.remat_policy = remat
  model_config = config_lib.model_config(config)
  mesh = sharding.create_mesh(config.mesh, jax.devices()[:1])
  rules = sharding.axis_rules(config)
  setup = pretraining.build(config, model_config, mesh, rules)
  batch = harness.pretraining_batch(model_config, batch_size, seq, train_step_cpu.PREDICTIONS)
  abstract_batch = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(mesh)) for k, v in batch.items()
  }
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    lowered = setup.train_step.lower(setup.abstract_state, abstract_batch, jax.ShapeDtypeStruct((2,), jnp.uint32))
    stats = lowered.compile().memory_analysis()
  out = {
    "temp": stats.temp_size_in_bytes,
    "arguments": stats.argument_size_in_bytes,
    "outputs": stats.output_size_in_bytes,
    "aliased": stats.alias_size_in_bytes,
  }
  out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temp"]
  return out


def largest_batch(preset: str, remat: str, seq: int, budget: float) -> tuple[int, dict[int, float]]:
  """The largest batch whose compiled total fits `budget` bytes (0: none), and every total compiled on the way."""
  totals = {}

  def fits(b):
    if b not in totals:
      totals[b] = compiled_memory(preset, remat, b, seq)["total"]
    return totals[b] <= budget

  if not fits(1):
    return 0, totals
  fits(2)
  guess = max(1, int((budget - totals[1]) // (totals[2] - totals[1])) + 1)
  low, high = (guess, guess + 1) if fits(guess) else (1, guess)
  while fits(high):  # the linear guess was low: widen
    low, high = high, 2 * high
  while high - low > 1:  # fits(low) and not fits(high)
    mid = (low + high) // 2
    low, high = (mid, high) if fits(mid) else (low, mid)
  return low, totals


def rss_of_one_step(remat: str, batch_size: int, seq: int) -> float:
  """Peak resident bytes of a fresh process that builds and runs one base training step."""
  code = (
    "import resource; from benchmarks import harness, train_step_cpu as t; from albert_jax import config_lib; "
    f"c = config_lib.model_config(config_lib.pretraining('base')); "
    f"b = harness.pretraining_batch(c, {batch_size}, {seq}, t.PREDICTIONS); "
    f"t.jax_step({{'remat_policy': '{remat}'}}, b, {batch_size}, {seq})(); "
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
  )
  out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
  return int(out.stdout.split()[-1]) * 1024  # ru_maxrss is in KiB on Linux


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=8, help="base model batch at seq 512")
  parser.add_argument("--seq", type=int, default=512)
  parser.add_argument("--policies", default="none,full,dots")
  parser.add_argument("--rounds", type=int, default=3, help="timed steps per policy (0: skip timing)")
  parser.add_argument("--rss", action="store_true", help="also measure peak RSS in subprocesses")
  parser.add_argument("--xxlarge_budget_gb", type=float, default=24.0)
  parser.add_argument("--xxlarge_policies", default="full,none")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  policies = args.policies.split(",")
  results = {"machine": harness.machine(), "batch": args.batch, "seq": args.seq, "base": {}, "xxlarge": {}}
  for policy in policies:
    results["base"][policy] = {"compiled": compiled_memory("base", policy, args.batch, args.seq)}
    if args.rss:
      results["base"][policy]["rss"] = rss_of_one_step(policy, args.batch, args.seq)
  if args.rounds:
    config = config_lib.model_config(config_lib.pretraining("base"))
    batch = harness.pretraining_batch(config, args.batch, args.seq, train_step_cpu.PREDICTIONS)
    fns = {p: train_step_cpu.jax_step({"remat_policy": p}, batch, args.batch, args.seq) for p in policies}
    for fn in fns.values():
      fn()
    for policy, seconds in harness.round_robin(fns, args.rounds, 1).items():
      results["base"][policy]["time"] = harness.stats(seconds)
  none = results["base"]["none"]
  print(f"ALBERT-base training step, batch {args.batch} x seq {args.seq}, float32, LAMB, state donated")
  print(
    f"{'remat':>6} {'temp GB':>8} {'vs none':>8} {'total GB':>9} {'RSS GB':>7} {'step s':>7} {'spread':>7} "
    f"{'time vs none':>12}"
  )
  for policy, r in results["base"].items():
    temp, total = r["compiled"]["temp"], r["compiled"]["total"]
    rss = f"{r['rss'] / GB:7.2f}" if "rss" in r else f"{'-':>7}"
    t = r.get("time")
    timing = (
      f"{t['median_s']:>7.2f} {100 * t['spread']:>6.0f}% {t['median_s'] / none['time']['median_s']:>12.2f}" if t else ""
    )
    print(f"{policy:>6} {temp / GB:>8.2f} {temp / none['compiled']['temp']:>8.2f} {total / GB:>9.2f} {rss} {timing}")
  budget = args.xxlarge_budget_gb * GB
  for policy in filter(None, args.xxlarge_policies.split(",")):
    batch, totals = largest_batch("xxlarge", policy, args.seq, budget)
    results["xxlarge"][policy] = {"largest_batch": batch, "totals": totals}
    print(
      f"xxlarge seq {args.seq}, remat {policy}: largest batch within {args.xxlarge_budget_gb:g} GB = {batch} "
      f"(compiled totals GB: {', '.join(f'{b}: {v / GB:.1f}' for b, v in sorted(totals.items()))})"
    )
  if args.json:
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
  main()

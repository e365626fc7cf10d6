r"""CPU training step, ALBERT-base float32: albert_jax against Hugging Face PyTorch eager and torch.compile.

Every implementation does one full pretraining step on the same batch:
forward, MLM loss at the 20 masked positions + SOP loss, backward, and a LAMB
update (albert_jax: the real `pretraining.build` step, jitted with the state
donated; PyTorch: `AlbertForPreTraining(..., labels=, sentence_order_label=)`
and `harness.TorchLamb`, the same LAMB arithmetic). Hugging Face computes MLM
logits at every position before its loss picks the masked ones; MFU counts
the same task FLOPs for everybody (`albert_jax.flops`, 20 predictions) and,
for PyTorch, also the FLOPs it executes.

The implementations take turns (round robin) so that the load of a shared
machine hits all alike. The float32 matrix-product peak (ten 2048×2048
products through XLA and through PyTorch, the faster counts) takes its turns
in the same round robin, so MFU compares like with like: the median step with
the median matmul rate ("MFU"), and the fastest step with the fastest matmul
turn ("MFU best").

  python -m benchmarks.train_step_cpu --json=benchmarks/results/train_step_cpu.json
  python -m benchmarks.train_step_cpu --variants="scan_unroll=1;scan_unroll=12"   # model settings side by side
"""

import argparse
import json
import pathlib

import jax
from flax.linen import partitioning as nn_partitioning

from albert_jax import config_lib, sharding
from albert_jax.tools import flops as flops_lib
from albert_jax.trainers import pretraining
from benchmarks import harness

PREDICTIONS = 20


def parse_variant(text: str) -> dict[str, object]:
  """'scan_unroll=4,remat_policy=full' → AlbertConfig overrides (values as Python literals where they parse)."""
  overrides = {}
  for item in filter(None, text.split(",")):
    key, _, value = item.partition("=")
    try:
      overrides[key] = json.loads(value)
    except json.JSONDecodeError:
      overrides[key] = value
  return overrides


def jax_step(overrides: dict[str, object], batch_np, batch_size: int, seq: int):
  """The trainer's own jitted step (`pretraining.build`) on one CPU device, state donated."""
  config = config_lib.pretraining("base")
  config.batch_size, config.warmup_steps, config.num_train_steps = batch_size, 10, 1000
  config.data.max_seq_length, config.data.max_predictions_per_seq = seq, PREDICTIONS
  config.model.update(overrides)
  model_config = config_lib.model_config(config)
  mesh = sharding.create_mesh(config.mesh, jax.devices()[:1])
  rules = sharding.axis_rules(config)
  setup = pretraining.build(config, model_config, mesh, rules)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    state = setup.init(jax.random.PRNGKey(0))
    batch = sharding.global_batch(batch_np, mesh)
  rng = jax.random.PRNGKey(1)

  def step():
    nonlocal state
    with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
      state, metrics = setup.train_step(state, batch, rng)
    jax.block_until_ready((state, metrics))

  return step


def torch_steps(model_config, batch_np, compiled: bool):
  """One Hugging Face training step: forward with its own MLM + SOP loss, backward, LAMB."""
  model = harness.hf_model(model_config).train()
  inputs = harness.hf_pretraining_inputs(batch_np)
  forward = model
  if compiled:
    import torch

    forward = torch.compile(model)
  optimizer = harness.TorchLamb(model.named_parameters())

  def step():
    forward(**inputs).loss.backward()
    optimizer.step()

  return step


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shapes", default="8x128,2x512", help="batch x seq, comma-separated")
  parser.add_argument("--impls", default="albert_jax,hf_eager,hf_compile")
  parser.add_argument("--variants", default="", help="extra albert_jax columns: ';'-separated model overrides")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=1, help="steps per turn")
  parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (compilation)")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  threads = harness.set_threads()
  impls = args.impls.split(",")
  results = {"machine": harness.machine(), "predictions": PREDICTIONS, "shapes": {}}
  model_config = config_lib.model_config(config_lib.pretraining("base"))
  print(f"threads: torch {threads}, XLA:CPU on {harness.machine()['cpu_count']} cores")
  print(
    f"{'shape':>8} {'implementation':<34} {'step s':>8} {'best s':>8} {'spread':>7} {'tokens/s':>9} "
    f"{'MFU':>6} {'MFU best':>8} {'jax ×':>6}"
  )
  for shape in args.shapes.split(","):
    batch_size, seq = (int(x) for x in shape.split("x"))
    batch_np = harness.pretraining_batch(model_config, batch_size, seq, PREDICTIONS)
    jax_variants = {"albert_jax": {}} if "albert_jax" in impls else {}
    jax_variants.update({f"albert_jax[{v}]": parse_variant(v) for v in filter(None, args.variants.split(";"))})
    fns = {name: jax_step(overrides, batch_np, batch_size, seq) for name, overrides in jax_variants.items()}
    for impl in impls:
      if impl.startswith("hf_"):
        fns[impl] = torch_steps(model_config, batch_np, compiled=impl == "hf_compile")
    fns.update(harness.matmul_fns())
    for fn in fns.values():  # compile / warm up
      for _ in range(args.warmup):
        fn()
    times = {k: harness.stats(v) for k, v in harness.round_robin(fns, args.rounds, args.steps).items()}
    peak = harness.peak_flops(times)
    r = {
      "batch": batch_size,
      "seq": seq,
      "peak_flops": peak,
      "impls": {},
      "task_flops": flops_lib.train_flops_per_step(model_config, batch_size, seq, PREDICTIONS),
      "hf_executed_flops": flops_lib.train_flops_per_step(model_config, batch_size, seq, None),
    }
    results["shapes"][shape] = r
    base = times.get("albert_jax", {}).get("median_s")
    for name, s in times.items():
      r["impls"][name] = s
      if name.startswith("matmul/"):
        continue
      s["tokens_per_s"] = batch_size * seq / s["median_s"]
      s["mfu"] = r["task_flops"] / s["median_s"] / peak["median"]
      s["mfu_best"] = r["task_flops"] / s["min_s"] / peak["best"]
      if name.startswith("hf_"):
        s["mfu_executed"] = r["hf_executed_flops"] / s["median_s"] / peak["median"]
      s["albert_jax_speedup"] = s["median_s"] / base if base else None
      speedup = f"{s['albert_jax_speedup']:.2f}" if base else "-"
      print(
        f"{shape:>8} {name:<34} {s['median_s']:>8.3f} {s['min_s']:>8.3f} {100 * s['spread']:>6.0f}% "
        f"{s['tokens_per_s']:>9.0f} {100 * s['mfu']:>5.1f}% {100 * s['mfu_best']:>7.1f}% {speedup:>6}"
      )
    print(
      f"{shape:>8} float32 matmul {harness.MATMUL_N}: median {peak['median'] / 1e9:.1f} GFLOP/s, best "
      f"{peak['best'] / 1e9:.1f} (" + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peak.items() if "/" in k) + ")"
    )
  print(
    "step s / best s: median / fastest turn; spread: (max-min)/median; MFU: task FLOPs (MLM at 20 positions) "
    "per median step / median matmul rate; MFU best: per fastest step / fastest matmul turn; jax ×: this "
    "implementation's step time / albert_jax's (above 1: albert_jax is faster)"
  )
  if args.json:
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
  main()

"""The paper's configurations compiled for TPU slices from a CPU host, before and after issue #18 (needs libtpu).

For each of base, large, xlarge and xxlarge (batch 4096 x seq 512) on each slice, two rows:

  before  float32, XLA attention and the remat policy the experiments used until then (dots for base, full for the
          others): the step as it was;
  after   bfloat16, flash attention and the first of SEARCH whose step fits with at least 10% of the device's
          HBM to spare: the remat policies that recompute little (at most the attention and its output
          projection), then the same with grad_accum_steps=2 and 4 (the same update, a half or a quarter of
          the activations, no recomputation), then the policies that recompute a matrix product of the FFN or
          more, with 1, 2 and 4 microbatches.

Each row is the real sharded train step of `albert_jax.train` compiled by `albert_jax.compile_check`: per-device
memory, the model's FLOPs, the FLOPs the compiled step executes (recompute included; a second compile, see
compile_check) and the all-reduce bytes per step.

  nice -n 5 python -m benchmarks.tpu_compile_table --json=benchmarks/results/tpu_compile.json \\
      --output=benchmarks/results/tpu_compile_table.md

`--json` is read back on a rerun: rows already there are kept (delete the file to compile everything again).
"""

import argparse
import json
import pathlib
import time

from albert_jax import config_lib
from albert_jax import model as model_lib
from albert_jax.tools import compile_check

REPO = pathlib.Path(__file__).resolve().parents[1]
PRESETS = ("base", "large", "xlarge", "xxlarge")
TOPOLOGIES = ("v3:16x16", "v4:4x4x4", "v5e:16x16", "v5p:4x4x4")
HEADROOM = 0.10  # of the device's HBM, left free
BEFORE_REMAT = {"base": "dots", "large": "full", "xlarge": "full", "xxlarge": "full"}
# (remat policy, microbatches), least recomputation first ("dots" is left out: with flash it keeps what
# "save_all" keeps). Accumulation recomputes nothing, so 2 and 4 microbatches come before the costlier policies.
_LIGHT = ("none", "save_all", "dots_no_batch", "save_qkv_ffn")
_HEAVY = tuple(p for p in model_lib.REMAT_POLICIES if p not in _LIGHT and p != "dots")
SEARCH = tuple((p, k) for policies in (_LIGHT, _HEAVY) for k in (1, 2, 4) for p in policies)


def load_config(preset: str, overrides: dict):
  config = config_lib.load_file(REPO / "experiments" / f"{preset}.py")
  for path, value in overrides.items():
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def compiled_report(preset: str, topology: str, overrides: dict, devices, need_headroom: bool) -> dict:
  """compile_check's report, or {'fits': False, ...} when it does not fit (with the headroom asked for)."""
  config = load_config(preset, overrides)
  try:
    result = compile_check.compile_train_step(config, topology, devices)
  except compile_check.DoesNotFit as e:
    return {"fits": False, "overrides": overrides, "error": str(e)}
  memory = compile_check.memory_report(result.compiled, result.mesh.devices.flat[0].device_kind)
  if need_headroom and memory["headroom"] < HEADROOM * memory["hbm"]:
    return {"fits": False, "overrides": overrides, "error": f"headroom {memory['headroom'] / 2**30:.2f} GiB"}
  report = compile_check.report(config, topology, result, devices)
  report.pop("collective_instructions")
  return {**report, "fits": True, "overrides": overrides}


def before(preset: str, topology: str, devices) -> dict:
  overrides = {"model.dtype": "float32", "model.attention": "xla", "model.remat_policy": BEFORE_REMAT[preset]}
  return {**compiled_report(preset, topology, overrides, devices, need_headroom=False), "variant": "before"}


def after(preset: str, topology: str, devices) -> dict:
  tried = []
  for policy, accumulation in SEARCH:
    overrides = {"model.remat_policy": policy, "grad_accum_steps": accumulation}
    row = compiled_report(preset, topology, overrides, devices, need_headroom=True)
    if row["fits"]:
      return {**row, "variant": "after", "did_not_fit": tried}
    tried.append(row)
    print(f"  {preset} on {topology} with {overrides}: {row['error'][:80]}", flush=True)
  return {"variant": "after", "fits": False, "preset": preset, "topology": topology, "did_not_fit": tried}


def _gib(n) -> str:
  return f"{n / 2**30:.2f}"


HEADER = (
  "| config | slice | | dtype | attention | remat | accum | args GiB | temps GiB | total GiB | headroom | "
  "executed / model FLOPs | all-reduce GiB/step | s/step at 50% MFU | compile s |\n" + "|---" * 15 + "|"
)


def markdown_row(r: dict) -> str:
  if not r.get("fits"):
    tried = ", ".join(f"{t['overrides']}" for t in r.get("did_not_fit", [])) or r.get("error", "")
    return f"| {r['preset']} | {r['topology']} | {r['variant']} | does not fit: {tried} |" + " |" * 11
  m = r["memory"]
  ratio = f"{r['executed_over_model_flops']:.3f}" if r["executed_over_model_flops"] else "n/a"
  return (
    f"| {r['preset']} | {r['topology']} | {r['variant']} | {r['dtype']} | {r['attention']} | {r['remat_policy']} | "
    f"{r['grad_accum_steps']} | {_gib(m['arguments'])} | {_gib(m['temporaries'])} | {_gib(m['total'])} | "
    f"{100 * m['headroom'] / m['hbm']:.0f}% | {ratio} | {_gib(r['all_reduce_bytes_per_step'])} | "
    f"{r['step_seconds_at_50pct_mfu']:.3f} | {r['compile_seconds']:.0f} |"
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--presets", default=",".join(PRESETS))
  parser.add_argument("--topologies", default=",".join(TOPOLOGIES))
  parser.add_argument("--variants", default="before,after")
  parser.add_argument("--output", default="", help="write the markdown table here")
  parser.add_argument("--json", default="", help="the reports; rows already in it are kept")
  args = parser.parse_args()
  compile_check.use_host_backend()
  path = pathlib.Path(args.json) if args.json else None
  rows = json.loads(path.read_text()) if path and path.exists() else []
  done = {(r["preset"], r["topology"], r["variant"]) for r in rows if "variant" in r}
  for topology in args.topologies.split(","):
    devices = compile_check.topology_devices(topology)
    for preset in args.presets.split(","):
      for variant in args.variants.split(","):
        if (preset, topology, variant) in done:
          continue
        start = time.perf_counter()
        row = {"before": before, "after": after}[variant](preset, topology, devices)
        rows.append({**row, "preset": preset, "topology": topology, "seconds": time.perf_counter() - start})
        print(f"{preset} {variant} on {topology}: {row.get('remat_policy')} {time.perf_counter() - start:.0f} s")
        if path:
          path.write_text(json.dumps(rows, indent=2))
  keys = [(p, t, v) for t in TOPOLOGIES for p in PRESETS for v in ("before", "after")]
  rows.sort(key=lambda r: keys.index(key) if (key := (r["preset"], r["topology"], r.get("variant"))) in keys else 0)
  table = HEADER + "\n" + "\n".join(markdown_row(r) for r in rows if "variant" in r)
  print(table)
  if args.output:
    pathlib.Path(args.output).write_text(table + "\n")


if __name__ == "__main__":
  main()

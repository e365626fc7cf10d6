"""Per-device memory of the paper's configurations on TPU slices, compiled from a CPU host (needs libtpu).

For each of base, large, xlarge and xxlarge (batch 4096 x seq 512, as
experiments/<size>.py) on each slice, compiles the real sharded train step
with `albert_jax.compile_check` and records memory, headroom, step time at
50% MFU and the collectives. A config that does not fit is retried with full
rematerialisation, then with FSDP, and the row says which one fits.

  nice -n 5 python -m benchmarks.tpu_compile_table --output=benchmarks/TPU_COMPILE.md --json=tpu_compile.json
"""

import argparse
import json
import pathlib
import time

from albert_jax import config_lib
from albert_jax.tools import compile_check

REPO = pathlib.Path(__file__).resolve().parents[1]
PRESETS = ("base", "large", "xlarge", "xxlarge")
TOPOLOGIES = ("v3:16x16", "v4:4x4x4", "v5e:16x16", "v5p:4x4x4")
# What to try, in order, when the config as written does not fit.
FALLBACKS = ({}, {"model.remat_policy": "full"}, {"model.remat_policy": "full", "mesh.fsdp": 16, "mesh.data": -1})


def load_config(preset: str):
  return config_lib.load_file(REPO / "experiments" / f"{preset}.py")


def with_overrides(config, overrides: dict):
  config = config.copy_and_resolve_references()
  for path, value in overrides.items():
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def fitting_report(preset: str, topology: str, extra: dict) -> dict:
  """The first of FALLBACKS that fits, with what was tried before it."""
  tried = []
  for fallback in FALLBACKS:
    overrides = {**extra, **fallback}
    try:
      report = compile_check.check(with_overrides(load_config(preset), overrides), topology)
      report.pop("collective_instructions")
      return {**report, "overrides": overrides, "did_not_fit": tried}
    except compile_check.DoesNotFit as e:
      tried.append({"overrides": overrides, "error": str(e)})
      print(f"  {preset} on {topology} with {overrides or 'the config as is'}: does not fit", flush=True)
  return {"preset": preset, "topology": topology, "overrides": None, "did_not_fit": tried}


def _gib(n) -> str:
  return f"{n / compile_check.GiB:.2f}"


def _collectives(report: dict, where: str) -> str:
  rows = report["collectives"][where]
  cells = [
    f"{k} {rows[k]['per_step']}x {rows[k]['bytes_per_step'] / 2**20:.0f} MiB" for k in rows if rows[k]["per_step"]
  ]
  return ", ".join(cells) or "none"


def markdown(reports: list[dict]) -> str:
  lines = [
    "| config | slice | devices | mesh (data, fsdp, tensor) | remat | args GiB | temps GiB | total GiB | HBM GiB "
    "| headroom GiB | step s at 50% MFU | compile s | collectives per step outside the layer loop "
    "| inside the layer loop | needed |",
    "|" + "---|" * 15,
  ]
  for r in reports:
    if r["overrides"] is None:
      lines.append(
        f"| {r['preset']} | {r['topology']} | | | | | | | | | | | | | does not fit with any of "
        f"{[t['overrides'] for t in r['did_not_fit']]} |"
      )
      continue
    m, mesh = r["memory"], r["mesh"]
    needed = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "as configured"
    lines.append(
      f"| {r['preset']} | {r['topology']} | {r['num_devices']} x {r['device_kind']} | "
      f"{mesh['data']}, {mesh['fsdp']}, {mesh['tensor']} | {r['remat_policy']} | {_gib(m['arguments'])} | "
      f"{_gib(m['temporaries'])} | {_gib(m['total'])} | {_gib(m['hbm'])} | {_gib(m['headroom'])} | "
      f"{r['step_seconds_at_50pct_mfu']:.3f} | {r['compile_seconds']:.0f} | {_collectives(r, 'outside_loop')} | "
      f"{_collectives(r, 'inside_loop')} | {needed} |"
    )
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--presets", default=",".join(PRESETS))
  parser.add_argument("--topologies", default=",".join(TOPOLOGIES))
  parser.add_argument("--set", default="", help="extra overrides for every row, e.g. mesh.fsdp=16,mesh.data=-1")
  parser.add_argument("--output", default="", help="write the markdown table here")
  parser.add_argument("--json", default="", help="write the reports here")
  args = parser.parse_args()
  compile_check.use_host_backend()
  extra = {}
  for item in filter(None, args.set.split(",")):
    key, value = item.split("=")
    extra[key] = int(value) if value.lstrip("-").isdigit() else value
  reports = []
  for topology in args.topologies.split(","):
    for preset in args.presets.split(","):
      start = time.perf_counter()
      reports.append(fitting_report(preset, topology, extra))
      print(f"{preset} on {topology}: {time.perf_counter() - start:.0f} s", flush=True)
      if args.json:
        pathlib.Path(args.json).write_text(json.dumps(reports, indent=2))
  table = markdown(reports)
  print(table)
  if args.output:
    pathlib.Path(args.output).write_text(table + "\n")


if __name__ == "__main__":
  main()

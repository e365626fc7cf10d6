r"""Where an albert_jax CPU training step spends its time: jax.profiler trace, summed per XLA op kind.

Traces `--steps` steps of the real `train.build` step and prints the ops
(XLA:CPU thunks) with the largest total time, grouped by HLO instruction
name with the numeric suffix removed (`fusion.12` → `fusion`, `dot.3` → `dot`)
and individually. Use `--xla_dump_to` in XLA_FLAGS alongside to read the HLO.

  python -m benchmarks.profile_step --shape=8x128 --trace_dir=/tmp/albert_trace
"""

import argparse
import collections
import pathlib
import re

import jax

from albert_jax import config_lib
from benchmarks import harness, train_step_cpu


def op_times(trace_dir: str) -> collections.Counter:
  """Total seconds per event name over every line of the newest trace in `trace_dir`."""
  path = max(pathlib.Path(trace_dir).rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
  totals = collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(str(path)).planes:
    for line in plane.lines:
      if "python" in line.name.lower():
        continue
      for event in line.events:
        totals[(line.name, event.name)] += event.duration_ns / 1e9
  return totals


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="8x128")
  parser.add_argument("--variant", default="", help="model overrides, e.g. scan_unroll=2")
  parser.add_argument("--steps", type=int, default=1)
  parser.add_argument("--trace_dir", default="/tmp/albert_trace")
  parser.add_argument("--top", type=int, default=30)
  args = parser.parse_args()
  batch_size, seq = (int(x) for x in args.shape.split("x"))
  model_config = config_lib.model_config(config_lib.pretraining("base"))
  batch = harness.pretraining_batch(model_config, batch_size, seq, train_step_cpu.PREDICTIONS)
  step = train_step_cpu.jax_step(train_step_cpu.parse_variant(args.variant), batch, batch_size, seq)
  step()
  with jax.profiler.trace(args.trace_dir):
    for _ in range(args.steps):
      step()
  totals = op_times(args.trace_dir)
  kinds = collections.Counter()
  for (line, name), seconds in totals.items():
    kinds[(line, re.sub(r"[._]\d+$", "", name))] += seconds
  for title, table in (("by kind", kinds), ("by op", totals)):
    print(f"--- {title} (seconds over {args.steps} steps)")
    for (line, name), seconds in table.most_common(args.top):
      print(f"{seconds:9.3f}  {line[:28]:<28} {name[:90]}")


if __name__ == "__main__":
  main()

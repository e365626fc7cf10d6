"""Time to the first step with the persistent compilation cache: a cold start (empty cache) against a warm one.

  nice python -m benchmarks.compilation_cache --json=benchmarks/results/compilation_cache.json

Each start is `python -m albert_jax.train --config=experiments/tiny.py` (or `--command=finetune`, the tiny SST-2
config) in a fresh workdir, with `--config.compilation_cache_dir` naming the same folder: the first start
fills it, the second reads it. Measured: seconds from launching the process to the log line of step 1 (the step is
compiled, run and its metrics fetched), so imports, data preparation and initialisation count too, as a restarted
job waits for them as well. The pair is repeated `--pairs` times, each pair with a new cache folder.
"""

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from benchmarks import harness

REPO = pathlib.Path(__file__).resolve().parents[1]
COMMANDS = {
  "train": ["-m", "albert_jax.train", "--config=experiments/tiny.py", "--config.eval_every_steps=0"],
  "finetune": ["-m", "albert_jax.finetune", "--config=experiments/glue.py:sst2,tiny", "--config.eval_every_steps=0"],
}


def seconds_to_first_step(command: str, workdir: pathlib.Path, cache: pathlib.Path) -> float:
  flags = [
    f"--workdir={workdir}",
    "--config.num_train_steps=2",
    "--config.warmup_steps=1",
    "--config.log_every_steps=1",
  ]
  flags.append(f"--config.compilation_cache_dir={cache}")
  start = time.perf_counter()
  proc = subprocess.Popen(
    [sys.executable, *COMMANDS[command], *flags], cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
  )
  for line in proc.stderr:
    if re.search(r"\bstep 1/2\b", line):
      elapsed = time.perf_counter() - start
      break
  else:
    raise RuntimeError(f"{command} ended before its first step (exit {proc.wait()})")
  proc.stderr.read()
  proc.wait()
  return elapsed


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--command", default="train", choices=sorted(COMMANDS))
  parser.add_argument("--pairs", type=int, default=2)
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  results = {"cpu": harness.cpu_model(), "command": args.command, "pairs": []}
  for _ in range(args.pairs):
    with tempfile.TemporaryDirectory() as folder:
      folder = pathlib.Path(folder)
      cold = seconds_to_first_step(args.command, folder / "cold", folder / "cache")
      entries = len(list((folder / "cache").iterdir()))
      warm = seconds_to_first_step(args.command, folder / "warm", folder / "cache")
    results["pairs"].append({"cold_s": cold, "warm_s": warm, "cold_over_warm": cold / warm, "cache_entries": entries})
    print(
      f"{args.command}: first step after {cold:.1f} s cold, {warm:.1f} s warm ({entries} cache entries): "
      f"{cold / warm:.2f}x",
      flush=True,
    )
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
  main()

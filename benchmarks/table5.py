"""The ALBERT paper's Table 5 (sentence-prediction loss: none, NSP, SOP) at a scale this machine can run.

  nice -n 5 python -m benchmarks.table5 --out=/tmp/table5 --steps=600
  nice -n 5 python -m benchmarks.table5 --out=/tmp/table5 --steps=600 --flags=--config.batch_size=32

Runs `albert_jax.train --config=experiments/shared_text.py` (WikiText-2 valid and four Gutenberg books, the
tiny shape) three times, with `--config.sentence_objective=none`, `nsp` and `sop`: one model, one corpus, one
vocabulary (trained once on the corpus), one prepared dataset, one seed and one budget (`--steps`). Each run's
last evaluation gives its row: held-out MLM accuracy, and the sentence head's NSP and SOP accuracy, each on its
own held-out pairs (`trainers.pretraining.evaluate`). The table is printed beside the paper's and written to
OUT/table5.json with every run's metrics.jsonl in OUT/<objective>/.

The paper's rows: Lan et al. 2019, "ALBERT: A Lite BERT for Self-supervised Learning of Language
Representations" (arXiv:1909.11942v6, ICLR 2020), Table 5, ALBERT-base with not-shared parameters, E=768,
125k steps at batch 4096 and sequence 512 on BookCorpus and English Wikipedia; intrinsic accuracies and the
downstream average (SQuAD1.1, SQuAD2.0, MNLI, SST-2, RACE).
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

from albert_jax import config_lib
from albert_jax.data import vocab

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "shared_text.py"
OBJECTIVES = ("none", "nsp", "sop")
# objective -> (MLM, NSP, SOP accuracy in %, downstream average), the paper's Table 5.
PAPER = {"none": (54.9, 52.4, 53.3, 79.0), "nsp": (54.5, 90.5, 52.0, 79.2), "sop": (54.0, 78.9, 86.5, 80.1)}


def run(objective: str, out: pathlib.Path, steps: int, extra: list[str]) -> dict:
  """Trains one objective; returns its last evaluation ({'mlm_accuracy': ..., 'nsp_accuracy': ..., ...})."""
  workdir = out / objective
  cmd = [
    sys.executable,
    "-m",
    "albert_jax.train",
    f"--config={CONFIG}",
    f"--workdir={workdir}",
    f"--config.sentence_objective={objective}",
    f"--config.num_train_steps={steps}",
    f"--config.data.vocab={out / 'spiece.model'}",
    f"--config.data.data_dir={out / 'data'}",
    f"--config.warmup_steps={max(steps // 15, 1)}",  # the config's 200 of 3,000
    f"--config.eval_every_steps={max(steps // 4, 1)}",
    *extra,
  ]
  start = time.time()
  with open(out / f"{objective}.log", "w") as log:
    subprocess.run(cmd, cwd=REPO, stderr=log, stdout=log, check=True)
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in rows if "eval/mlm_accuracy" in r]
  last = evals[-1]
  return {
    "step": last["step"],
    "minutes": (time.time() - start) / 60,
    **{k.removeprefix("eval/"): v for k, v in last.items() if k.startswith("eval/")},
    "curve": [{k: v for k, v in r.items() if k == "step" or k.endswith("_accuracy")} for r in evals],
  }


def table(results: dict) -> str:
  lines = [
    "| objective | MLM | NSP | SOP | paper MLM | paper NSP | paper SOP | paper downstream avg |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for objective in OBJECTIVES:
    if objective not in results:
      continue
    r, paper = results[objective], PAPER[objective]
    ours = " | ".join(f"{100 * r[f'{task}_accuracy']:.1f}" for task in ("mlm", "nsp", "sop"))
    lines.append(f"| {objective} | {ours} | " + " | ".join(f"{v:.1f}" for v in paper) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, type=pathlib.Path)
  parser.add_argument("--steps", type=int, default=600, help="training steps of each objective (the one budget)")
  parser.add_argument("--objectives", default=",".join(OBJECTIVES))
  parser.add_argument("--flags", action="append", default=[], help="more --config flags for every run")
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  if not (args.out / "spiece.model").exists():  # one vocabulary for the three runs
    vocab.write(config_lib.load_file(CONFIG).data, args.out / "spiece.model")
  results = {}
  for objective in args.objectives.split(","):
    results[objective] = run(objective, args.out, args.steps, args.flags)
    print(f"{objective}: {json.dumps({k: v for k, v in results[objective].items() if k != 'curve'})}", flush=True)
  (args.out / "table5.json").write_text(json.dumps({"steps": args.steps, "flags": args.flags, **results}, indent=2))
  print(table(results))


if __name__ == "__main__":
  main()

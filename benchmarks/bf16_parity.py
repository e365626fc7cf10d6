r"""bfloat16 against float32: the tiny pretraining run from the same seed, loss curves side by side.

Both runs are `albert_jax.train` on experiments/tiny.py (the built-in corpus, the same vocabulary, data order,
masks and initial parameters: one seed), shortened to `--steps`, differing only in `model.dtype`. bfloat16
computes the products and activations in bfloat16 while parameters, optimizer state, LayerNorm statistics,
softmax and losses stay float32; the question is whether training ends where float32 does.

  python -m benchmarks.bf16_parity --steps=300 --json=benchmarks/results/bf16_parity.json
"""

import argparse
import json
import pathlib
import tempfile
import time

from albert_jax import config_lib
from albert_jax.trainers import pretraining
from benchmarks import harness

REPO = pathlib.Path(__file__).resolve().parents[1]


def train(workdir: pathlib.Path, dtype: str, steps: int, log_every: int, data_dir: str, vocab: str) -> list[dict]:
  config = config_lib.load_file(REPO / "experiments" / "tiny.py")
  config.model.dtype = dtype
  config.update(num_train_steps=steps, log_every_steps=log_every, eval_every_steps=0, checkpoint_every_steps=steps)
  config.data.update(data_dir=data_dir, vocab=vocab)
  pretraining.train_and_evaluate(config, str(workdir))
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in rows if "train/loss" in r]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--log_every", type=int, default=10)
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  curves, seconds = {}, {}
  with tempfile.TemporaryDirectory() as root:
    root = pathlib.Path(root)
    vocab = ""
    for dtype in ("float32", "bfloat16"):
      start = time.perf_counter()
      curves[dtype] = train(root / dtype, dtype, args.steps, args.log_every, str(root / "data"), vocab)
      seconds[dtype] = time.perf_counter() - start
      vocab = str(root / "float32" / "spiece.model")  # the first run's vocabulary, for the same pieces
  f32, bf16 = ([r["train/loss"] for r in curves[k]] for k in ("float32", "bfloat16"))
  print(f"{harness.cpu_model()}; {args.steps} steps of experiments/tiny.py, loss per {args.log_every} steps")
  print("| step | float32 loss | bfloat16 loss | bfloat16 / float32 |\n|---|---|---|---|")
  for row, a, b in zip(curves["float32"], f32, bf16, strict=True):
    print(f"| {row['step']} | {a:.4f} | {b:.4f} | {b / a:.4f} |")
  gap = bf16[-1] / f32[-1] - 1
  print(f"final loss: float32 {f32[-1]:.4f}, bfloat16 {bf16[-1]:.4f} ({100 * gap:+.2f}%); wall s {seconds}")
  if args.json:
    pathlib.Path(args.json).write_text(
      json.dumps({"cpu": harness.cpu_model(), "steps": args.steps, "curves": curves, "seconds": seconds}, indent=2)
    )


if __name__ == "__main__":
  main()

"""Same start, same result: SST-2 fine-tuning of one random ALBERT in albert_jax and in Hugging Face (PyTorch, CPU).

  nice -n 5 python benchmarks/hf_finetune_parity.py

Both frameworks start from the same weights (a random
transformers.AlbertForSequenceClassification copied into albert_jax), read the
same batches in the same order and use the same AdamW (bias correction,
linear warmup and decay as torch's AdamW + get_linear_schedule_with_warmup,
eps 1e-6, weight decay 0.01 except LayerNorm and biases, clipping at 1.0),
dropout 0. Prints both loss curves and both SST-2 dev accuracy curves (872
examples); the setup is in tests/hf_finetune.py, which tests/test_finetune.py
also uses for its few-step check.
"""

import argparse
import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")  # float32 matmuls, as PyTorch on CPU

from albert_jax import config_lib  # noqa: E402
from tests import hf_finetune  # noqa: E402

DATA = pathlib.Path(config_lib.data_root())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--eval_every", type=int, default=50)
  args = parser.parse_args()
  config = hf_finetune.sst2_config(
    DATA / "glue",
    DATA / "spm" / "albert_30k_spiece.model",
    steps=args.steps,
    batch_size=32,
    seq=64,
    learning_rate=5e-4,
    embedding_size=64,
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=512,
  )
  jax_run, torch_run, dev = hf_finetune.both_runs(config)
  print(f"SST-2, batch 32, seq 64, AdamW lr 5e-4, {args.steps} steps; dev = {len(dev)} examples")
  print(" step   loss jax  loss torch   dev acc jax  dev acc torch")
  worst = 0.0
  window = {"jax": [], "torch": []}
  for step in range(args.steps):
    window["jax"].append(jax_run.step(step))
    window["torch"].append(torch_run.step(step))
    if (step + 1) % args.eval_every == 0:
      acc_jax, acc_torch = 100 * jax_run.accuracy(dev), 100 * torch_run.accuracy(dev)
      worst = max(worst, abs(acc_jax - acc_torch))
      mean = {k: sum(v) / len(v) for k, v in window.items()}
      print(f"{step + 1:5d}  {mean['jax']:9.5f}  {mean['torch']:10.5f}  {acc_jax:12.2f}  {acc_torch:13.2f}", flush=True)
      window = {"jax": [], "torch": []}
  print(f"largest dev accuracy gap: {worst:.2f} points")


if __name__ == "__main__":
  main()

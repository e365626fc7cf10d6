"""Does pretraining pay? SST-2 dev accuracy of one small ALBERT fine-tuned from albert_jax pretraining vs from random init.

  nice -n 5 python benchmarks/pretraining_pays.py --out=/tmp/pretraining_pays

Runs the two command-line tools as a user would: `albert_jax.train` on the
shared text (WikiText-2 valid + four Gutenberg books, the official ALBERT
vocabulary), then `albert_jax.finetune` on SST-2 twice with the same budget,
model shape, data order and hyperparameters: once from the pretraining
workdir, once from a random initialisation. About 15-20 minutes on 2 CPU cores.
"""

import argparse
import json
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SHAPE = dict(embedding_size=64, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
             max_position_embeddings=128)


def _flags(prefix, values):
  return [f"--config.{prefix}{k}={v}" for k, v in values.items()]


def pretrain(workdir: pathlib.Path, steps: int):
  files = ",".join([str(DATA / "text" / "wikitext-2-raw" / "wiki.valid.raw"), str(DATA / "text" / "gutenberg" / "*.txt")])
  _run([sys.executable, "-m", "albert_jax.train", "--config=experiments/tiny.py", f"--workdir={workdir}",
        "--config.data.source=files", f"--config.data.files={files}",
        f"--config.data.vocab={DATA / 'spm' / 'albert_30k_spiece.model'}", "--config.data.max_seq_length=128",
        "--config.data.max_predictions_per_seq=20", "--config.batch_size=16", f"--config.num_train_steps={steps}",
        f"--config.warmup_steps={steps // 10}", "--config.learning_rate=0.005", "--config.log_every_steps=25",
        "--config.eval_every_steps=0", f"--config.checkpoint_every_steps={steps}", *_flags("model.", SHAPE)])


def finetune(workdir: pathlib.Path, init_checkpoint: str, steps: int) -> dict:
  vocab = "" if init_checkpoint else str(DATA / "spm" / "albert_30k_spiece.model")
  _run([sys.executable, "-m", "albert_jax.finetune", "--config=experiments/glue.py:sst2", f"--workdir={workdir}",
        f"--config.init_checkpoint={init_checkpoint}", f"--config.task.vocab={vocab}",
        f"--config.task.data_dir={DATA / 'glue'}", "--config.task.max_seq_length=64", "--config.batch_size=32",
        "--config.eval_batch_size=128", f"--config.num_train_steps={steps}", f"--config.warmup_steps={steps // 10}",
        "--config.learning_rate=2e-4", "--config.log_every_steps=50", f"--config.eval_every_steps={steps // 4}",
        f"--config.checkpoint_every_steps={steps}", *_flags("model.", SHAPE)])
  curve = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    if "dev/accuracy" in row:
      curve[row["step"]] = row["dev/accuracy"]
  return curve


def _run(cmd):
  print("+", " ".join(cmd), flush=True)
  subprocess.run(cmd, cwd=REPO, check=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="/tmp/pretraining_pays")
  parser.add_argument("--pretrain_steps", type=int, default=300)
  parser.add_argument("--finetune_steps", type=int, default=400)
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  pretrain(out / "pretrain", args.pretrain_steps)
  curves = {"pretrained": finetune(out / "sst2_pretrained", str(out / "pretrain"), args.finetune_steps),
            "random init": finetune(out / "sst2_random", "", args.finetune_steps)}
  print(f"\nSST-2 dev accuracy (872 examples), {args.finetune_steps} fine-tuning steps of 32; pretraining "
        f"{args.pretrain_steps} steps of 16 x 128 tokens")
  print("step  " + "  ".join(f"{name:>12}" for name in curves))
  for step in sorted(curves["pretrained"]):
    print(f"{step:4d}  " + "  ".join(f"{100 * c[step]:12.2f}" for c in curves.values()))
  best = {name: max(c.values()) for name, c in curves.items()}
  print("best  " + "  ".join(f"{100 * b:12.2f}" for b in best.values()))


if __name__ == "__main__":
  main()

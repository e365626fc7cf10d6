"""Does pretraining pay? SST-2 dev accuracy of a small ALBERT fine-tuned from albert_jax pretraining vs random init.

  nice -n 5 python -m benchmarks.pretraining_pays --out=/tmp/pretraining_pays
  nice -n 5 python -m benchmarks.pretraining_pays --pretrained=workdirs/shared_text   # reuse a pretraining run
  nice -n 5 python -m benchmarks.pretraining_pays --pretrained=workdirs/shared_text --seeds=0,1,2  # mean and sd

Runs the command-line tools as a user would: `albert_jax.train
--config=experiments/shared_text.py` (WikiText-2 valid + four Gutenberg
books, a vocabulary trained on them; skipped with --pretrained), then
`albert_jax.finetune` on SST-2 twice with the same budget, model shape,
vocabulary, data order and hyperparameters: once from the pretraining
workdir, once from a random initialisation. Fine-tuning takes about 2
minutes a run on 2 CPU cores, pretraining (3,000 steps) about 30 more."""

import argparse
import json
import pathlib
import subprocess
import sys

import numpy as np

from albert_jax import config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(config_lib.data_root())
PRETRAIN_CONFIG = REPO / "experiments" / "shared_text.py"
SHAPE_FIELDS = (
  "embedding_size",
  "hidden_size",
  "num_hidden_layers",
  "num_attention_heads",
  "intermediate_size",
  "max_position_embeddings",
)


def _shape() -> dict:
  """The model shape of experiments/shared_text.py: the random-init run uses the same one."""
  model = config_lib.load_file(PRETRAIN_CONFIG).model
  return {field: model[field] for field in SHAPE_FIELDS}


def _flags(prefix, values):
  return [f"--config.{prefix}{k}={v}" for k, v in values.items()]


def pretrain(workdir: pathlib.Path, steps: int):
  _run(
    [
      sys.executable,
      "-m",
      "albert_jax.train",
      f"--config={PRETRAIN_CONFIG}",
      f"--workdir={workdir}",
      *([f"--config.num_train_steps={steps}"] if steps else []),
    ]
  )


def finetune(
  workdir: pathlib.Path,
  init_checkpoint: str,
  steps: int,
  vocab: pathlib.Path,
  examples: int,
  learning_rate: float,
  seed: int,
) -> dict:
  """SST-2 from `init_checkpoint` ('' = random initialisation) with the pretraining run's vocabulary."""
  vocab = "" if init_checkpoint else str(vocab)  # '' = the checkpoint's own (the same file)
  _run(
    [
      sys.executable,
      "-m",
      "albert_jax.finetune",
      "--config=experiments/glue.py:sst2",
      f"--workdir={workdir}",
      f"--config.init_checkpoint={init_checkpoint}",
      f"--config.task.vocab={vocab}",
      f"--config.task.data_dir={DATA / 'glue'}",
      "--config.task.max_seq_length=64",
      "--config.batch_size=32",
      "--config.eval_batch_size=128",
      f"--config.num_train_steps={steps}",
      f"--config.warmup_steps={steps // 10}",
      f"--config.learning_rate={learning_rate}",
      f"--config.seed={seed}",
      "--config.log_every_steps=50",
      f"--config.eval_every_steps={steps // 4}",
      f"--config.checkpoint_every_steps={steps}",
      f"--config.task.max_examples={examples}",
      *_flags("model.", _shape()),
    ]
  )
  curve = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    row = json.loads(line)
    if "dev/accuracy" in row:
      curve[row["step"]] = row["dev/accuracy"]
  return curve


def _run(cmd):
  print("+", " ".join(cmd), flush=True)
  subprocess.run(cmd, cwd=REPO, check=True)


def _seeds(text: str) -> list[int]:
  try:
    return [int(seed) for seed in text.split(",")]
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 0,1,2") from None


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="/tmp/pretraining_pays")
  parser.add_argument("--pretrain_steps", type=int, default=0, help="0: the config's num_train_steps")
  parser.add_argument(
    "--pretrained",
    default="",
    help="an existing albert_jax.train workdir of "
    "experiments/shared_text.py to fine-tune from, instead of pretraining again",
  )
  parser.add_argument("--finetune_steps", type=int, default=400)
  parser.add_argument(
    "--train_examples",
    type=int,
    default=0,
    help="fine-tune on the first N SST-2 training sentences only (0: all 67,349); the limit "
    "applies to every split, so N >= 872 keeps dev whole",
  )
  parser.add_argument("--learning_rate", type=float, default=2e-4)
  parser.add_argument(
    "--seeds",
    type=_seeds,
    default=[0],
    help="comma-separated fine-tuning seeds (data order, "
    "head and, for the random arm, every initial weight); with several, the mean and spread of "
    "the best",
  )
  args = parser.parse_args()
  if 0 < args.train_examples < 872:
    parser.error("--train_examples below 872 would also cut SST-2 dev (872 sentences); use 0 or >= 872")
  out = pathlib.Path(args.out)
  pretrained = pathlib.Path(args.pretrained) if args.pretrained else out / "pretrain"
  if not args.pretrained:
    pretrain(pretrained, args.pretrain_steps)
  vocab = pretrained.absolute() / "spiece.model"
  runs = {"pretrained": str(pretrained), "random init": ""}
  curves = {
    (name, seed): finetune(
      out / f"sst2_{name.split()[0]}_seed{seed}",
      init,
      args.finetune_steps,
      vocab,
      args.train_examples,
      args.learning_rate,
      seed,
    )
    for seed in args.seeds
    for name, init in runs.items()
  }
  print(
    f"\nSST-2 dev accuracy (872 examples), {args.finetune_steps} fine-tuning steps of 32 on "
    f"{args.train_examples or 67349} training sentences, AdamW {args.learning_rate:g}; pretraining "
    f"{pretrained} (experiments/shared_text.py)"
  )
  print("step  " + "  ".join(f"{name + ' s' + str(seed):>16}" for name, seed in curves))
  for step in sorted(next(iter(curves.values()))):
    print(f"{step:4d}  " + "  ".join(f"{100 * c[step]:16.2f}" for c in curves.values()))
  best = {key: 100 * max(c.values()) for key, c in curves.items()}
  print("best  " + "  ".join(f"{b:16.2f}" for b in best.values()))
  for name in runs:
    arm = np.array([best[name, seed] for seed in args.seeds])
    print(
      f"{name}: best dev accuracy {arm.mean():.2f} (sd {arm.std(ddof=1) if len(arm) > 1 else 0:.2f}, {len(arm)} seeds)"
    )


if __name__ == "__main__":
  main()

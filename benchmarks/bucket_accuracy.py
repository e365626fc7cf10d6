"""Length buckets change no result: short SST-2 fine-tuning runs of a tiny random model, bucketed and padded to
max_seq_length, for several seeds; the dev accuracies should agree within the seeds' spread.

  nice python -m benchmarks.bucket_accuracy --json=benchmarks/results/bucket_accuracy.json

Each run is `finetuning.finetune` on the real SST-2 files (the first `--rows` training rows, the whole dev set)
with the official vocabulary; the two arms differ only in `config.task.length_buckets` (the default powers of two
against `()`). The bucketed arm's batches are grouped by length within megabatches, so its batch order differs too.
"""

import argparse
import json
import pathlib
import statistics
import tempfile

from albert_jax import config_lib
from albert_jax.trainers import finetuning

DATA = pathlib.Path(config_lib.data_root())


def run(seed: int, length_buckets, args) -> float:
  config = config_lib.tiny_finetuning(
    config_lib.finetuning("sst2", str(DATA / "glue")), str(DATA / "spm" / "albert_30k_spiece.model")
  )
  config.task.update(max_seq_length=args.max_seq_length, max_examples=0)
  config.model.max_position_embeddings = args.max_seq_length
  config.update(
    seed=seed,
    batch_size=32,
    eval_batch_size=128,
    num_train_steps=args.steps,
    warmup_steps=args.steps // 10,
    eval_every_steps=0,
    log_every_steps=50,
    checkpoint_every_steps=args.steps,
  )
  config.mesh.data = 1
  if length_buckets is not None:
    config.task.length_buckets = length_buckets
  with tempfile.TemporaryDirectory() as workdir:
    train = pathlib.Path(workdir) / "train.tsv"  # the first --rows training rows
    lines = (DATA / "glue" / "SST-2" / "train.tsv").read_text().splitlines(keepends=True)
    train.write_text("".join(lines[: args.rows + 1]))
    config.task.files.train = str(train)
    return finetuning.finetune(config, workdir)["dev"]["accuracy"]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--rows", type=int, default=8000)
  parser.add_argument("--max_seq_length", type=int, default=128)
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  results = {"args": vars(args), "arms": {}}
  for arm, length_buckets in (("bucketed", None), ("padded", ())):
    accuracies = [run(seed, length_buckets, args) for seed in range(args.seeds)]
    results["arms"][arm] = {
      "dev_accuracy": accuracies,
      "mean": statistics.mean(accuracies),
      "stdev": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
    }
    print(f"{arm}: dev accuracy {accuracies}, mean {results['arms'][arm]['mean']:.4f}", flush=True)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
  main()

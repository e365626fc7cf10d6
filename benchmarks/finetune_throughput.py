r"""SST-2 fine-tuning throughput on CPU, ALBERT-base at the recipe's max_seq_length 512: length buckets against
padding every batch to 512, and against a Hugging Face PyTorch loop with dynamic padding.

All three train on the same batches of real SST-2 rows (the official vocabulary), at batch size 32:
- albert_jax bucketed: the trainer's own jitted step (`finetuning.build`, AdamW) on `finetuning.TrainBatches`
  with the default buckets (32, 64, ..., 512): each batch cut to the smallest bucket holding its longest row;
- albert_jax padded: the same step and rows at 512 tokens (`length_buckets=()`, today's padding);
- Hugging Face: `AlbertForSequenceClassification` (random base weights), `DataCollatorWithPadding` (each batch
  padded to its longest row), torch's AdamW with the recipe's lr, eps 1e-6, weight decay 0.01 and clipping at 1.0.
The batches are the bucketed plan's first steps: rows grouped by length within megabatches of 50 batches, as
transformers' `group_by_length` (LengthGroupedSampler) groups them. Dropout is the recipe's (backbone 0,
classifier 0.1) everywhere.

Each implementation runs `--steps` batches per turn (padded to 512: the first `--padded_steps` of them, as every
padded batch costs the same) after a warmup turn (compiles every bucket shape); they take turns
(`harness.round_robin`) so that a shared machine's load hits all alike. Reported: examples/s at the median turn and
the ratios. Keep it short and niced on a shared machine:

  nice python -m benchmarks.finetune_throughput --json=benchmarks/results/finetune_throughput.json
"""

import argparse
import json
import pathlib
import shutil
import tempfile

import jax
from flax.linen import partitioning as nn_partitioning

from albert_jax import config_lib, sharding, tasks
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.tasks import buckets
from albert_jax.trainers import finetuning
from benchmarks import harness

DATA = pathlib.Path(config_lib.data_root())
VOCAB = DATA / "spm" / "albert_30k_spiece.model"


def sst2(batch_size: int, rows: int):
  """The SST-2 fine-tuning recipe at ALBERT-base on one CPU device, and its first `rows` training rows."""
  config = config_lib.finetuning("sst2", str(DATA / "glue"))
  config.task.update(vocab=str(VOCAB), max_examples=rows)
  config.update(batch_size=batch_size, eval_batch_size=batch_size)
  config.mesh.data = 1
  tokenizer = tokenizer_lib.Tokenizer(VOCAB)
  return config, tokenizer, tasks.load_task(config.task, tokenizer, "train")


def jax_steps(config, tokenizer, train_data, batches):
  """The trainer's step over `batches` (one turn); its state carried from turn to turn."""
  model_config = config_lib.model_config(config).replace(vocab_size=tokenizer.vocab_size)
  mesh = sharding.create_mesh(config.mesh, jax.devices()[:1])
  rules = sharding.axis_rules(config)
  spec = tasks.get_spec(config.task)
  setup = finetuning.build(config, model_config, spec, train_data.features["input_ids"].shape[1:], mesh, rules)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    state = setup.init(jax.random.PRNGKey(0))
  rng = jax.random.PRNGKey(1)

  def turn():
    nonlocal state
    with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
      for batch in batches:
        state, metrics = setup.train_step(state, sharding.global_batch(batch, mesh), rng)
      jax.block_until_ready((state, metrics))

  return turn


def torch_steps(config, tokenizer, batches):
  """Hugging Face: AlbertForSequenceClassification, DataCollatorWithPadding, AdamW, over the same rows."""
  import torch
  import transformers

  with tempfile.TemporaryDirectory() as folder:  # AlbertTokenizer reads spiece.model from a directory
    shutil.copy(VOCAB, pathlib.Path(folder) / "spiece.model")
    hf_tokenizer = transformers.AlbertTokenizer.from_pretrained(folder)
  collator = transformers.DataCollatorWithPadding(hf_tokenizer)
  m = config.model
  torch.manual_seed(0)
  model = transformers.AlbertForSequenceClassification(
    transformers.AlbertConfig(
      vocab_size=tokenizer.vocab_size,
      embedding_size=m.embedding_size,
      hidden_size=m.hidden_size,
      num_hidden_layers=m.num_hidden_layers,
      num_attention_heads=m.num_attention_heads,
      intermediate_size=m.intermediate_size,
      hidden_act=m.hidden_act,
      hidden_dropout_prob=m.hidden_dropout_prob,
      attention_probs_dropout_prob=m.attention_probs_dropout_prob,
      classifier_dropout_prob=m.classifier_dropout_prob,
      num_labels=2,
    )
  ).train()
  no_decay = lambda name: "LayerNorm" in name or "bias" in name
  groups = [
    {"params": [p for n, p in model.named_parameters() if not no_decay(n)], "weight_decay": config.weight_decay},
    {"params": [p for n, p in model.named_parameters() if no_decay(n)], "weight_decay": 0.0},
  ]
  optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, eps=1e-6)
  # The tokenised rows as a Hugging Face dataset holds them: real tokens only, padded by the collator.
  examples = [
    [
      {
        "input_ids": ids[mask == 1].tolist(),
        "token_type_ids": types[mask == 1].tolist(),
        "attention_mask": mask[mask == 1].tolist(),
        "labels": int(label),
      }
      for ids, types, mask, label in zip(b["input_ids"], b["token_type_ids"], b["attention_mask"], b["label"])
    ]
    for b in batches
  ]

  def turn():
    for rows in examples:
      loss = model(**collator(rows)).loss
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
      optimizer.step()
      optimizer.zero_grad()

  return turn


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=8, help="batches per turn, bucketed and Hugging Face")
  parser.add_argument("--padded_steps", type=int, default=1, help="batches per turn padded to 512 (all alike)")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--rows", type=int, default=4000, help="SST-2 training rows read (the plan's megabatches)")
  parser.add_argument("--fine_buckets", default="8,16,32,64,128,256,512", help="an extra bucketed arm; '' = none")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  threads = harness.set_threads()
  config, tokenizer, train_data = sst2(args.batch_size, args.rows)
  plan = finetuning.TrainBatches(train_data, config)
  rows = [plan.rows(step) for step in range(args.steps)]
  padded = [{k: v[r] for k, v in train_data.features.items()} for r in rows]
  bucketed = [buckets.batch(b, plan.buckets) for b in padded]
  padded_config = config.copy_and_resolve_references()
  padded_config.task.length_buckets = ()
  fine = tuple(int(b) for b in args.fine_buckets.split(",") if b)
  fine_batches = [buckets.batch(b, fine) for b in padded]
  fine_config = config.copy_and_resolve_references()
  fine_config.task.length_buckets = fine
  fns = {
    "albert_jax bucketed": jax_steps(config, tokenizer, train_data, bucketed),
    **(
      {f"albert_jax buckets from {fine[0]}": jax_steps(fine_config, tokenizer, train_data, fine_batches)}
      if fine
      else {}
    ),
    "albert_jax padded to 512": jax_steps(padded_config, tokenizer, train_data, padded[: args.padded_steps]),
    "hf dynamic padding": torch_steps(config, tokenizer, bucketed),
  }
  for name, fn in fns.items():  # compiles every shape
    print(f"warming up {name}", flush=True)
    fn()
  times = {k: harness.stats(v) for k, v in harness.round_robin(fns, args.rounds, 1).items()}
  real = [int(b["attention_mask"].sum()) for b in padded]
  longest = [int(buckets.row_lengths(b).max()) for b in padded]
  n = args.padded_steps
  computed = {  # (real tokens, computed tokens, examples) of one turn
    "albert_jax bucketed": (sum(real), sum(b["input_ids"].size for b in bucketed), args.steps * args.batch_size),
    "albert_jax padded to 512": (sum(real[:n]), sum(b["input_ids"].size for b in padded[:n]), n * args.batch_size),
    "hf dynamic padding": (sum(real), args.batch_size * sum(longest), args.steps * args.batch_size),
  }
  if fine:
    computed[f"albert_jax buckets from {fine[0]}"] = (
      sum(real),
      sum(b["input_ids"].size for b in fine_batches),
      args.steps * args.batch_size,
    )
  results = {
    "machine": harness.machine(),
    "torch_threads": threads,
    "batch_size": args.batch_size,
    "steps_per_turn": args.steps,
    "padded_steps_per_turn": args.padded_steps,
    "rounds": args.rounds,
    "bucket_lengths": [b["input_ids"].shape[1] for b in bucketed],
    "fine_bucket_lengths": [b["input_ids"].shape[1] for b in fine_batches],
    "longest_rows": longest,
    "impls": {},
  }
  print(f"{harness.cpu_model()}; torch threads {threads}; batches at {results['bucket_lengths']} (longest {longest})")
  print(f"{'implementation':<26} {'turn s':>8} {'spread':>7} {'examples/s':>10} {'padding':>8}")
  for name, s in times.items():
    tokens, computed_tokens, examples = computed[name]
    s.update(examples_per_s=examples / s["median_s"], padding_fraction=1 - tokens / computed_tokens)
    results["impls"][name] = s
    print(
      f"{name:<26} {s['median_s']:8.2f} {s['spread']:7.2f} {s['examples_per_s']:10.2f} {s['padding_fraction']:8.1%}"
    )
  rate = lambda name: results["impls"][name]["examples_per_s"]
  results["bucketed_over_padded"] = rate("albert_jax bucketed") / rate("albert_jax padded to 512")
  results["bucketed_over_hf"] = rate("albert_jax bucketed") / rate("hf dynamic padding")
  if fine:
    results["fine_buckets_over_hf"] = rate(f"albert_jax buckets from {fine[0]}") / rate("hf dynamic padding")
    print(f"buckets from {fine[0]} / Hugging Face dynamic padding: {results['fine_buckets_over_hf']:.2f}x")
  print(f"bucketed / padded to 512: {results['bucketed_over_padded']:.1f}x")
  print(f"bucketed / Hugging Face dynamic padding: {results['bucketed_over_hf']:.2f}x")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
  main()

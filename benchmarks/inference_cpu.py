r"""CPU inference, ALBERT-base float32: fill-mask and classification forward, albert_jax against Hugging Face PyTorch.

fill-mask: token ids with `--masks` [MASK] positions per sequence → softmax
→ top-5 at those positions. albert_jax runs `predict`'s jitted function (the
MLM head only at the masked positions); Hugging Face runs
`AlbertForMaskedLM` under `torch.inference_mode()` (logits at every position,
as its fill-mask pipeline does), then the same softmax and top-5 at the
masked positions. classification: `AlbertForSequenceClassification` (2
labels) on both sides, logits out.

Implementations take turns (round robin) in one process; medians, spread
and ratios are printed and written as JSON.

  python -m benchmarks.inference_cpu --json=benchmarks/results/inference_cpu.json
"""

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp

from albert_jax import model as model_lib
from albert_jax.tasks import fill_mask
from benchmarks import harness


def jax_fill_mask(config, batch):
  params = model_lib.AlbertForPreTraining(config).init(jax.random.PRNGKey(0), batch["input_ids"][:1, :8])
  fn = fill_mask._top_k_fn(config, 5)  # pylint: disable=protected-access  # the library's own fill-mask path
  args = [jnp.asarray(batch[k]) for k in ("input_ids", "input_mask", "masked_lm_positions")]
  return lambda: jax.block_until_ready(fn(params, *args))


def jax_classify(config, batch):
  model = model_lib.AlbertForSequenceClassification(config, num_labels=2)
  params = model.init(jax.random.PRNGKey(0), batch["input_ids"][:1, :8])
  fn = jax.jit(lambda p, ids, mask, types: model.apply(p, ids, mask, types))
  args = [jnp.asarray(batch[k]) for k in ("input_ids", "input_mask", "token_type_ids")]
  return lambda: jax.block_until_ready(fn(params, *args))


def torch_fill_mask(config, batch):
  import torch

  model = harness.hf_model(config, "AlbertForMaskedLM").eval()
  hf_inputs = harness.hf_pretraining_inputs(batch)
  inputs = {k: hf_inputs[k] for k in ("input_ids", "attention_mask")}  # no token types, as fill_mask.fill_mask
  positions = torch.tensor(batch["masked_lm_positions"], dtype=torch.long)

  def run():
    with torch.inference_mode():
      logits = model(**inputs).logits
      at_masks = torch.gather(logits, 1, positions[..., None].expand(-1, -1, logits.shape[-1]))
      return torch.topk(torch.softmax(at_masks, -1), 5)

  return run


def torch_classify(config, batch):
  import torch

  model = harness.hf_model(config, "AlbertForSequenceClassification", num_labels=2).eval()
  hf_inputs = harness.hf_pretraining_inputs(batch)
  inputs = {k: hf_inputs[k] for k in ("input_ids", "attention_mask", "token_type_ids")}

  def run():
    with torch.inference_mode():
      return model(**inputs).logits

  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shapes", default="8x128,1x512", help="batch x seq, comma-separated")
  parser.add_argument("--masks", type=int, default=2, help="[MASK] positions per sequence (fill-mask)")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=2, help="calls per turn")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  threads = harness.set_threads()
  config = model_lib.AlbertConfig.preset("base")
  results = {"machine": harness.machine(), "masks": args.masks, "shapes": {}}
  print(f"threads: torch {threads}, XLA:CPU on {harness.machine()['cpu_count']} cores")
  print(f"{'shape':>8} {'task':<15} {'albert_jax ms':>13} {'HF torch ms':>12} {'spread jax/hf':>14} {'jax ×':>6}")
  for shape in args.shapes.split(","):
    batch_size, seq = (int(x) for x in shape.split("x"))
    batch = harness.pretraining_batch(config, batch_size, seq, args.masks)
    fns = {
      "fill_mask/albert_jax": jax_fill_mask(config, batch),
      "fill_mask/hf_torch": torch_fill_mask(config, batch),
      "classify/albert_jax": jax_classify(config, batch),
      "classify/hf_torch": torch_classify(config, batch),
    }
    for fn in fns.values():
      fn()
    times = {k: harness.stats(v) for k, v in harness.round_robin(fns, args.rounds, args.steps).items()}
    results["shapes"][shape] = times
    for task in ("fill_mask", "classify"):
      ours, theirs = times[f"{task}/albert_jax"], times[f"{task}/hf_torch"]
      speedup = theirs["median_s"] / ours["median_s"]
      results["shapes"][shape][f"{task}/albert_jax_speedup"] = speedup
      print(
        f"{shape:>8} {task:<15} {1e3 * ours['median_s']:>13.1f} {1e3 * theirs['median_s']:>12.1f} "
        f"{100 * ours['spread']:>6.0f}%/{100 * theirs['spread']:.0f}% {speedup:>6.2f}"
      )
  print("ms: median per call; jax ×: Hugging Face time / albert_jax time (above 1: albert_jax is faster)")
  if args.json:
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
  main()

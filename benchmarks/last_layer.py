"""The last layer at [CLS] and the masked positions only, against the full last layer, same run (NOTES.md §9).

ALBERT-base forward + backward of the pretraining loss (MLM at 20 positions +
SOP), float32, the default remat policy. "gathered" is `AlbertForPreTraining`
as it runs (`masked_positions` reach the encoder); "full" runs every layer at
every position and gathers afterwards, as before the change. Same parameters
and inputs; the two take turns.

  python -m benchmarks.last_layer --shapes=8x128,2x512 --rounds=4
"""

import argparse

import jax
import jax.numpy as jnp

from albert_jax import model as model_lib
from albert_jax.tools import flops as flops_lib
from benchmarks import harness

PREDICTIONS = 20


def loss_fns(config: model_lib.AlbertConfig, batch: dict):
  model = model_lib.AlbertForPreTraining(config)
  ids, mask, types, positions = (
    jnp.asarray(batch[k]) for k in ("input_ids", "input_mask", "token_type_ids", "masked_lm_positions")
  )
  params = model.init(jax.random.PRNGKey(0), ids[:1, :8])

  def full_then_gather(m):
    sequence, pooled = m.albert(ids, mask, types)
    mlm = m.predictions(model_lib.gather_positions(sequence, positions), m.albert.attend)
    return {"mlm_logits": mlm, "sop_logits": m.sop_classifier(pooled, True)}

  def loss(p, gathered):
    out = (
      model.apply(p, ids, mask, types, masked_positions=positions)
      if gathered
      else model.apply(p, method=full_then_gather)
    )
    return jax.nn.logsumexp(out["mlm_logits"], -1).mean() + jax.nn.logsumexp(out["sop_logits"], -1).mean()

  fns = {}
  for name, gathered in (("gathered", True), ("full", False)):
    grad = jax.jit(jax.value_and_grad(lambda p, g=gathered: loss(p, g)))
    fns[name] = lambda grad=grad: jax.block_until_ready(grad(params))
  return fns


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shapes", default="8x128,2x512")
  parser.add_argument("--rounds", type=int, default=4)
  args = parser.parse_args()
  config = model_lib.AlbertConfig.preset("base")
  for shape in args.shapes.split(","):
    batch_size, seq = (int(x) for x in shape.split("x"))
    fns = loss_fns(config, harness.pretraining_batch(config, batch_size, seq, PREDICTIONS))
    for fn in fns.values():
      fn()
    times = {k: harness.stats(v) for k, v in harness.round_robin(fns, args.rounds, 1).items()}
    executed = flops_lib.train_flops_per_step(config, batch_size, seq, PREDICTIONS)
    full = flops_lib.train_flops_per_step(config, batch_size, seq, PREDICTIONS, full_last_layer=True)
    g, f = times["gathered"], times["full"]
    print(
      f"{shape}: gathered {g['median_s']:.3f} s (spread {100 * g['spread']:.0f}%), full {f['median_s']:.3f} s "
      f"(spread {100 * f['spread']:.0f}%): {f['median_s'] / g['median_s']:.3f}x faster; "
      f"matmul FLOPs {executed / 1e9:.0f} vs {full / 1e9:.0f} GFLOP ({full / executed:.3f}x)"
    )


if __name__ == "__main__":
  main()

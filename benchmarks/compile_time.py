"""Compile time of an ALBERT-base forward+backward at 12, 24 and 48 layers.

The shared layer is traced once under `nn.scan`, so compile time should not
grow with depth. Prints a table and the 48/12 ratio, writes JSON.

  python -m benchmarks.compile_time [--layers=12,24,48] [--scan_unroll=1] [--json=compile_time.json]
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp

from albert_jax import model as model_lib


def compile_seconds(num_layers: int, batch: int, seq: int, remat: str, unroll: int) -> float:
  config = model_lib.AlbertConfig.preset("base", num_hidden_layers=num_layers, remat_policy=remat, scan_unroll=unroll)
  model = model_lib.AlbertForPreTraining(config)
  ids = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
  params = jax.eval_shape(lambda i: model.init(jax.random.PRNGKey(0), i), ids)

  def loss(p, i):
    out = model.apply(p, i, masked_positions=i[:, :20])
    return out["mlm_logits"].mean() + out["sop_logits"].mean()

  start = time.perf_counter()
  jax.jit(jax.value_and_grad(loss)).lower(params, ids).compile()
  return time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", default="12,24,48")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--seq", type=int, default=128)
  parser.add_argument("--remat", default=model_lib.AlbertConfig.remat_policy)
  parser.add_argument("--scan_unroll", type=int, default=model_lib.AlbertConfig.scan_unroll)
  parser.add_argument("--repeats", type=int, default=3, help="best of N (compilation cache disabled)")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  jax.config.update("jax_enable_compilation_cache", False)
  layers = [int(x) for x in args.layers.split(",")]
  compile_seconds(layers[0], args.batch, args.seq, args.remat, args.scan_unroll)  # warm up the tracer and backend
  results = {n: float("inf") for n in layers}
  for _ in range(args.repeats):  # round robin, so machine noise hits every depth alike
    for n in layers:
      results[n] = min(results[n], compile_seconds(n, args.batch, args.seq, args.remat, args.scan_unroll))
  print(f"{'layers':>8} {'compile s':>10} {'vs first':>9}")
  for n, t in results.items():
    print(f"{n:>8} {t:>10.2f} {t / results[layers[0]]:>9.2f}")
  ratio = results[layers[-1]] / results[layers[0]]
  print(f"ratio {layers[-1]}/{layers[0]} layers: {ratio:.2f} (goal <= 1.3)")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(
        {
          "device": jax.devices()[0].device_kind,
          "scan_unroll": args.scan_unroll,
          "compile_seconds": results,
          "ratio": ratio,
        },
        f,
        indent=2,
      )


if __name__ == "__main__":
  main()

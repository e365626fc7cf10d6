"""The parameter table of a model config (`python -m albert_jax.summary --config=experiments/base.py`).

Prints one row per module (path, shape of each parameter, count) and ends with
`backbone_params: N` (the AlbertModel with pooler) and `total_params: N`
(plus the MLM and SOP heads). Nothing is allocated: shapes come from
`jax.eval_shape`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from albert_jax import model as model_lib


def abstract_params(config: model_lib.AlbertConfig):
  """ShapeDtypeStructs of `AlbertForPreTraining`'s parameters."""
  init = lambda: model_lib.AlbertForPreTraining(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))
  return nn.unbox(jax.eval_shape(init))["params"]


def param_rows(config: model_lib.AlbertConfig) -> list[tuple[str, tuple[int, ...], int]]:
  rows = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_params(config)):
    name = "/".join(k.key for k in path)
    rows.append((name, tuple(leaf.shape), int(leaf.size)))
  return rows


def param_counts(config: model_lib.AlbertConfig) -> tuple[int, int]:
  """(backbone with pooler, backbone + MLM and SOP heads)."""
  rows = param_rows(config)
  return sum(n for p, _, n in rows if p.startswith("albert/")), sum(n for _, _, n in rows)


def format_table(config: model_lib.AlbertConfig) -> str:
  rows = param_rows(config)
  width = max(len(p) for p, _, _ in rows)
  lines = [f"{'parameter':<{width}}  {'shape':>22}  {'count':>12}"]
  lines += [f"{p:<{width}}  {str(s):>22}  {n:>12,}" for p, s, n in rows]
  backbone, total = param_counts(config)
  lines += [f"backbone_params: {backbone}", f"total_params: {total}"]
  return "\n".join(lines)

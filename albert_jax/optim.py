"""Optimizers as ALBERT trains them: LAMB for pretraining, AdamW for fine-tuning.

Both follow google-research/albert (`lamb_optimizer.py`, `optimization.py`)
and are assembled from optax parts so that the state is an ordinary optax
pytree that orbax checkpoints and the sharding rules understand:

  clip_by_global_norm(1.0)                       # on the whole gradient
  -> Adam moments, WITHOUT bias correction        # as the TF original
  -> + weight_decay * param                       # not LayerNorm / bias
  -> * ||param|| / ||update||  (LAMB only)        # not LayerNorm / bias
  -> * -learning_rate(step)                       # warmup, linear decay to 0

Gradient accumulation is done by `accumulate_gradients` inside the train step
(explicit microbatching), not by `optax.MultiSteps`: one call of the train
step stays one optimizer update of one global batch, so `num_train_steps`,
`warmup_steps`, checkpoint and logging intervals and the data iterator
position mean the same with and without accumulation, and the optimizer state
(and so every checkpoint) carries no extra gradient accumulator.
"""

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from albert_jax import sharding

# The original's `exclude_from_weight_decay=["LayerNorm", "layer_norm",
# "bias"]`, searched (re.search) anywhere in the variable name; LAMB uses the
# same list to exclude parameters from the trust ratio.
NO_DECAY_PATTERN = r"LayerNorm|layer_norm|bias"


def param_path(path: tuple[Any, ...]) -> str:
  """'/'-joined names of a pytree key path, e.g. 'params/albert/.../kernel'."""
  names = []
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      names.append(str(key.key))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      names.append(key.name)
    elif isinstance(key, jax.tree_util.SequenceKey):
      names.append(str(key.idx))
    else:
      names.append(str(getattr(key, "key", key)))
  return "/".join(names)


def decay_mask(params: Any, pattern: str = NO_DECAY_PATTERN) -> Any:
  """True for leaves that get weight decay (and, in LAMB, the trust ratio).

  Args:
    params: a parameter tree (arrays, ShapeDtypeStructs or `nn.Partitioned`
      boxes; a box's leaf path ends in '/value', which the pattern ignores).
    pattern: regular expression; a leaf whose path matches it anywhere is
      excluded, as `re.search` did over TF variable names in the original.

  Returns:
    A tree of Python bools with the structure of `params`.
  """
  regex = re.compile(pattern)
  return jax.tree_util.tree_map_with_path(lambda path, _: regex.search(param_path(path)) is None, params)


def stacked_layers_mask(boxed_params: Any) -> Any:
  """True for leaves whose first axis is the logical 'layers' axis.

  Unshared variants (`sharing` other than 'all', or several hidden groups)
  stack per-layer parameters along a leading 'layers' axis. The original keeps
  one TF variable per layer, so LAMB's trust ratio must be taken per layer
  slice; pass this mask to `make_optimizer(..., stacked_layers=...)`.

  Args:
    boxed_params: the `nn.Partitioned`-boxed tree, e.g. from `jax.eval_shape`
      of the model's init.

  Returns:
    A tree of bools, one per parameter leaf (fits boxed or unboxed params).
  """

  def is_stacked(leaf):
    names = getattr(leaf, "names", None) or ()
    return bool(names) and names[0] == "layers"

  return jax.tree.map(is_stacked, boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def learning_rate_schedule(
  learning_rate: float, warmup_steps: int, num_train_steps: int, style: str = "albert"
) -> optax.Schedule:
  """Linear warmup from 0, then linear decay to 0 at `num_train_steps`.

  Args:
    learning_rate: the peak learning rate.
    warmup_steps: steps of linear warmup; step 0 has learning rate 0.
    num_train_steps: the learning rate reaches 0 here and stays 0.
    style: 'albert' reproduces the original exactly: the decay line is
      `learning_rate * (1 - step / num_train_steps)` from step 0 and warmup
      replaces it while `step < warmup_steps` (so the rate drops from the peak
      to `peak * (1 - warmup / total)` when warmup ends; 2.5% at paper scale,
      25% for RTE fine-tuning). 'linear' decays from the peak at the end of
      warmup, as `transformers.get_linear_schedule_with_warmup` does.

  Returns:
    An optax schedule: step -> learning rate.
  """
  if num_train_steps <= 0 or not 0 <= warmup_steps <= num_train_steps:
    raise ValueError(
      f"Need 0 <= warmup_steps ({warmup_steps}) <= num_train_steps "
      f"({num_train_steps}) and num_train_steps > 0; fix the config."
    )
  if style == "albert":
    decay_start = learning_rate * (1.0 - warmup_steps / num_train_steps)
  elif style == "linear":
    decay_start = learning_rate
  else:
    raise ValueError(f"Unknown lr_schedule {style!r}; use 'albert' or 'linear'.")
  decay = optax.linear_schedule(decay_start, 0.0, num_train_steps - warmup_steps)
  if warmup_steps == 0:
    return decay
  warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def scale_by_adam(b1: float, b2: float, eps: float, bias_correction: bool) -> optax.GradientTransformation:
  """Adam's m / (sqrt(v) + eps), with or without bias correction.

  optax's `scale_by_adam` always corrects the bias; ALBERT's LAMB and AdamW do
  not. Both variants keep `optax.ScaleByAdamState`, so checkpoints are
  interchangeable between them.
  """
  if bias_correction:
    return optax.scale_by_adam(b1=b1, b2=b2, eps=eps)

  def update_fn(updates, state, params=None):
    del params
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
    count = optax.safe_increment(state.count)
    return updates, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(optax.scale_by_adam(b1, b2, eps).init, update_fn)


def _mask_leaves(mask: Any, params: Any, default: bool) -> list[bool]:
  """One bool per parameter leaf from a tree, a function of params or None.

  Compared leaf by leaf (not by tree structure), so a mask built on unboxed
  parameters also applies to `nn.Partitioned`-boxed ones and vice versa.
  """
  num_leaves = len(jax.tree.leaves(params))
  if mask is None:
    return [default] * num_leaves
  leaves = jax.tree.leaves(mask(params) if callable(mask) else mask)
  if len(leaves) != num_leaves:
    raise ValueError(
      f"A mask with {len(leaves)} leaves does not fit a "
      f"parameter tree with {num_leaves}; build it from the "
      "same parameters."
    )
  return leaves


def scale_by_trust_ratio(mask: Any = None, stacked_layers: Any = None) -> optax.GradientTransformation:
  """LAMB's layer-wise ||param|| / ||update||, 1 where either norm is 0.

  Like `optax.masked(optax.scale_by_trust_ratio(), mask)`, but leaves marked
  in `stacked_layers` take one ratio per slice of their leading axis (one per
  original layer). Both masks are trees of bools or functions of params.
  """

  def ratio(update, param, apply, stacked):
    if not apply:
      return update
    axes = tuple(range(1, update.ndim)) if stacked else None
    param_norm = jnp.sqrt(jnp.sum(jnp.square(param), axis=axes, keepdims=True))
    update_norm = jnp.sqrt(jnp.sum(jnp.square(update), axis=axes, keepdims=True))
    safe = jnp.where(
      (param_norm > 0) & (update_norm > 0), param_norm / jnp.where(update_norm > 0, update_norm, 1.0), 1.0
    )
    return update * safe.astype(update.dtype)

  def update_fn(updates, state, params):
    if params is None:
      raise ValueError("LAMB needs the parameters: call update(g, s, params).")
    leaves, treedef = jax.tree.flatten(updates)
    new = map(
      ratio,
      leaves,
      jax.tree.leaves(params),
      _mask_leaves(mask, params, True),
      _mask_leaves(stacked_layers, params, False),
    )
    return jax.tree.unflatten(treedef, list(new)), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def make_optimizer(
  config: Any,
  stacked_layers: Any = None,
  no_decay_pattern: str = NO_DECAY_PATTERN,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The training optimizer and its learning-rate schedule, from the config.

  Config fields read (their meaning and defaults: `config_lib._add_optimizer`):
    optimizer ('lamb' or 'adamw'), learning_rate, warmup_steps,
    num_train_steps, weight_decay (not applied to parameters matching
    `no_decay_pattern`: LayerNorm and biases), grad_clip_norm (0 disables),
    bias_correction, lr_schedule ('albert' or 'linear', see
    `learning_rate_schedule`).
  β1 0.9, β2 0.999 and eps 1e-6 are fixed, as in the original.

  Args:
    config: the training config.
    stacked_layers: optional tree (or function of params) of bools marking
      parameters stacked over layers (`stacked_layers_mask`), which get one
      LAMB trust ratio per layer.
    no_decay_pattern: regular expression over parameter paths excluded from
      weight decay and the trust ratio.

  Returns:
    (optax transformation, schedule); the schedule maps the update count to
    the learning rate, for logging.
  """
  cfg = config
  schedule = learning_rate_schedule(cfg.learning_rate, cfg.warmup_steps, cfg.num_train_steps, cfg.lr_schedule)
  mask = lambda params: decay_mask(params, no_decay_pattern)
  parts = []
  if cfg.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  parts.append(scale_by_adam(0.9, 0.999, 1e-6, cfg.bias_correction))
  if cfg.weight_decay:
    parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=mask))
  if cfg.optimizer == "lamb":
    parts.append(scale_by_trust_ratio(mask, stacked_layers))
  elif cfg.optimizer != "adamw":
    raise ValueError(f"Unknown config.optimizer {cfg.optimizer!r}; use 'lamb' or 'adamw'.")
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts), schedule


def accumulate_gradients(
  grad_fn: Callable[[Any, Any, jax.Array], tuple[Any, Any]],
  params: Any,
  batch: Any,
  rng: jax.Array,
  num_microbatches: int,
  batch_axes: Sequence[str] = sharding.BATCH_AXES,
) -> tuple[Any, Any]:
  """Summed auxiliary outputs and summed gradients of `grad_fn` over microbatches of `batch`.

  The sum of the microbatch gradients is the full-batch gradient when each
  microbatch's loss is its share of the full-batch loss: its loss sums
  divided by the WHOLE batch's denominators (`trainers.core.loss_gradients`
  does this), not a mean over the microbatch. Splits every batch leaf along
  its first axis and runs `grad_fn` on each slice with `lax.scan`, so the
  activations of only one microbatch are live. Microbatch i holds rows i,
  i+k, i+2k, ... (k = num_microbatches): each device keeps its own rows of a
  batch sharded over the first axis, so the split moves no data between
  devices.

  Args:
    grad_fn: (params, microbatch, rng) -> (aux, grads). Aux should hold sums
      (metrics as sums plus a denominator), so that adding them up over
      microbatches gives the full-batch sums.
    params: passed unchanged to every call.
    batch: pytree of arrays with a common leading batch dimension.
    rng: the step's key (dropout): used as is for k = 1; microbatch i gets
      `fold_in(rng, i)`, and under `batch_axes` each device folds in its batch
      shard's index first, so that no two microbatches or shards draw the
      same masks (which then depend on the data-parallel size).
    num_microbatches: k >= 1; the batch size must be divisible by k.
    batch_axes: the mesh axes the batch is split over ('data', 'fsdp'). When
      the ambient mesh splits the batch over them and k > 1, the microbatch
      loop runs inside a `shard_map` manual over them: the parameters enter
      whole (under fsdp: gathered once, before the loop), every device adds
      up the gradients of its own rows, and ONE `psum` over the axes adds the
      devices' sums at the end, where jit's automatic partitioning reduces
      the gradient once per microbatch (and per layer; under fsdp a
      reduce-scatter per microbatch). The tensor axis stays automatic inside.
      With k = 1 the step is left to jit: it reduces once per step too, and
      its dropout masks are those of one device whatever the mesh (a
      shard_map draws per shard).

  Returns:
    (summed aux, summed gradients).
  """
  sizes = {x.shape[0] for x in jax.tree.leaves(batch)}
  if len(sizes) != 1 or next(iter(sizes)) % num_microbatches:
    raise ValueError(
      f"Batch size {sizes} is not divisible by grad_accum_steps="
      f"{num_microbatches}; change batch_size or grad_accum_steps."
    )
  mesh = jax.sharding.get_abstract_mesh()
  axes = () if mesh.empty else tuple(a for a in batch_axes if a in mesh.axis_names)
  if num_microbatches == 1 or math.prod(mesh.shape[a] for a in axes) == 1:
    # k = 1: jit's own reduction; dropout masks then stay those of one device on any mesh.
    return _scan_microbatches(grad_fn, params, batch, rng, num_microbatches)
  return _accumulate_per_device(grad_fn, params, batch, rng, num_microbatches, axes, mesh)


def _accumulate_per_device(grad_fn, params, batch, rng, num_microbatches, axes, mesh):
  """`_scan_microbatches` on every device's own rows, in a shard_map manual over the batch `axes`; one psum."""

  def per_device(params, batch, rng):
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axes))
    # Inside the shard_map the batch axes are manual: no sharding constraint may name them.
    rules = nn.get_logical_axis_rules()
    for axis in axes:
      rules = tuple((name, sharding.without_axis(entry, axis)) for name, entry in rules)
    with nn.logical_axis_rules(rules):
      sums = _scan_microbatches(grad_fn, params, batch, rng, num_microbatches)
    return jax.lax.psum(sums, axes)  # the step's one reduction over the batch axes

  spec = jax.sharding.PartitionSpec
  return jax.shard_map(
    per_device,
    mesh=mesh,
    # The parameters whole on every device: under fsdp, jit gathers them here, once per step.
    in_specs=(spec(), spec(axes), spec()),
    out_specs=spec(),
    axis_names=set(axes),
    # The gradients are taken inside, per device, and summed by the psum above; check_vma=True would type the
    # parameters as device-invariant and psum every microbatch's gradient (and the Pallas kernel has no type).
    check_vma=False,
  )(params, batch, rng)


def _scan_microbatches(grad_fn, params, batch, rng, num_microbatches):
  if num_microbatches == 1:
    return grad_fn(params, batch, rng)

  def split(x):
    x = x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  micro = jax.tree.map(split, batch)
  first = jax.tree.map(lambda x: x[0], micro)
  aux_shape, grad_shape = jax.eval_shape(grad_fn, params, first, rng)
  zeros = lambda tree: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)

  def body(carry, indexed):
    index, microbatch = indexed
    aux, grads = grad_fn(params, microbatch, jax.random.fold_in(rng, index))
    return jax.tree.map(jnp.add, carry, (aux, grads)), None

  indices = jnp.arange(num_microbatches, dtype=jnp.uint32)
  sums, _ = jax.lax.scan(body, (zeros(aux_shape), zeros(grad_shape)), (indices, micro))
  return sums

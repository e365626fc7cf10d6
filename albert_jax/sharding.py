"""Device mesh, logical axis rules and sharded batches (MaxText style).

The model names the axes of every parameter and of the activations at the
layer boundary with logical names; `DEFAULT_RULES` maps them onto a mesh with
axes ('data', 'fsdp', 'tensor'):

  data    plain data parallelism: parameters replicated, batch split.
  fsdp    the batch is split AND the big matrices are sharded along their
          hidden/embed axis (ZeRO-3 style; XLA gathers them for each use).
  tensor  Megatron tensor parallelism: attention heads, the FFN's inner
          axis and the vocabulary are split.

Usage, as in train.py:

  mesh = create_mesh(config.mesh)
  rules = axis_rules(config)
  abstract = jax.eval_shape(init_fn, rng)          # nn.Partitioned boxes
  shardings = logical_shardings(abstract, mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(init_fn, out_shardings=shardings)(rng)
"""

import functools
import itertools
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Earlier rules win; flax gives each mesh axis to at most one dimension of an
# array and leaves a dimension unsharded when its mesh axis is taken. So in
# [hidden, mlp] mlp goes to 'tensor' and hidden to 'fsdp', and in [embed,
# hidden] only hidden (the larger) is fsdp-sharded.
DEFAULT_RULES = (
  ("batch", BATCH_AXES),
  ("act_hidden", "tensor"),  # layer-boundary activations, as MaxText
  ("vocab", "tensor"),
  ("heads", "tensor"),
  ("mlp", "tensor"),
  ("hidden", "fsdp"),
  ("embed", "fsdp"),
  ("kv", None),
  ("layers", None),
  ("length", None),
)


def create_mesh(mesh_config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh with axes ('data', 'fsdp', 'tensor') sized from the config.

  Args:
    mesh_config: object with integer attributes `data`, `fsdp`, `tensor`
      (missing ones count as 1); at most one may be -1, meaning all devices
      the others leave.
    devices: the devices to use; all of `jax.devices()` by default. The mesh
      must use every one of them.

  Returns:
    The mesh, its devices laid out for the hardware by `jax.make_mesh`.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = [int(getattr(mesh_config, axis, 1)) for axis in MESH_AXES]
  described = ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes))
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'Bad mesh {described}: sizes must be positive, with at most one -1 ("the rest of the devices").')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(
        f"Mesh {described}: {len(devices)} devices are not divisible by "
        f"{known}; choose axis sizes whose product divides {len(devices)}."
      )
    sizes[sizes.index(-1)] = len(devices) // known
  elif known != len(devices):
    raise ValueError(
      f"Mesh {described} needs {known} devices but {len(devices)} are "
      "present; make the product of the sizes equal the device count, or "
      "set one axis to -1 to give it the rest."
    )
  try:
    return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
  except NotImplementedError as e:  # the sizes divide the count, but not the physical torus
    if not hasattr(devices[0], "coords"):
      raise
    dims = [max(d.coords[i] for d in devices) + 1 for i in range(len(devices[0].coords))]
    fitting = sorted({math.prod(subset) for r in range(len(dims) + 1) for subset in itertools.combinations(dims, r)})
    raise ValueError(
      f"Mesh {described} cannot be laid out on these {len(devices)} devices "
      f"(a {'x'.join(map(str, dims))} torus): each axis size must be a "
      f"product of some of the torus dimensions, one of {fitting}."
    ) from e


def axis_rules(config: Any) -> tuple[tuple[str, Any], ...]:
  """`config.logical_axis_rules` (DEFAULT_RULES unless overridden) as flax expects them: tuples, not lists."""
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in config.logical_axis_rules)


def entry_axes(entry: Any) -> tuple[str, ...]:
  """The mesh axes of one PartitionSpec entry (or of a logical axis rule): None, an axis name or a tuple of them."""
  return (entry,) if isinstance(entry, str) else tuple(entry or ())


def as_entry(axes: Sequence[str]) -> Any:
  """The PartitionSpec entry for mesh axes: None, one name, or a tuple of names."""
  return axes[0] if len(axes) == 1 else (tuple(axes) or None)


def without_axis(entry: Any, axis: str) -> Any:
  """A PartitionSpec entry (or logical rule value) with the mesh axis `axis` taken out."""
  return as_entry(tuple(name for name in entry_axes(entry) if name != axis))


def _fit(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh, where: str) -> PartitionSpec:
  """Drops mesh axes from dimensions whose size they do not divide.

  Small or odd-sized dimensions (a tiny config's hidden size 36 on fsdp=8)
  then stay replicated instead of failing to compile.
  """
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = entry_axes(axes)
    while names and dim % math.prod(mesh.shape[n] for n in names):
      names = names[:-1]
    if names != entry_axes(axes):
      logging.warning(
        "%s: dimension of size %d not divisible by mesh axes %s; sharding it over %s instead.",
        where,
        dim,
        axes,
        names or "nothing",
      )
    fitted.append(as_entry(names))
  return PartitionSpec(*fitted)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Any:
  """NamedShardings for an abstract tree of `nn.Partitioned`-boxed leaves.

  Args:
    abstract_tree: e.g. `jax.eval_shape` of the model init or of the whole
      train state (optimizer moments inherit their parameter's boxes); leaves
      that are not boxed (step counters) are replicated.
    mesh: from `create_mesh`.
    rules: logical axis rules.

  Returns:
    A tree of `NamedSharding` with the structure of the unboxed tree; it is
    also a prefix of the boxed tree, so it serves as `jax.jit` out_shardings
    whether the init returns boxes or `nn.unbox`ed arrays.
  """
  logical_specs = nn.get_partition_spec(abstract_tree)
  mesh_specs = nn.logical_to_mesh(logical_specs, rules)
  shapes = unboxed(abstract_tree)
  leaves, treedef = jax.tree.flatten_with_path(mesh_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  shardings = [
    NamedSharding(mesh, _fit(spec, getattr(shape, "shape", ()), mesh, jax.tree_util.keystr(path)))
    for (path, spec), shape in zip(leaves, jax.tree.leaves(shapes))
  ]
  return jax.tree.unflatten(treedef, shardings)


def unboxed(tree: Any) -> Any:
  """The values inside `nn.Partitioned` boxes, WITHOUT the sharding constraint `nn.unbox` adds under a mesh.

  Safe on abstract trees (ShapeDtypeStructs) inside `jax.set_mesh`.
  """
  return jax.tree.map(
    lambda x: x.value if isinstance(x, nn.Partitioned) else x, tree, is_leaf=lambda x: isinstance(x, nn.Partitioned)
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Examples split over ('data', 'fsdp'), the rest of each array whole."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
  """How many ways the global batch is split."""
  return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def interleave_processes(devices: Sequence[jax.Device]) -> list[jax.Device]:
  """`devices` in the order p0d0, p1d0, p0d1, p1d1, ...: every process's devices spread along the mesh's axes.

  A TPU pod's mesh looks like this: `mesh_utils.create_device_mesh((16, 1, 1))`
  over a v4-32 (4 hosts) orders the batch's blocks by host 0, 1, 2, 3, 0, 1, ...
  `config.debug.interleave_processes` lays a CPU run's mesh out so, for tests.
  """
  by_process: dict[int, list[jax.Device]] = {}
  for device in devices:
    by_process.setdefault(device.process_index, []).append(device)
  return [device for group in zip(*by_process.values(), strict=True) for device in group]


@functools.lru_cache(maxsize=8)  # asked for every batch (fine-tuning), of a few sizes per run
def _rows_by_process(mesh: Mesh, global_size: int) -> dict[int, np.ndarray]:
  """Each process's rows of a global batch of `global_size`: its devices' blocks, in increasing order."""
  blocks: dict[int, set[tuple[int, int]]] = {}
  for device, index in batch_sharding(mesh).devices_indices_map((global_size,)).items():
    blocks.setdefault(device.process_index, set()).add(index[0].indices(global_size)[:2])
  return {p: np.concatenate([np.arange(*block) for block in sorted(b)]) for p, b in sorted(blocks.items())}


def process_rows(mesh: Mesh, global_size: int) -> np.ndarray:
  """The rows of a global batch of `global_size` that this process feeds (`global_batch`), in feeding order.

  They are the rows its devices hold, which need not be consecutive: on a TPU
  pod process 0's blocks may be 0, 4, 8 and 12 of 16 (`interleave_processes`).
  `jax.make_array_from_process_local_data` fills a process's blocks in
  increasing order from its rows, so a process that fed rows [p·n, (p+1)·n)
  instead would put other examples in those blocks, and row-ordered outputs
  (predictions) would no longer line up with their inputs.
  """
  return _rows_by_process(mesh, global_size)[jax.process_index()]


def local_rows(batch: Any, mesh: Mesh) -> Any:
  """This process's rows (`process_rows`) of a global NumPy batch that every process holds (fine-tuning's)."""
  return jax.tree.map(lambda x: x[process_rows(mesh, len(x))], batch)


def data_shards(mesh: Mesh, global_size: int, num_shards: int = 0) -> tuple[int, list[int]]:
  """(num_shards, those this process reads): the global batch as `num_shards` equal consecutive parts.

  A process reads a data shard's stream for every part its devices hold, so
  each part must lie whole on one process's devices (or on several, which
  then read it alike). 0 chooses the fewest such parts: one per process when
  each holds consecutive rows, one per device block when the mesh interleaves
  the processes (`interleave_processes`). With a given count the global
  batches are the same on any number of processes and any mesh.
  """
  rows = _rows_by_process(mesh, global_size)

  def whole(n: int) -> bool:
    size = global_size // n
    return global_size % n == 0 and all(len(np.unique(r // size)) * size == len(r) for r in rows.values())

  fewest = next(n for n in range(len(rows), global_size + 1) if whole(n))
  if num_shards and not whole(num_shards):
    raise ValueError(
      f"config.data.num_shards={num_shards} cuts the global batch of {global_size} into parts that lie on "
      f"several processes' devices; use a multiple of {fewest} that divides the batch (or 0 for {fewest})."
    )
  num_shards = num_shards or fewest
  return num_shards, np.unique(process_rows(mesh, global_size) // (global_size // num_shards)).tolist()


def global_batch(local_batch: Any, mesh: Mesh) -> Any:
  """Global jax.Arrays from this process's NumPy batch (every leaf [b, ...]).

  Each process passes the rows `process_rows` names, in that order: rows of a
  global batch every process holds (`local_rows`), or of the data shards it
  reads (`data_shards`).
  """
  sharding = batch_sharding(mesh)
  local_parallel = data_parallel_size(mesh) // jax.process_count()
  for path, x in jax.tree.leaves_with_path(local_batch):
    if np.shape(x)[0] % max(local_parallel, 1):
      raise ValueError(
        f"Batch leaf {jax.tree_util.keystr(path)} has {np.shape(x)[0]} rows "
        f"in this process, not divisible by its {local_parallel} "
        "data-parallel shards (mesh data x fsdp); change batch_size."
      )
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def maybe_initialize_distributed(config: Any = None) -> bool:
  """Starts multi-process JAX when configured; call before touching devices.

  Reads `config.distributed` (or the environment when a field is unset):
    coordinator_address  'host:port' of process 0 (JAX_COORDINATOR_ADDRESS).
    num_processes        processes in the job (JAX_NUM_PROCESSES).
    process_id           this process, 0..num_processes-1 (JAX_PROCESS_ID).
    auto                 True: let JAX detect the cluster (Cloud TPU pod,
                         SLURM, ...) with no other field.
    heartbeat_timeout_seconds, shutdown_timeout_seconds: when set, how soon
                         a process whose peer died stops with an error, and
                         how long a finishing process waits for the others.
  With none of them set this is a single-process run and nothing happens.

  Returns:
    True when `jax.distributed.initialize` was called.
  """
  dist = getattr(config, "distributed", None)

  def field(name, env):
    value = getattr(dist, name, None)
    if value in (None, "", -1):
      value = os.environ.get(env) or None
    return value

  address = field("coordinator_address", "JAX_COORDINATOR_ADDRESS")
  num_processes = field("num_processes", "JAX_NUM_PROCESSES")
  process_id = field("process_id", "JAX_PROCESS_ID")
  timeouts = {
    name: int(getattr(dist, name))
    for name in ("heartbeat_timeout_seconds", "shutdown_timeout_seconds")
    if getattr(dist, name, None)
  }
  if jax.distributed.is_initialized():
    return False
  if address:
    if num_processes is None or process_id is None:
      raise ValueError(
        f"coordinator_address {address!r} is set but num_processes or "
        "process_id is not; set config.distributed.num_processes and "
        ".process_id (or JAX_NUM_PROCESSES / JAX_PROCESS_ID)."
      )
    jax.distributed.initialize(
      coordinator_address=address, num_processes=int(num_processes), process_id=int(process_id), **timeouts
    )
    return True
  if getattr(dist, "auto", False):
    jax.distributed.initialize(**timeouts)
    return True
  return False

"""Compile the real sharded train step for a TPU slice on any host: does the config fit, and what does it cost?

  python -m albert_jax.compile_check --config=experiments/xxlarge.py --topology=v3:16x16 [--json=PATH]

`libtpu` (pip) compiles for a TPU topology without the TPU: the mesh is built
from the config over the slice's devices exactly as training builds it, the
`train_step` of `albert_jax.train.build` is lowered with abstract inputs
(ShapeDtypeStructs carrying their shardings; no data, no parameters) and
compiled by the TPU compiler. The report gives what a user needs before renting
the slice: per-device memory against the chip's HBM, the analytic (model) FLOPs
and the step time at 50% MFU, the FLOPs the compiled step executes (recompute
included), and the collectives per step, split into those inside the scanned
layer loop (run once per layer) and those outside (once per step), with the
all-reduce bytes per step.

Executed FLOPs: XLA's `cost_analysis()` counts a while loop's body once, not
once per iteration, and fully unrolling the layer scan (`scan_unroll` = L)
would not fix that: with the loop gone XLA removes the rematerialisation as
common subexpressions (the model's remat uses `prevent_cse=False`), so it
would count (and compile) a program without remat. Instead the step is
compiled twice with the loop kept, at `scan_unroll` 1 (the real config) and 2
(a probe with 4 scanned layers, where the loop body holds two layers): the
difference is one layer's forward, backward and recomputation, the rest is
what runs outside the loop, and executed = outside + layers x body. The
Pallas flash kernel's forward declares its cost to XLA; its two backward
kernels declare none, so their matrix products are added analytically.
"""

import dataclasses
import importlib.util
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
from flax.linen import partitioning as nn_partitioning

from albert_jax import attention as attention_lib
from albert_jax import config_lib, sharding, tasks
from albert_jax import model as model_lib
from albert_jax.tasks import buckets, race
from albert_jax.tools import flops as flops_lib
from albert_jax.tools import hlo_collectives
from albert_jax.trainers import finetuning, pretraining

GiB = 2**30

# HBM per JAX device (a TensorCore on v2/v3; a chip on v4/v5p with megacore, and on the single-core v5e/v6e).
HBM_BYTES = {
  "TPU v2": 8 * GiB,
  "TPU v3": 16 * GiB,
  "TPU v4": 32 * GiB,
  "TPU v5 lite": 16 * GiB,
  "TPU v5": 95 * GiB,  # v5p
  "TPU v6 lite": 32 * GiB,
}
# JAX runs v4 with megacore (one device per chip, both TensorCores); the compile-only topology must match.
_CHIP_CONFIG = {"v4": "megacore"}
EXAMPLE_TOPOLOGIES = ("v3:16x16", "v4:4x4x4", "v5e:16x16", "v5p:4x4x4", "v6e:8x8", "v5e:2x2")


class CompileCheckError(ValueError):
  """The check cannot run as asked; the message says what to change."""


class DoesNotFit(CompileCheckError):
  """The TPU compiler ran out of HBM for this config on this slice."""


def libtpu_install_line() -> str:
  return f'pip install "jax[tpu]=={jax.__version__}"'


def topology_devices(topology: str) -> list[Any]:
  """The compile-only devices of a TPU slice such as 'v3:16x16' (512 TensorCores); '' = this machine's devices."""
  if not topology:
    return jax.devices()
  if importlib.util.find_spec("libtpu") is None:
    raise CompileCheckError(f"Compiling for a TPU topology needs libtpu; install it with: {libtpu_install_line()}")
  # Compiling needs no TPU, so several checks (or a check beside a TPU job) may load libtpu at once.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  generation = topology.split(":")[0].lower()
  from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top

  if hardware_utils.num_available_tpu_chips_and_device_id()[0] == 0:
    # Off a TPU VM, libtpu looks for its accelerator type and peer hosts (a screenful of warnings when it finds
    # none). Compiling for a named topology needs neither; these values leave the compiled program unchanged.
    known = generation in ("v2", "v3", "v4", "v5e", "v5p", "v6e")  # else libtpu reports the unknown topology below
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{generation if known else 'v4'}-8")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  kwargs = {"chip_config_name": _CHIP_CONFIG[generation]} if generation in _CHIP_CONFIG else {}
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=topology, **kwargs).devices)
  except jax.errors.JaxRuntimeError as e:
    reason = str(e).splitlines()[0]
    if "INVALID_ARGUMENT" not in reason and "NOT_FOUND" not in reason:
      raise CompileCheckError(f"libtpu could not describe {topology!r}: {reason}") from None
    raise CompileCheckError(
      f"Unknown TPU topology {topology!r} ({reason}). Use GENERATION:CHIPS, e.g. {', '.join(EXAMPLE_TOPOLOGIES)}."
    ) from None


def abstract_batch(config, mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch the train step receives (pretraining_data.FEATURES), as sharded ShapeDtypeStructs."""
  B, T, P = config.batch_size, config.data.max_seq_length, config.data.max_predictions_per_seq
  shard = sharding.batch_sharding(mesh)
  spec = lambda shape, dtype=jnp.int32: jax.ShapeDtypeStruct(shape, dtype, sharding=shard)
  return dict(
    input_ids=spec((B, T)),
    input_mask=spec((B, T)),
    token_type_ids=spec((B, T)),
    masked_lm_positions=spec((B, P)),
    masked_lm_ids=spec((B, P)),
    masked_lm_weights=spec((B, P), jnp.float32),
    sentence_order_label=spec((B,)),
  )


def model_config(config):
  """The config's model; vocab_size 0 ("follow the vocabulary") means the vocabulary the data section would train."""
  model = config_lib.model_config(config)
  return model.replace(vocab_size=config.data.vocab_size) if model.vocab_size == 0 else model


@dataclasses.dataclass
class Compiled:
  """A train step compiled for a slice, with what the report needs."""

  compiled: Any  # jax.stages.Compiled
  mesh: jax.sharding.Mesh
  model: Any  # AlbertConfig
  lower_seconds: float
  compile_seconds: float


def compile_train_step(config, topology: str, devices=None) -> Compiled:
  """Lowers and compiles `pretraining.build(...).train_step` for the slice, running nothing."""
  devices = devices or topology_devices(topology)
  try:
    mesh = sharding.create_mesh(config.mesh, devices)
  except ValueError as e:
    raise CompileCheckError(f"{e} ({topology} has {len(devices)} devices.)") from None
  parallel = sharding.data_parallel_size(mesh)
  if config.batch_size % parallel:
    raise CompileCheckError(
      f"config.batch_size={config.batch_size} is not divisible by the data-parallel size {parallel} (mesh data x "
      f"fsdp = {dict(mesh.shape)}) on {topology}; choose a multiple of {parallel}."
    )
  rules = sharding.axis_rules(config)
  model = model_config(config)
  start = time.perf_counter()
  setup = pretraining.build(config, model, mesh, rules)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=replicated)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    lowered = setup.train_step.lower(setup.abstract_state, abstract_batch(config, mesh), rng)
  lowered_at = time.perf_counter()
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    raise DoesNotFit(
      f"{model.remat_policy=!s} on mesh {dict(mesh.shape)} of {topology} does not fit: "
      f"{str(e).split(':', 1)[-1].strip().splitlines()[0]} Try a remat policy that keeps less "
      f"(--config.model.remat_policy=, from least to most recomputation: {', '.join(model_lib.REMAT_POLICIES)}), "
      "--config.grad_accum_steps=2 or more, --config.mesh.fsdp=N, bfloat16 (--config.model.dtype=bfloat16) or "
      "--config.model.attention=flash."
    ) from None
  return Compiled(compiled, mesh, model, lowered_at - start, time.perf_counter() - lowered_at)


def finetuning_batch(config, spec, length: int, mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """A fine-tuning global batch at one bucket's `length`, as sharded ShapeDtypeStructs (the task's columns)."""
  B = config.batch_size
  tokens = (B, race.NUM_CHOICES, length) if spec.head == "multiple_choice" else (B, length)
  shard = sharding.batch_sharding(mesh)
  columns = {k: tokens for k in finetuning.INPUTS}
  if spec.head in ("span", "span_xlnet"):
    columns.update(start_positions=(B,), end_positions=(B,))
  if spec.head == "span_xlnet":
    columns.update(p_mask=tokens, is_impossible=(B,))
  batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=shard) for k, shape in columns.items()}
  if spec.head not in ("span", "span_xlnet"):
    label_type = jnp.float32 if spec.head == "regression" else jnp.int32
    batch["label"] = jax.ShapeDtypeStruct((B,), label_type, sharding=shard)
  return batch


def compile_finetuning_steps(config, topology: str, devices=None) -> dict[str, Any]:
  """Lowers and compiles the fine-tuning train step once per length bucket (`config.task.length_buckets`): the
  compiles a run makes, with each one's time and per-device memory."""
  devices = devices or topology_devices(topology)
  mesh = sharding.create_mesh(config.mesh, devices)
  if config.batch_size % sharding.data_parallel_size(mesh):
    raise CompileCheckError(
      f"config.batch_size={config.batch_size} is not divisible by the data-parallel size "
      f"{sharding.data_parallel_size(mesh)} on {topology}; choose a multiple."
    )
  rules = sharding.axis_rules(config)
  model = config_lib.model_config(config)
  if model.vocab_size == 0:  # the vocabulary in use: the official 30k one by default
    model = model.replace(vocab_size=30000)
  spec = tasks.get_spec(config.task)
  max_seq_length = int(config.task.max_seq_length)
  setup = finetuning.build(
    config, model, spec, finetuning_batch(config, spec, max_seq_length, mesh)["input_ids"].shape[1:], mesh, rules
  )
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  device_kind = mesh.devices.flat[0].device_kind
  results = []
  for length in buckets.resolve(config.task) or (max_seq_length,):
    start = time.perf_counter()
    with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
      lowered = setup.train_step.lower(setup.abstract_state, finetuning_batch(config, spec, length, mesh), rng)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    results.append(
      {
        "seq_len": length,
        "lower_seconds": lowered_at - start,
        "compile_seconds": time.perf_counter() - lowered_at,
        "memory": memory_report(compiled, device_kind),
        "flops_per_step": flops_lib.train_flops_per_step(model, config.batch_size, length, 0, full_last_layer=True),
      }
    )
  return {
    "topology": topology,
    "device_kind": device_kind,
    "num_devices": mesh.size,
    "mesh": dict(mesh.shape),
    "task": spec.name,
    "preset": config.model.get("preset", ""),
    "dtype": model.dtype,
    "batch_size": config.batch_size,
    "buckets": results,
  }


def format_finetuning_report(report: dict[str, Any]) -> str:
  lines = [
    f"{report['task']} fine-tuning, {report['preset'] or 'model'} on {report['topology'] or 'this machine'} "
    f"({report['num_devices']} x {report['device_kind']}), mesh {report['mesh']}, dtype {report['dtype']}, "
    f"batch {report['batch_size']}: one compile per length bucket",
    f"  {'seq':>5} {'compile s':>10} {'lower s':>8} {'memory':>11} {'of HBM':>11} {'FLOPs/step':>11}",
  ]
  for b in report["buckets"]:
    m = b["memory"]
    fits = "" if m["fits"] is None else ("  fits" if m["fits"] else "  DOES NOT FIT")
    lines.append(
      f"  {b['seq_len']:>5} {b['compile_seconds']:>10.1f} {b['lower_seconds']:>8.1f} {_bytes(m['total']):>11} "
      f"{_bytes(m['hbm']):>11} {b['flops_per_step']:>11.4g}{fits}"
    )
  return "\n".join(lines)


def _kind_value(table: dict[str, Any], device_kind: str):
  """The entry whose name the device kind starts with, longest first ('TPU v5 lite' before 'TPU v5')."""
  for name in sorted(table, key=len, reverse=True):
    if device_kind.startswith(name):
      return table[name]
  return None


def memory_report(compiled, device_kind: str) -> dict[str, float]:
  """Per-device bytes from XLA's buffer assignment; donated state counts once (outputs alias arguments)."""
  stats = compiled.memory_analysis()
  total = (
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    - stats.alias_size_in_bytes
    + stats.temp_size_in_bytes
    + stats.generated_code_size_in_bytes
  )
  hbm = _kind_value(HBM_BYTES, device_kind)
  return {
    "arguments": stats.argument_size_in_bytes,
    "outputs": stats.output_size_in_bytes,
    "aliased": stats.alias_size_in_bytes,
    "temporaries": stats.temp_size_in_bytes,
    "generated_code": stats.generated_code_size_in_bytes,
    "total": total,
    "hbm": hbm,
    "headroom": None if hbm is None else hbm - total,
    "fits": None if hbm is None else total <= hbm,
  }


def flops_report(config, model, num_devices: int, device_kind: str) -> dict[str, float]:
  step_flops = flops_lib.train_flops_per_step(
    model, config.batch_size, config.data.max_seq_length, config.data.max_predictions_per_seq
  )
  peak = _kind_value(flops_lib.PEAK_FLOPS, device_kind)
  return {
    "flops_per_step": step_flops,
    "peak_flops_per_device": peak,
    "step_seconds_at_50pct_mfu": None if peak is None else step_flops / (0.5 * peak * num_devices),
  }


def _cost(compiled) -> float:
  analysis = compiled.cost_analysis()
  return float((analysis[0] if isinstance(analysis, list) else analysis)["flops"])


def flash_backward_flops(model, batch_size: int, seq_len: int, num_predictions: int) -> float:
  """Matrix-product FLOPs of the Pallas kernel's backward (no cost estimate reaches XLA) in one step: per
  attention application, the dk/dv kernel's 4 and the dq kernel's 3 products of Q x T x head_dim per head
  (scores recomputed in each), at the kernel's padded lengths."""
  full_queries, keys = attention_lib.kernel_lengths(seq_len, seq_len)
  per_query = 2 * 7 * keys * model.hidden_size  # 7 products, 2 FLOPs per multiply-add, all heads
  layers = model.num_hidden_layers * model.inner_group_num
  gathered = num_predictions is not None and model_lib.gathers_last_layer(model)
  last_queries = attention_lib.kernel_lengths(num_predictions + 1, seq_len)[0] if gathered else full_queries
  return batch_size * ((layers - 1) * full_queries + last_queries) * per_query


def executed_flops(config, compiled: Compiled, devices) -> dict[str, Any]:
  """The FLOPs the compiled step executes, all devices together (see the module docstring), or why not."""
  model = compiled.model
  if model.sharing != "all" or model.num_hidden_groups != 1 or model.inner_group_num != 1:
    return {"executed_flops_per_step": None, "executed_flops_note": "only for one shared layer (sharing='all')"}
  microbatches = config.grad_accum_steps
  scanned = model.num_hidden_layers - (1 if model_lib.gathers_last_layer(model) else 0)
  one_step = config.copy_and_resolve_references()  # with accumulation: one microbatch's step, counted k times
  one_step.update(batch_size=config.batch_size // microbatches, grad_accum_steps=1)
  one_step.model.scan_unroll = 1
  probe = one_step.copy_and_resolve_references()
  probe.model.update(num_hidden_layers=5 if scanned < model.num_hidden_layers else 4, scan_unroll=2)
  reuse = model.scan_unroll == 1 and microbatches == 1
  one = _cost(compiled.compiled if reuse else compile_train_step(one_step, "", devices).compiled)
  two = _cost(compile_train_step(probe, "", devices).compiled)
  per_device = (one - (two - one)) + scanned * (two - one)
  total = microbatches * per_device * compiled.mesh.size
  pallas = model.attention == "flash" and compiled.mesh.devices.flat[0].platform == "tpu"
  if pallas:
    total += flash_backward_flops(
      model, config.batch_size, config.data.max_seq_length, config.data.max_predictions_per_seq
    )
  note = "XLA cost analysis at scan_unroll 1 and 2" + (" + Pallas backward" if pallas else "")
  if microbatches > 1:
    note += f"; one microbatch's step x {microbatches} (its LAMB update too)"
  return {
    "executed_flops_per_step": total,
    "executed_flops_loop_body_per_device": two - one,
    "executed_flops_note": note,
  }


def check(config, topology: str, measure_executed_flops: bool = True) -> dict[str, Any]:
  """The whole report for one config on one slice, as plain data (what --json writes)."""
  devices = topology_devices(topology)
  return report(config, topology, compile_train_step(config, topology, devices), devices, measure_executed_flops)


def report(config, topology: str, result: Compiled, devices, measure_executed_flops: bool = True) -> dict[str, Any]:
  """The report of a compiled step (`compile_train_step(config, topology, devices)`)."""
  device_kind = result.mesh.devices.flat[0].device_kind
  found = hlo_collectives.collectives(result.compiled.as_text())
  summary = hlo_collectives.summarize(found)
  flops = flops_report(config, result.model, result.mesh.size, device_kind)
  executed = executed_flops(config, result, devices) if measure_executed_flops else {"executed_flops_per_step": None}
  ratio = executed["executed_flops_per_step"] and executed["executed_flops_per_step"] / flops["flops_per_step"]
  return {
    "topology": topology,
    "device_kind": device_kind,
    "num_devices": result.mesh.size,
    "mesh": dict(result.mesh.shape),
    "preset": config.model.get("preset", ""),
    "remat_policy": result.model.remat_policy,
    "dtype": result.model.dtype,
    "attention": result.model.attention,
    "batch_size": config.batch_size,
    "seq_len": config.data.max_seq_length,
    "grad_accum_steps": config.grad_accum_steps,
    "num_layers": result.model.num_hidden_layers,
    "lower_seconds": result.lower_seconds,
    "compile_seconds": result.compile_seconds,
    "memory": memory_report(result.compiled, device_kind),
    **flops,
    **executed,
    "executed_over_model_flops": ratio or None,
    "all_reduce_bytes_per_step": sum(summary[where]["all-reduce"]["bytes_per_step"] for where in summary),
    "collectives": summary,
    "collective_instructions": [dataclasses.asdict(c) for c in found],
  }


def _bytes(n: float | None) -> str:
  if n is None:
    return "n/a"
  for unit, size in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
    if abs(n) >= size:
      return f"{n / size:.2f} {unit}"
  return f"{n:.0f} B"


def format_report(report: dict[str, Any]) -> str:
  """The report as text: memory, FLOPs and the collectives table."""
  m = report["memory"]
  lines = [
    f"{report['preset'] or 'model'} on {report['topology']} ({report['num_devices']} x {report['device_kind']}), "
    f"mesh {report['mesh']}, remat {report['remat_policy']}, dtype {report['dtype']}, attention "
    f"{report['attention']}, batch "
    f"{report['batch_size']} x seq {report['seq_len']}, grad_accum {report['grad_accum_steps']}",
    f"compiled in {report['compile_seconds']:.1f} s (lowered in {report['lower_seconds']:.1f} s)",
    "per-device memory:",
    *(f"  {k:<15}{_bytes(m[k])}" for k in ("arguments", "outputs", "aliased", "temporaries", "generated_code")),
    f"  {'total':<15}{_bytes(m['total'])} of {_bytes(m['hbm'])} HBM; headroom {_bytes(m['headroom'])}"
    f"{'' if m['fits'] is None else ('  (fits)' if m['fits'] else '  (DOES NOT FIT)')}",
    f"analytic FLOPs per step: {report['flops_per_step']:.4g}; at 50% MFU of "
    f"{report['num_devices']} x {report['peak_flops_per_device'] or float('nan'):.4g} FLOP/s: "
    + ("n/a" if report["step_seconds_at_50pct_mfu"] is None else f"{report['step_seconds_at_50pct_mfu']:.4g} s/step"),
    "executed FLOPs per step: "
    + (
      f"{report['executed_flops_per_step']:.4g} = {report['executed_over_model_flops']:.3f} x the model's "
      f"({report['executed_flops_note']})"
      if report["executed_flops_per_step"]
      else f"n/a ({report.get('executed_flops_note', 'not measured')})"
    ),
    f"all-reduce per step: {_bytes(report['all_reduce_bytes_per_step'])}",
    f"collectives per step (the layer loop runs {report['num_layers']} times):",
    f"  {'':<20}{'outside loop':>26}{'inside loop':>30}",
  ]
  for kind in hlo_collectives.KINDS:
    cells = []
    for where in ("outside_loop", "inside_loop"):
      row = report["collectives"][where][kind]
      cells.append(f"{row['instructions']:>4} ops {row['per_step']:>5}/step {_bytes(row['bytes_per_step']):>10}")
    lines.append(f"  {kind:<20}{cells[0]:>26}{cells[1]:>30}")
  return "\n".join(lines)


def run(config, topology: str, json_path: str = "", measure_executed_flops: bool = True) -> dict[str, Any]:
  """Checks, prints the report and writes it as JSON when asked; the entry point of both CLIs. A fine-tuning
  config (one with a `task`) gets one compile per length bucket."""
  if "task" in config:
    report = compile_finetuning_steps(config, topology)
    print(format_finetuning_report(report))
  else:
    report = check(config, topology, measure_executed_flops)
    print(format_report(report))
  if json_path:
    with open(json_path, "w") as f:
      json.dump(report, f, indent=2)
  return report


def use_host_backend():
  """Compile-only work needs no accelerator: stay off it (on a TPU VM a running job may hold it)."""
  jax.config.update("jax_platforms", "cpu")


def main(config, topology: str, json_path: str, measure_executed_flops: bool = True):
  if topology:
    use_host_backend()
  run(config, topology, json_path, measure_executed_flops)

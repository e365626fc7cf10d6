"""compile_check: the real train step compiled for a TPU slice from this CPU host; FLOPs against XLA's count."""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax.linen import partitioning as nn_partitioning

from albert_jax import config_lib, sharding
from albert_jax import model as model_lib
from albert_jax.tools import compile_check, hlo_collectives
from albert_jax.tools import flops as flops_lib
from albert_jax.trainers import pretraining

REPO = pathlib.Path(__file__).resolve().parents[1]

needs_libtpu = pytest.mark.skipif(
  importlib.util.find_spec("libtpu") is None,
  reason=f"libtpu is not installed; TPU compile checks need it: {compile_check.libtpu_install_line()}",
)
TOPOLOGY = "v5e:2x2"  # 4 single-core chips: the smallest slice that has a data and an fsdp axis to split
SMALL_FLAGS = {
  "model.vocab_size": 256,
  "model.embedding_size": 32,
  "model.hidden_size": 64,
  "model.num_hidden_layers": 3,
  "model.num_attention_heads": 2,
  "model.intermediate_size": 128,
  "model.max_position_embeddings": 64,
  "data.max_seq_length": 64,
  "data.max_predictions_per_seq": 8,
  "batch_size": 16,
}


def _small_config(**mesh):
  config = config_lib.pretraining("base")
  for path, value in SMALL_FLAGS.items():
    section, _, field = path.rpartition(".")
    (config[section] if section else config)[field] = value
  config.mesh.update(mesh)
  return config


def _param_shapes(config, under: str = "") -> list[tuple[int, ...]]:
  model = model_lib.AlbertForPreTraining(compile_check.model_config(config))
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 8), np.int32)))["params"]
  return [
    leaf.value.shape if hasattr(leaf, "value") else leaf.shape
    for path, leaf in jax.tree.leaves_with_path(params, is_leaf=lambda x: hasattr(x, "value"))
    if under in jax.tree_util.keystr(path)
  ]


@pytest.fixture(scope="module")
def data_parallel_report():
  return compile_check.check(_small_config(data=4), TOPOLOGY)


@pytest.fixture(scope="module")
def fsdp_report():
  return compile_check.check(_small_config(data=1, fsdp=4), TOPOLOGY)


@needs_libtpu
def test_memory_report_adds_up_against_the_chip(data_parallel_report):
  r, m = data_parallel_report, data_parallel_report["memory"]
  assert (r["device_kind"], r["num_devices"], r["mesh"]) == ("TPU v5 lite", 4, {"data": 4, "fsdp": 1, "tensor": 1})
  assert m["total"] == (m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"] + m["generated_code"])
  assert m["hbm"] == 16 * 2**30 and m["headroom"] == m["hbm"] - m["total"] and m["fits"]
  # Replicated under data parallelism: every device holds the float32 params and both LAMB moments, donated.
  state_bytes = 3 * 4 * sum(np.prod(s) for s in _param_shapes(_small_config()))
  assert state_bytes <= m["arguments"] < state_bytes + 2**20
  assert m["aliased"] >= state_bytes
  expected_flops = flops_lib.train_flops_per_step(compile_check.model_config(_small_config()), 16, 64, 8)
  assert r["flops_per_step"] == expected_flops
  assert r["step_seconds_at_50pct_mfu"] == pytest.approx(expected_flops / (0.5 * 197e12 * 4))


@needs_libtpu
def test_data_parallel_gradient_all_reduce_once_per_step_not_per_layer(data_parallel_report):
  inside = data_parallel_report["collectives"]["inside_loop"]
  outside = data_parallel_report["collectives"]["outside_loop"]
  assert all(row["per_step"] == 0 for row in inside.values()), inside
  grad_bytes = 4 * sum(np.prod(s) for s in _param_shapes(_small_config()))
  # Every float32 gradient once; the tied word embedding's two partial gradients (input lookup and MLM decoder)
  # are all-reduced before they are added, so it counts twice.
  word_embedding_bytes = 4 * 256 * 32
  assert outside["all-reduce"]["bytes_per_step"] == pytest.approx(grad_bytes + word_embedding_bytes, abs=1024)
  assert outside["all-gather"]["per_step"] == outside["reduce-scatter"]["per_step"] == 0
  assert data_parallel_report["all_reduce_bytes_per_step"] == outside["all-reduce"]["bytes_per_step"]


@needs_libtpu
def test_executed_flops_count_the_recomputation_of_the_scanned_layers():
  # Full remat recomputes the forward pass of every scanned layer (L-1 of them; the gathered last layer is not
  # rematerialised): executed(full) - executed(none) is that forward, to the elementwise work XLA also counts.
  def report(remat_policy):
    config = _small_config(data=4)
    config.model.update(hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_hidden_layers=4)
    config.model.update(remat_policy=remat_policy, max_position_embeddings=128)
    config.data.update(max_seq_length=128)
    return compile_check.check(config, TOPOLOGY)

  none, full = report("none"), report("full")
  model = compile_check.model_config(_small_config()).replace(
    hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_hidden_layers=4
  )
  per_layer = flops_lib.forward_flops_per_sequence(model, 128, 8) - flops_lib.forward_flops_per_sequence(
    model.replace(num_hidden_layers=3), 128, 8
  )
  recompute = 16 * 3 * per_layer
  assert 1.0 < none["executed_over_model_flops"] < 1.1
  assert full["executed_flops_per_step"] - none["executed_flops_per_step"] == pytest.approx(recompute, rel=0.1)
  assert none["executed_flops_note"] == "XLA cost analysis at scan_unroll 1 and 2"


@needs_libtpu
def test_flash_attention_compiles_for_tpu_and_its_backward_kernels_are_counted():
  config = _small_config(data=2, fsdp=2)
  config.model.update(attention="flash", dtype="bfloat16", remat_policy="save_all")
  report = compile_check.check(config, TOPOLOGY)
  assert report["attention"] == "flash" and report["memory"]["fits"]
  assert report["executed_flops_note"].endswith("+ Pallas backward")
  backward = compile_check.flash_backward_flops(compile_check.model_config(config), 16, 64, 8)
  assert backward == 16 * (2 * 64 + 9) * 2 * 7 * 128 * 64  # keys padded to 128; 1 + 8 gathered queries
  assert report["executed_flops_per_step"] > report["flops_per_step"]


@needs_libtpu
def test_fsdp_gathers_the_shared_layer_once_per_step(fsdp_report):
  shared = {tuple(s) for s in _param_shapes(_small_config(), "layer_group")}
  looped = [c for c in fsdp_report["collective_instructions"] if c["in_loop"]]
  shapes = lambda c: {tuple(int(d) for d in dims.split(",") if d) for dims in re.findall(r"\[([\d,]*)\]", c["shape"])}
  regathered = [c for c in looped if shapes(c) & shared]
  assert not regathered, regathered  # without pretraining.shared_layer_gather, every weight is re-gathered per layer
  assert not [c for c in looped if c["kind"] in ("all-reduce", "reduce-scatter")]  # gradients summed outside
  outside = fsdp_report["collectives"]["outside_loop"]
  assert outside["all-gather"]["per_step"] > 0 and fsdp_report["memory"]["fits"]


@needs_libtpu
@pytest.mark.parametrize(
  "topology, mesh, batch_size, message",
  [
    ("v5e:3x3x3x3", dict(data=4), 16, "Unknown TPU topology 'v5e:3x3x3x3'.*e.g. v3:16x16"),
    ("tpu9:2x2", dict(data=4), 16, "Unknown TPU topology 'tpu9:2x2'"),
    (TOPOLOGY, dict(data=3), 16, "needs 3 devices but 4 are present.*v5e:2x2 has 4 devices"),
    (TOPOLOGY, dict(data=-1, fsdp=3), 16, "4 devices are not divisible by 3"),
    ("v4:4x4x4", dict(data=-1, fsdp=8), 64, "cannot be laid out on these 64 devices.*product of some of the torus"),
    (TOPOLOGY, dict(data=4), 10, "batch_size=10 is not divisible by the data-parallel size 4.*multiple of 4"),
  ],
)
def test_bad_input_says_what_to_change(topology, mesh, batch_size, message):
  config = _small_config(**mesh)
  config.batch_size = batch_size
  with pytest.raises(compile_check.CompileCheckError, match=message):
    compile_check.compile_train_step(config, topology)


@needs_libtpu
def test_the_command_compiles_the_trainers_step_quietly(tmp_path):
  flags = [f"--config.{k}={v}" for k, v in SMALL_FLAGS.items()]
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "albert_jax.compile_check",
      "--config=experiments/base.py",
      f"--topology={TOPOLOGY}",
      "--config.mesh.data=4",
      f"--json={tmp_path / 'report.json'}",
      *flags,
    ],
    cwd=REPO,
    env={**{k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}, "PYTHONPATH": str(REPO)},
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "TPU_WORKER_HOSTNAMES" not in result.stderr and "accelerator type" not in result.stderr  # libtpu kept quiet
  assert "on v5e:2x2 (4 x TPU v5 lite), mesh {'data': 4, 'fsdp': 1, 'tensor': 1}" in result.stdout
  assert "headroom" in result.stdout and "all-reduce" in result.stdout
  assert json.loads((tmp_path / "report.json").read_text())["topology"] == TOPOLOGY


def test_missing_libtpu_names_the_install_line(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(compile_check.CompileCheckError, match=r'pip install "jax\[tpu\]=='):
    compile_check.topology_devices("v5e:2x2")


# ---------------------------------------------------------------------------
# The HLO reader, on a hand-written module.

_HLO = """HloModule m

%body (p: (s32[], f32[8,4])) -> (s32[], f32[8,4]) {
  %p = (s32[], f32[8,4]) parameter(0)
  %ag = bf16[16,4]{1,0} all-gather(%x), channels_id=1, replica_groups=[2,4]<=[8], dimensions={0}
  %rs = f32[2,4]{1,0} reduce-scatter(%y), replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}, to_apply=%add
  ROOT %t = (s32[], f32[8,4]) tuple(%i, %rs)
}

%cond (p: (s32[], f32[8,4])) -> pred[] {
  %p = (s32[], f32[8,4]) parameter(0)
  %c = s32[] constant(12)
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

ENTRY %main (a: f32[8,4]) -> f32[8,4] {
  %w = (s32[], f32[8,4]) while(%init), condition=%cond, body=%body
  %ar = (f32[8,4], f32[3]) all-reduce(%a, %b), replica_groups=mesh['axis_0'=8,'axis_1'=1] {'axis_0'}, to_apply=%add
  %cp = (f32[4], f32[4], u32[]) collective-permute-start(%a), source_target_pairs={{0,1}}
  %cpd = f32[4] collective-permute-done(%cp)
}
"""


def test_hlo_collectives_counts_loop_bodies_once_per_iteration():
  found = {c.name: c for c in hlo_collectives.collectives(_HLO)}
  assert set(found) == {"ag", "rs", "ar", "cp"}  # the -done half is not a second collective
  assert (found["ag"].in_loop, found["ag"].executions, found["ag"].bytes, found["ag"].group_size) == (True, 12, 128, 4)
  assert (found["rs"].bytes, found["rs"].group_size) == (2 * 4 * 4 * 4, 4)  # the reduced input: output x group
  assert (found["ar"].in_loop, found["ar"].executions, found["ar"].bytes, found["ar"].group_size) == (False, 1, 140, 8)
  assert found["cp"].bytes == 16
  table = hlo_collectives.summarize(list(found.values()))
  assert table["inside_loop"]["all-gather"] == {"instructions": 1, "per_step": 12, "bytes_per_step": 12 * 128}


# ---------------------------------------------------------------------------
# Must-show: the analytic FLOPs behind MFU agree with an independent count.


def _matmul_flops(jaxpr) -> float:
  """2·M·N·K of every dot_general the traced step runs, loop bodies times their length."""
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in contracting])
    times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += times * _matmul_flops(sub)
  return total


def test_analytic_flops_match_xla_cost_analysis_of_an_unrolled_step():
  config = _small_config(data=1)
  config.model.update(
    vocab_size=512,
    embedding_size=64,
    hidden_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=1024,
    max_position_embeddings=128,
    scan_unroll=2,
    remat_policy="none",
  )
  config.data.update(max_seq_length=128, max_predictions_per_seq=20)
  config.batch_size = 4
  mesh = sharding.create_mesh(config.mesh, jax.devices()[:1])
  rules = sharding.axis_rules(config)
  model = compile_check.model_config(config)
  setup = pretraining.build(config, model, mesh, rules)
  args = (setup.abstract_state, compile_check.abstract_batch(config, mesh), jax.eval_shape(jax.random.PRNGKey, 0))
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    matmuls = _matmul_flops(jax.make_jaxpr(setup.train_step)(*args).jaxpr)
    xla = setup.train_step.lower(*args).compile().cost_analysis()["flops"]
  analytic = flops_lib.train_flops_per_step(model, 4, 128, 20)
  # Like with like: every matmul of forward and backward, counted from the traced program.
  assert matmuls == pytest.approx(analytic, rel=1e-3)
  # XLA counts every op of the fully unrolled step; the few percent above the matmuls are the elementwise work
  # (softmax, GELU, LayerNorm, the LAMB update) that MFU conventionally leaves out.
  assert analytic < xla < 1.02 * analytic


def test_executed_flops_from_two_compiles_match_the_fully_unrolled_step_and_keep_the_recompute():
  # The report compiles at scan_unroll 1 and 2 (compile_check's docstring says why not at scan_unroll = L).
  # Without remat that extrapolation equals XLA's count of the fully unrolled step, to the loop's bookkeeping;
  # with full remat the unrolled count is lower: with the loop gone XLA merges the recomputed forward into the
  # first one (common subexpressions), which the report must not do.
  def counts(remat_policy):
    config = _small_config(data=1)
    config.model.update(num_hidden_layers=5, hidden_size=256, intermediate_size=1024, num_attention_heads=4)
    config.model.update(max_position_embeddings=128, remat_policy=remat_policy)
    config.data.update(max_seq_length=128)
    devices = jax.devices()[:1]
    result = compile_check.compile_train_step(config, "", devices)
    extrapolated = compile_check.executed_flops(config, result, devices)["executed_flops_per_step"]
    config.model.scan_unroll = 5 - (1 if model_lib.gathers_last_layer(result.model) else 0)
    return extrapolated, compile_check.compile_train_step(config, "", devices).compiled.cost_analysis()["flops"]

  extrapolated, unrolled = counts("none")
  assert extrapolated == pytest.approx(unrolled, rel=5e-3)
  extrapolated_full, unrolled_full = counts("full")
  assert unrolled_full < 0.95 * extrapolated_full
  assert extrapolated_full > 1.2 * extrapolated  # the recomputed forward is counted

r"""The training loop with an input pipeline as slow as the step: time per step near the larger of the two?

`albert_jax.trainers.loop.run` reads the next batch and puts it on the devices while the current step runs,
and waits for the devices only at steps that log or checkpoint. With a pipeline that takes as long as a step,
a loop that waits for every step (as the loop did, through `int(metrics["nonfinite"])`) takes their SUM per
step; this one should take about the LARGER of the two.

The step is the trainer's own (`pretraining.build`: a small ALBERT, LAMB, state donated) on this machine's
CPU; the pipeline is a `next_batch` that sleeps as long as the step takes (an input pipeline waiting on
storage or on other cores). Three loops, round-robin over `--rounds`: the step alone (pipeline instant), the
loop with the slow pipeline, and the same loop with every step waited for.

  python -m benchmarks.input_overlap --json=benchmarks/results/input_overlap.json
"""

import argparse
import json
import pathlib
import statistics
import tempfile
import time

import jax
import orbax.checkpoint as ocp
from flax.linen import partitioning as nn_partitioning

from albert_jax import config_lib, sharding
from albert_jax.trainers import checkpointing, loop, pretraining
from albert_jax.trainers.metric_writer import MetricWriter
from benchmarks import harness

MODEL = dict(embedding_size=64, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)


def _config(steps: int):
  config = config_lib.pretraining("base")
  config.model.update(MODEL)
  config.data.update(max_seq_length=128, max_predictions_per_seq=20)
  config.update(batch_size=16, num_train_steps=steps, warmup_steps=1, log_every_steps=steps, eval_every_steps=0)
  config.update(checkpoint_every_steps=10 * steps)
  return config


def run_loop(config, setup, state, mesh, delay: float, wait_every_step: bool, batch) -> float:
  """Seconds per step of `loop.run` over config.num_train_steps steps from `state` (which it consumes)."""

  def next_batch(step):
    time.sleep(delay)  # the pipeline's time for one batch
    return batch

  train_step = setup.train_step
  if wait_every_step:
    train_step = lambda *args: jax.block_until_ready(setup.train_step(*args))
  trainer = loop.Trainer(
    setup=setup._replace(train_step=train_step),
    next_batch=next_batch,
    save_items=lambda s: dict(state=ocp.args.StandardSave(s)),
    summarize=pretraining.summarize,
    describe=pretraining.describe,
    evaluate=lambda s: {},
    tokens_per_batch=config.batch_size * config.data.max_seq_length,
  )
  with tempfile.TemporaryDirectory() as workdir:
    workdir = pathlib.Path(workdir)
    manager = checkpointing.checkpoint_manager(workdir / "checkpoints", ("state",), 1)
    writer = MetricWriter(workdir)
    start = time.perf_counter()
    outcome = loop.run(config, trainer, state, mesh, manager, writer, jax.random.PRNGKey(1))
    jax.block_until_ready(outcome.state)
    seconds = time.perf_counter() - start
    writer.close()
    manager.close()
  return seconds / config.num_train_steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=20, help="steps per timed loop")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  config = _config(args.steps)
  model_config = config_lib.model_config(config)
  mesh = sharding.create_mesh(config.mesh, jax.devices()[:1])
  rules = sharding.axis_rules(config)
  setup = pretraining.build(config, model_config, mesh, rules)
  batch = harness.pretraining_batch(model_config, config.batch_size, 128, 20)
  times = {"step alone": [], "slow pipeline": [], "slow pipeline, every step waited for": []}
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    fresh = lambda: setup.init(jax.random.PRNGKey(0))
    run_loop(config, setup, fresh(), mesh, 0.0, False, batch)  # compile
    step = run_loop(config, setup, fresh(), mesh, 0.0, True, batch)  # the step's own time, to size the pipeline
    for _ in range(args.rounds):
      times["step alone"].append(run_loop(config, setup, fresh(), mesh, 0.0, False, batch))
      times["slow pipeline"].append(run_loop(config, setup, fresh(), mesh, step, False, batch))
      times["slow pipeline, every step waited for"].append(run_loop(config, setup, fresh(), mesh, step, True, batch))
  medians = {k: statistics.median(v) for k, v in times.items()}
  cpu = harness.cpu_model()
  print(f"{cpu}, {jax.device_count()} XLA:CPU device; pipeline: {step * 1e3:.0f} ms per batch (one step waited for)")
  for name, seconds in medians.items():
    print(f"  {name:<40} {seconds * 1e3:7.0f} ms per step (median of {args.rounds})")
  larger, total = max(medians["step alone"], step), medians["step alone"] + step
  print(f"  larger of step and pipeline {larger * 1e3:.0f} ms, their sum {total * 1e3:.0f} ms")
  if args.json:
    pathlib.Path(args.json).write_text(
      json.dumps({"cpu": cpu, "pipeline_s": step, "steps": args.steps, "times_s": times, "median_s": medians}, indent=2)
    )


if __name__ == "__main__":
  main()

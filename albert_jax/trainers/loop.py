"""The training loop both trainers run, with its periodic actions written once.

Every step: stop cleanly on preemption, feed a batch, queue the step. Then,
by the config's intervals, and only then waiting for the devices: fetch the
metrics and handle a non-finite loss, log the training metrics (to the log,
metrics.jsonl and TensorBoard), evaluate, checkpoint (after the evaluation,
so that a run stopped while evaluating evaluates again). How often metrics are
fetched from the devices, what a non-finite loss does and when checkpoints
are written are decided here (`run`), for pretraining and fine-tuning alike.
"""

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
from absl import logging

from albert_jax import sharding
from albert_jax.trainers import checkpointing, profiling
from albert_jax.trainers.core import Setup, TrainingError, TrainState
from albert_jax.trainers.metric_writer import MetricWriter


@dataclasses.dataclass
class Trainer:
  """What a trainer gives the loop: its steps, its data, what it checkpoints, and how it reports.

  Attributes:
    setup: the compiled steps (`core.build`).
    next_batch: step -> this process's rows of the global batch of that step.
    save_items: state -> the orbax args of one checkpoint (the state, and
      for pretraining the data iterator's position).
    summarize: summed step metrics -> per-example values ('loss' first).
    describe: those values -> the middle of the log line.
    evaluate: state -> {name: scores} for the log and metrics.jsonl, called at
      evaluation steps (fine-tuning also keeps its best checkpoint there).
    tokens_per_batch: tokens in one global batch (for tokens/s).
    flops_per_step: analytic FLOPs of one step (for MFU); None: not shown.
    workdir: where `config.profile_steps` traces go (WORKDIR/profile); None: no traces.
    A step whose metrics hold 'tokens', 'real_tokens' and 'flops' (fine-tuning's length-bucketed batches) is
    counted by those instead, and the log adds real tokens/s and the padding fraction; MFU counts real tokens.
  """

  setup: Setup
  next_batch: Callable[[int], dict[str, Any]]
  save_items: Callable[[TrainState], dict[str, Any]]
  summarize: Callable[[dict[str, float]], dict[str, float]]
  describe: Callable[[dict[str, float]], str]
  evaluate: Callable[[TrainState], dict[str, dict[str, float]]]
  tokens_per_batch: int
  flops_per_step: float | None = None
  workdir: Any = None


@dataclasses.dataclass
class Outcome:
  state: TrainState
  step: int
  preempted: bool
  last: dict[str, float]  # the last logged training values, and the last evaluation's ('eval_...' / '<split>_...')


def duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def run(
  config,
  trainer: Trainer,
  state: TrainState,
  mesh,
  manager: checkpointing.CheckpointManager,
  writer: MetricWriter,
  dropout_rng: jax.Array,
) -> Outcome:
  """Trains from `state` to `config.num_train_steps`, checkpointing, logging and evaluating on the way.

  The host never waits for the devices between the steps that log, checkpoint or evaluate: a step's metrics
  (its non-finite flag too) stay on the devices, and while one step runs the host reads the next batch and
  puts it on the devices, then queues the next step. At a step that logs, checkpoints or evaluates (and on
  preemption) the metrics of every step since the last such step are fetched and checked first: a non-finite
  loss stops the run (nan_policy 'stop') before anything is saved or evaluated.
  """
  with checkpointing.Preemption() as preemption:  # SIGTERM saves and stops the loop, and only while it runs
    return _run(config, trainer, state, mesh, manager, writer, dropout_rng, preemption)


def _run(config, trainer, state, mesh, manager, writer, dropout_rng, preemption) -> Outcome:
  step = int(jax.device_get(state.step))
  peak = _peak_flops()
  unfetched, fetched, last = [], [], {}  # (step, metrics) on the devices; host metrics since the last log line
  start_step, timer, run_start = step, time.perf_counter(), time.perf_counter()
  profiler = profiling.StepProfiler(config.get("profile_steps"), trainer.workdir, step)

  def save():  # asynchronous; the loop decides when (orbax's own policy would also save the first step)
    manager.save(step, args=checkpointing.composite(trainer.save_items(state)), force=True)

  def fetch():  # the one place the loop waits for the devices
    fetched.extend(_check_finite(config.nan_policy, manager, trainer.summarize, jax.device_get(unfetched)))
    unfetched.clear()

  while step < config.num_train_steps:
    if preemption.stop_now(manager, step):
      fetch()
      preemption.save_before_exit(manager, step, save)
      break
    # The previous step is still running on the devices: reading and placing this batch overlaps it.
    profiler.before(step)
    batch = sharding.global_batch(trainer.next_batch(step), mesh)
    state, metrics = trainer.setup.train_step(state, batch, dropout_rng)
    step += 1
    profiler.after(step, state)
    unfetched.append((step, metrics))
    checkpoint_now = step % config.checkpoint_every_steps == 0
    log_now = step % config.log_every_steps == 0 or step == config.num_train_steps
    evaluate_now = config.eval_every_steps and (step % config.eval_every_steps == 0 or step == config.num_train_steps)
    if not (checkpoint_now or log_now or evaluate_now):
      continue
    fetch()
    if log_now:
      last = _log_training(config, trainer, step, fetched, time.perf_counter() - timer, peak, writer)
      fetched, timer = [], time.perf_counter()
    if evaluate_now:  # before the step's save: a run stopped while evaluating resumes before this step
      for name, scores in trainer.evaluate(state).items():
        logging.info("%s at step %d: %s", name, step, " ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        writer.write(step, name, scores)
        last.update({f"{name}_{k}": v for k, v in scores.items()})
    if checkpoint_now:
      save()
  profiler.close(state)  # a run that ended inside the profiled steps
  preempted = preemption.requested
  if not preempted and manager.latest_step() != step:
    save()  # the final state, whatever the checkpoint interval
  manager.wait_until_finished()
  logging.info(
    "Finished at step %d (%d steps in %s).", step, step - start_step, duration(time.perf_counter() - run_start)
  )
  return Outcome(state, step, preempted, last)


def _check_finite(
  nan_policy: str, manager: checkpointing.CheckpointManager, summarize: Callable, host: list[tuple[int, dict]]
) -> list[dict[str, Any]]:
  """The fetched metrics of some steps, in order, after `_nonfinite` has handled each step that was skipped."""
  for step, metrics in host:
    if int(metrics["nonfinite"]):
      _nonfinite(step, nan_policy, manager, summarize(metrics)["loss"], float(metrics["grad_norm"]))
  return [metrics for _, metrics in host]


def _log_training(
  config,
  trainer: Trainer,
  step: int,
  host: list[dict[str, Any]],
  elapsed: float,
  peak: float | None,
  writer: MetricWriter,
) -> dict[str, float]:
  """Sums the metrics of the steps since the last log line, logs them and writes them out.

  Skipped steps (nan_policy 'skip') are counted, not summed: their non-finite values would make every value
  of the line NaN.
  """
  applied = [m for m in host if not int(m["nonfinite"])]
  skipped = len(host) - len(applied)
  values = trainer.summarize({k: sum(float(m[k]) for m in applied) for k in host[0]}) if applied else {}
  # Throughput counts every step, skipped or not: each was computed.
  computed = {k: sum(float(m[k]) for m in host) for k in ("tokens", "real_tokens", "flops") if k in host[0]}
  values.update(
    grad_norm=float(applied[-1]["grad_norm"]) if applied else float("nan"),
    learning_rate=float(host[-1]["learning_rate"]),
    skipped_steps=skipped,
    steps_per_second=len(host) / elapsed,
    tokens_per_second=computed.get("tokens", len(host) * trainer.tokens_per_batch) / elapsed,
  )
  if "real_tokens" in computed:  # a trainer whose batches vary in length counts its tokens and FLOPs in the step
    values.update(
      real_tokens_per_second=computed["real_tokens"] / elapsed,
      padding_fraction=1 - computed["real_tokens"] / computed["tokens"],
    )
  step_flops = computed.get("flops", len(host) * (trainer.flops_per_step or 0))
  if peak and step_flops:
    values["mfu"] = step_flops / elapsed / peak
  eta = (config.num_train_steps - step) / values["steps_per_second"]
  logging.info(
    "step %d/%d  %s  lr %.3g  |g| %.3g  %.0f tokens/s%s  MFU %s  ETA %s",
    step,
    config.num_train_steps,
    "  ".join([trainer.describe(values)] * bool(applied) + [f"skipped {skipped}"] * bool(skipped)),
    values["learning_rate"],
    values["grad_norm"],
    values["tokens_per_second"],
    (
      f" ({values['real_tokens_per_second']:.0f} real, {100 * values['padding_fraction']:.0f}% padding)"
      if "real_tokens_per_second" in values
      else ""
    ),
    f"{100 * values['mfu']:.1f}%" if "mfu" in values else "n/a",
    duration(eta),
  )
  writer.write(step, "train", values)
  return values


def _nonfinite(step: int, nan_policy: str, manager: checkpointing.CheckpointManager, loss: float, grad_norm: float):
  """After a skipped update: stop with the last good checkpoint (nan_policy 'stop') or warn ('skip')."""
  if nan_policy == "stop":
    manager.wait_until_finished()
    raise TrainingError(
      f"Non-finite loss or gradient at step {step} (loss={loss}, grad_norm={grad_norm}). The update was not "
      f"applied and training stopped; the last good checkpoint is step {manager.latest_step()}. Lower the "
      "learning rate or inspect the data, or set --config.nan_policy=skip to skip such steps."
    )
  logging.warning("Non-finite loss at step %d: update skipped (nan_policy=skip).", step)


def _peak_flops() -> float | None:
  """The peak FLOP/s of all devices together (MFU's denominator); on CPU, the host's measured matmul peak."""
  from albert_jax.tools import flops as flops_lib  # pylint: disable=g-import-not-at-top

  peak = flops_lib.device_peak_flops()
  return peak if jax.devices()[0].platform == "cpu" else (peak and peak * jax.device_count())


def batches(iterator: Iterator[dict[str, Any]]) -> Callable[[int], dict[str, Any]]:
  """`next_batch` for a stream: the step is implied by the iterator's position (which is checkpointed)."""
  return lambda step: next(iterator)

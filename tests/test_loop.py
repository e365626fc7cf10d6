"""The loop never waits for the devices between steps that log or checkpoint, and still stops on a bad loss.

Must-show: a test fails if the training loop waits for the device at a step that neither logs nor
checkpoints. Each step below is half a second of matrix products; when the loop asks for the batch of step
n + 1, step n must still be running (its outputs not ready), unless the loop logged or checkpointed at n.
A loop that waits for every step (as `int(metrics["nonfinite"])` after each step did) finds them all ready.
"""

import json
import logging
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from albert_jax import optim, sharding
from albert_jax.trainers import checkpointing, core, loop
from albert_jax.trainers.metric_writer import MetricWriter

STEPS, LOG_EVERY, CHECKPOINT_EVERY = 8, 4, 8


def _busy(x, products: int):
  """Work for the device: `products` 768x768 matrix products in sequence (about half a second on 2 cores)."""
  return jax.lax.fori_loop(0, products, lambda _, y: jnp.tanh(y @ y) * 0.5, x)


class SlowSteps:
  """A jitted train step that keeps the device busy; `next_batch` notes the steps the host had waited for."""

  def __init__(self, synchronised_steps, nonfinite_at=None, products=40):
    self.outputs = []  # each dispatched step's metrics, in order
    self.waited = []  # steps n whose predecessor had finished when the batch of n was asked for
    self.synchronised = set(synchronised_steps)  # steps after which the loop may wait

    def step_fn(state, batch, rng):
      del rng
      work = jnp.sum(_busy(jnp.full((768, 768), 1e-3, jnp.float32), products))
      loss = jnp.sum(batch["x"]) * 0 + 1.0 + work * 0
      if nonfinite_at is not None:
        loss = jnp.where(state.step == nonfinite_at, jnp.nan, loss)
      bad = ~jnp.isfinite(loss)
      params = jax.tree.map(lambda p: jnp.where(bad, p, p + 1), state.params)
      new_state = core.TrainState(step=state.step + 1, params=params, opt_state=state.opt_state)
      return new_state, {"loss_sum": loss, "count": 1.0, "grad_norm": loss, "learning_rate": 0.1, "nonfinite": bad}

    self.jitted = jax.jit(step_fn)

  def train_step(self, state, batch, rng):
    state, metrics = self.jitted(state, batch, rng)
    self.outputs.append(metrics["loss_sum"])
    return state, metrics

  def next_batch(self, step):
    if step and step not in self.synchronised and self.outputs[step - 1].is_ready():
      self.waited.append(step)
    return {"x": np.full((8, 2), step, np.float32)}


def _config(**overrides):
  defaults = dict(
    num_train_steps=STEPS,
    log_every_steps=LOG_EVERY,
    checkpoint_every_steps=CHECKPOINT_EVERY,
    eval_every_steps=0,
    nan_policy="stop",
  )
  return ml_collections.ConfigDict({**defaults, **overrides})


def _run(tmp_path, steps: SlowSteps, config):
  state = core.TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.zeros(3)}, opt_state=())
  setup = core.Setup(optax.constant_schedule(0.1), None, None, None, steps.train_step, None)
  trainer = loop.Trainer(
    setup=setup,
    next_batch=steps.next_batch,
    save_items=lambda s: dict(state=ocp.args.StandardSave(s)),
    summarize=lambda sums: {"loss": sums["loss_sum"] / sums["count"]},
    describe=lambda values: f"loss {values['loss']:.3f}",
    evaluate=lambda s: {},
    tokens_per_batch=8,
  )
  manager = checkpointing.checkpoint_manager(tmp_path / "checkpoints", ("state",), 3)
  writer = MetricWriter(tmp_path)
  mesh = sharding.create_mesh(ml_collections.ConfigDict(dict(data=1)), jax.devices()[:1])
  try:
    return loop.run(config, trainer, state, mesh, manager, writer, jax.random.PRNGKey(0)), manager
  finally:
    writer.close()


def test_the_loop_waits_for_the_devices_only_where_it_logs_or_checkpoints(tmp_path):
  steps = SlowSteps({LOG_EVERY, CHECKPOINT_EVERY})
  outcome, manager = _run(tmp_path, steps, _config())
  assert steps.waited == []  # the host asked for every next batch while the step before still ran
  assert outcome.step == STEPS and manager.all_steps() == [CHECKPOINT_EVERY]
  np.testing.assert_array_equal(outcome.state.params["w"], np.full(3, STEPS))
  assert outcome.last["loss"] == 1.0


def test_the_check_catches_a_loop_that_waits_every_step(tmp_path):
  # The loop as it was: every step waited for (`int(metrics["nonfinite"])`); the check sees each wait.
  steps = SlowSteps({3})
  running = steps.train_step
  steps.train_step = lambda *args: jax.block_until_ready(running(*args))
  _run(tmp_path, steps, _config(num_train_steps=3, log_every_steps=3))
  assert steps.waited == [1, 2]


def test_a_nonfinite_loss_between_log_steps_stops_the_run_before_anything_is_saved(tmp_path):
  # Step 6 (state.step 5) is bad; the loop learns it at step 8, where it would log and checkpoint: it stops
  # with the step's number and saves nothing after the last good checkpoint (step 4).
  steps = SlowSteps({LOG_EVERY, CHECKPOINT_EVERY}, nonfinite_at=5)
  with pytest.raises(core.TrainingError, match="Non-finite loss or gradient at step 6.*last good checkpoint is step 4"):
    _run(tmp_path, steps, _config(checkpoint_every_steps=4))
  assert steps.waited == []
  assert checkpointing.checkpoint_manager(tmp_path / "checkpoints", ("state",), 3).all_steps() == [4]


def test_with_nan_policy_skip_every_skipped_step_is_reported(tmp_path, caplog):
  steps = SlowSteps({LOG_EVERY, CHECKPOINT_EVERY}, nonfinite_at=5)
  outcome, _ = _run(tmp_path, steps, _config(nan_policy="skip"))
  assert "Non-finite loss at step 6: update skipped" in caplog.text
  np.testing.assert_array_equal(outcome.state.params["w"], np.full(3, STEPS - 1))  # one update skipped


# ---------------------------------------------------------------------------
# A batch that really makes the loss non-finite, through the production step (`core.make_train_step`).


def _regression_steps(config):
  """The production step of a linear regression trained with the configured optimizer and schedule."""
  tx, schedule = optim.make_optimizer(config)
  metric_sums = lambda params, batch, rng: {
    "loss_sum": jnp.sum(jnp.square(batch["x"] @ params["w"] - batch["y"])),
    "count": jnp.asarray(batch["y"].shape[0], jnp.float32),
  }
  step = core.make_train_step(
    metric_sums, lambda sums: sums["loss_sum"] / sums["count"], lambda batch: {"count": 8.0}, tx, schedule
  )
  params = {"w": jnp.linspace(-1.0, 1.0, 3)}
  return jax.jit(step), core.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def _batch(step: int, bad_step: int, value: float) -> dict[str, np.ndarray]:
  """The batch of `step` (0-based); at `bad_step` one label is `value` (inf or nan), as a bad data row brings."""
  rng = np.random.default_rng(step)
  x = rng.normal(size=(8, 2)).astype(np.float32)
  y = (x @ np.array([0.5, -2.0, 1.0], np.float32)[:2]).astype(np.float32)
  x = np.concatenate([x, np.ones((8, 1), np.float32)], 1)
  if step == bad_step:
    y[3] = value
  return {"x": x, "y": y}


def _run_regression(tmp_path, bad_value, **overrides):
  config = _config(
    num_train_steps=6,
    log_every_steps=3,
    checkpoint_every_steps=1,
    optimizer="lamb",
    learning_rate=0.1,
    warmup_steps=2,
    lr_schedule="albert",
    weight_decay=0.01,
    grad_clip_norm=1.0,
    bias_correction=False,
  )
  config.update(overrides)
  train_step, state = _regression_steps(config)
  trainer = loop.Trainer(
    setup=core.Setup(None, None, None, None, train_step, None),
    next_batch=lambda step: _batch(step, bad_step=3, value=bad_value),
    save_items=lambda s: dict(state=ocp.args.StandardSave(s)),
    summarize=lambda sums: {"loss": sums["loss_sum"] / sums["count"]},
    describe=lambda values: f"loss {values['loss']:.3f}",
    evaluate=lambda s: {},
    tokens_per_batch=8,
  )
  manager = checkpointing.checkpoint_manager(tmp_path / "checkpoints", ("state",), 10)
  writer = MetricWriter(tmp_path)
  mesh = sharding.create_mesh(ml_collections.ConfigDict(dict(data=1)), jax.devices()[:1])
  try:
    return loop.run(config, trainer, state, mesh, manager, writer, jax.random.PRNGKey(0)), manager
  finally:
    writer.close()


def _saved_w(manager, step):
  return manager.restore(step, args=checkpointing.composite(dict(state=ocp.args.StandardRestore())))["state"]["params"][
    "w"
  ]


def _refuse(constant):
  raise ValueError(f"metrics.jsonl holds {constant}, which strict JSON parsers refuse")


def test_a_batch_with_a_non_finite_label_is_skipped_and_counted_with_nan_policy_skip(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  outcome, manager = _run_regression(tmp_path, np.inf, nan_policy="skip")
  assert "Non-finite loss at step 4: update skipped" in caplog.text
  # That update only was skipped: step 4 kept step 3's parameters, the others moved them.
  w = {step: _saved_w(manager, step) for step in manager.all_steps()}
  np.testing.assert_array_equal(w[4], w[3])
  assert all(np.isfinite(w[s]).all() and not np.array_equal(w[s], w[s - 1]) for s in (2, 3, 5, 6))
  # The optimizer's step counters (the schedule's among them) kept pace with the train state's step.
  counts = [c for path, c in jax.tree_util.tree_leaves_with_path(outcome.state.opt_state) if "count" in str(path)]
  assert counts and all(int(c) == int(outcome.state.step) == 6 for c in counts)
  # The skipped step is counted, not summed: finite values, strict JSON, and the log line says so.
  rows = [json.loads(line, parse_constant=_refuse) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["train/skipped_steps"]) for r in rows] == [(3, 0), (6, 1)]
  assert all(np.isfinite(r["train/loss"]) and np.isfinite(r["train/grad_norm"]) for r in rows)
  assert re.search(r"step 6/6  loss [0-9.]+  skipped 1  lr", caplog.text), caplog.text


def test_a_batch_with_a_non_finite_label_stops_the_run_with_the_last_good_checkpoint(tmp_path):
  with pytest.raises(core.TrainingError, match="Non-finite loss or gradient at step 4.*last good checkpoint is step 3"):
    _run_regression(tmp_path, np.nan, nan_policy="stop")
  manager = checkpointing.checkpoint_manager(tmp_path / "checkpoints", ("state",), 10)
  assert manager.all_steps() == [1, 2, 3] and np.isfinite(_saved_w(manager, 3)).all()

"""Profiler traces from the config: `profile_steps` writes a trace of those steps under the workdir."""

import gzip

import pytest

from albert_jax import config_lib
from albert_jax.trainers import finetuning, profiling


def test_finetune_with_profile_steps_writes_a_trace_of_the_train_step(generated_vocab, generated_glue, tmp_path):
  config = config_lib.tiny_finetuning(config_lib.finetuning("sst2", str(generated_glue)), str(generated_vocab))
  config.task.update(max_examples=16, length_buckets=())  # one shape: one compile of each step
  config.update(num_train_steps=3, eval_every_steps=0, checkpoint_every_steps=3, profile_steps=(0, 2))
  finetuning.finetune(config, str(tmp_path))
  traces = list((tmp_path / "profile").rglob("*.trace.json.gz"))
  assert len(traces) == 1 and list((tmp_path / "profile").rglob("*.xplane.pb")), traces
  trace = gzip.decompress(traces[0].read_bytes()).decode()
  assert "train_step" in trace
  # Steps 2 and 3 only: the first step's compile is skipped, so no compile events are in the trace.
  assert trace.count("PjitFunction(train_step)") == 2, trace.count("PjitFunction(train_step)")


@pytest.mark.parametrize("value", [(3,), (1, 0), (-1, 2)])
def test_bad_profile_steps_name_the_field(value):
  with pytest.raises(ValueError, match="config.profile_steps"):
    profiling.check_profile_steps(value)

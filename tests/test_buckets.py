"""Length buckets: batches cut to their rows' length give the padded results, in a plan every process shares."""

import importlib.util

import jax
import numpy as np
import pytest
from flax.linen import partitioning as nn_partitioning

from albert_jax import config_lib, tasks
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.tasks import buckets, race
from albert_jax.trainers import core, finetuning
from tests.conftest import REPO

MAX_SEQ_LENGTH = 512  # the GLUE recipes' length: the padding that buckets skip


def _config(experiment, arg, vocab, data_dir):
  spec = importlib.util.spec_from_file_location(experiment, REPO / "experiments" / experiment)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"{arg},tiny")
  config.task.update(vocab=str(vocab), data_dir=str(data_dir), max_seq_length=MAX_SEQ_LENGTH, max_examples=40)
  config.task.length_buckets = (8, 16, 32, 64, 128, 256, 512)  # the generated GLUE rows are short
  config.model.max_position_embeddings = MAX_SEQ_LENGTH
  return config


def _race_dev(tokenizer, config):
  """RACE dev rows whose articles run from a few words to past max_seq_length (their choices differ in length)."""
  words = "the old town kept a small library by the river where children read after school".split()
  examples = [
    race.Example(
      f"dev{i}.txt-0",
      "high",
      " ".join(words[j % len(words)] for j in range(3 + 31 * i)),
      "where did the children read?",
      ("at the library", "by the river after a long day at school", "in town", "nowhere " * (i % 5)),
      i % 4,
    )
    for i in range(20)
  ]
  features = race.to_features(examples, tokenizer, MAX_SEQ_LENGTH, int(config.task.max_qa_length))
  return tasks.TaskData(features, "dev", examples)


@pytest.mark.parametrize("experiment, arg", [("glue.py", "sst2"), ("glue.py", "mrpc"), ("race.py", "race")])
def test_bucketed_logits_equal_padded_logits_for_every_dev_example(
  experiment, arg, generated_vocab, generated_glue, tmp_path
):
  config = _config(experiment, arg, generated_vocab, generated_glue)
  tokenizer = tokenizer_lib.Tokenizer(generated_vocab)
  model_config = config_lib.model_config(config).replace(vocab_size=tokenizer.vocab_size)
  spec = tasks.get_spec(config.task)
  dev = _race_dev(tokenizer, config) if arg == "race" else tasks.load_task(config.task, tokenizer, "dev")
  lengths = buckets.row_lengths(dev.features)
  used = {buckets.bucket_length(lengths[i : i + 1], buckets.resolve(config.task), MAX_SEQ_LENGTH) for i in range(40)}
  assert len(used) > 1 and min(used) < MAX_SEQ_LENGTH, used  # the rows fall in more than one bucket
  mesh, rules = core.setup_mesh(config)
  setup = finetuning.build(config, model_config, spec, dev.features["input_ids"].shape[1:], mesh, rules)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    params = setup.init(jax.random.PRNGKey(3)).params
    padded = finetuning.predict(setup, params, dev, config.eval_batch_size, mesh, buckets=())
    bucketed = finetuning.predict(
      setup, params, dev, config.eval_batch_size, mesh, buckets=buckets.resolve(config.task)
    )
  assert padded.shape == bucketed.shape == (len(dev), spec.num_labels)
  np.testing.assert_allclose(bucketed, padded, atol=1e-5, rtol=0)


def test_a_bucketed_epoch_is_the_seeded_epoch_regrouped_by_length():
  rng = np.random.default_rng(0)
  lengths = rng.integers(3, 500, size=1000)
  mask = (np.arange(512)[None, :] < lengths[:, None]).astype(np.int32)
  data = tasks.TaskData({"input_ids": mask * 7, "attention_mask": mask, "label": np.arange(1000)}, "train", [])
  config = config_lib.finetuning("sst2", "")
  config.update(batch_size=8, seed=5)
  plan = finetuning.TrainBatches(data, config)
  steps = range(2 * plan.per_epoch)
  batches = [plan(step) for step in steps]
  # The same rows as the padded run's epoch (the last partial batch dropped), each once.
  epoch = np.concatenate([b["label"] for b in batches[: plan.per_epoch]])
  padded_epoch = np.concatenate([finetuning.batch_rows(1000, 8, 5, s) for s in range(plan.per_epoch)])
  np.testing.assert_array_equal(np.sort(epoch), np.sort(padded_epoch))
  # Every batch at its bucket, and far less padding than at 512.
  for b in batches:
    assert b["input_ids"].shape[1] == buckets.bucket_length(lengths[b["label"]], plan.buckets, 512)
    np.testing.assert_array_equal(b["attention_mask"].sum(1), lengths[b["label"]])
  computed = sum(b["input_ids"].size for b in batches[: plan.per_epoch])
  unsorted = sum(len(r) * buckets.bucket_length(lengths[r], plan.buckets, 512) for r in np.split(padded_epoch, 125))
  assert computed < 0.8 * unsorted
  # Random order: the next epoch differs, and a fresh plan (another process, a resume) gives the same batches.
  assert not np.array_equal(epoch, np.concatenate([b["label"] for b in batches[plan.per_epoch :]]))
  again = finetuning.TrainBatches(data, config)
  for step in (plan.per_epoch + 3, 7, 0):
    np.testing.assert_array_equal(again(step)["label"], batches[step]["label"])


@pytest.mark.parametrize("value", [(32, 64), (64, 32, 512), (0, 512)])
def test_length_buckets_must_end_at_max_seq_length(value):
  config = config_lib.finetuning("sst2", "")
  config.task.length_buckets = value
  with pytest.raises(ValueError, match="config.task.length_buckets"):
    buckets.resolve(config.task)

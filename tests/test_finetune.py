"""Fine-tuning: GLUE and SQuAD end to end on CPU, exact resume, pretrained backbones, Hugging Face parity, bad input.

The runs read generated GLUE TSVs and SQuAD files with a generated vocabulary (tests/conftest.py): their subject
is the fine-tuning machinery, so they run without the shared data.
"""

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import warnings

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax.linen import partitioning as nn_partitioning

from albert_jax import checkpoints, tasks
from albert_jax import model as model_lib
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.trainers import core, finetuning
from tests import cli_helpers as cli
from tests import hf_finetune
from tests.conftest import REPO


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """Runs with the same shapes and settings compile once: XLA compilation dominates these tiny runs."""
  options = {
    "jax_compilation_cache_dir": str(tmp_path_factory.mktemp("xla_cache")),
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": 0,
  }
  previous = {k: getattr(jax.config, k) for k in options}
  for k, v in options.items():
    jax.config.update(k, v)
  yield
  for k, v in previous.items():
    jax.config.update(k, v)


@pytest.fixture(scope="module")
def data(generated_vocab, generated_glue, generated_squad):
  """The generated vocabulary and the folders of its GLUE and SQuAD files."""
  return {"vocab": generated_vocab, "glue.py": generated_glue, "squad.py": generated_squad}


def _experiment(name, arg, data, **overrides):
  """experiments/<name>:<arg>,tiny with the generated data's absolute paths."""
  spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"{arg},tiny")
  config.task.vocab = str(data["vocab"])
  config.task.data_dir = str(data[name])
  config.update(num_train_steps=4, eval_every_steps=2, checkpoint_every_steps=2)
  config.task.max_examples = 32
  config.update(overrides)
  return config


def _metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _saved_params(directory):
  """The arrays of a checkpoint as saved (on one device: orbax warns that no sharding was asked for)."""
  with ocp.PyTreeCheckpointer() as checkpointer, warnings.catch_warnings(action="ignore", category=UserWarning):
    return checkpointer.restore(directory)


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory, generated_vocab):
  """An albert_jax checkpoint directory of a random tiny AlbertForPreTraining, with its vocabulary."""
  config = model_lib.AlbertConfig(
    vocab_size=tokenizer_lib.Tokenizer(generated_vocab).vocab_size,
    embedding_size=16,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=128,
  )
  params = jax.jit(model_lib.AlbertForPreTraining(config).init)(jax.random.PRNGKey(7), np.zeros((1, 8), np.int32))
  directory = tmp_path_factory.mktemp("pretrained")
  return checkpoints.save(directory, config, jax.tree.map(np.asarray, nn.unbox(params)), generated_vocab)


@pytest.mark.parametrize(
  "task, scores",
  [
    ("sst2", {"accuracy"}),
    ("cola", {"matthews_corr", "accuracy"}),
    ("mrpc", {"accuracy", "f1"}),
    ("stsb", {"pearson", "spearman"}),
  ],
)
def test_glue_task_trains_evaluates_keeps_the_best_and_writes_predictions(task, scores, data, tmp_path, pretrained_dir):
  config = _experiment("glue.py", task, data)
  if task == "sst2":  # from a pretrained checkpoint, its vocabulary found next to it
    config.update(init_checkpoint=str(pretrained_dir))
    config.task.vocab = ""
  results = finetuning.finetune(config, str(tmp_path))
  assert set(results["dev"]) == scores
  saved = json.loads((tmp_path / "eval_results.json").read_text())
  assert saved["best_step"] == results["best_step"]
  assert saved["dev"] == pytest.approx(results["dev"], nan_ok=True)
  rows = (tmp_path / f"{task}_dev.tsv").read_text().splitlines()
  assert rows[0] == "index\tprediction" and len(rows) == 1 + 32
  # Dev scores at every evaluation; the best one is the checkpoint kept in best/.
  main = {"sst2": "accuracy", "cola": "matthews_corr", "mrpc": "accuracy", "stsb": "pearson"}[task]
  evals = {r["step"]: r[f"dev/{main}"] for r in _metrics(tmp_path) if f"dev/{main}" in r}
  assert sorted(evals) == [2, 4]
  defined = {s: v for s, v in evals.items() if not np.isnan(v)}
  if defined:
    assert results["best_step"] == max(defined, key=lambda s: (defined[s], -s))
  assert [p.name for p in (tmp_path / "best").iterdir() if p.name.isdigit()] == [str(results["best_step"])]
  assert {r["step"] for r in _metrics(tmp_path) if "train/loss" in r} == {2, 4}


def test_squad_v1_on_a_dev_slice_writes_official_predictions(data, tmp_path):
  config = _experiment("squad.py", "v1", data, num_train_steps=2, eval_every_steps=0)
  config.task.max_examples = 16
  results = finetuning.finetune(config, str(tmp_path))
  assert {"exact_match", "f1"} <= set(results["dev"])
  predictions = json.loads((tmp_path / "predictions.json").read_text())
  assert len(predictions) == 16 and all(isinstance(a, str) for a in predictions.values())
  assert not (tmp_path / "null_odds.json").exists()


def test_squad_v2_chooses_the_null_threshold_on_dev(data, tmp_path):
  config = _experiment("squad.py", "v2", data, num_train_steps=2, eval_every_steps=0)
  config.task.max_examples = 0
  results = finetuning.finetune(config, str(tmp_path))
  dev = results["dev"]
  assert {"exact", "f1", "HasAns_f1", "NoAns_f1", "best_f1", "null_score_diff_threshold"} <= set(dev)
  assert dev["null_score_diff_threshold"] == dev["best_f1_thresh"]
  predictions = json.loads((tmp_path / "predictions.json").read_text())
  null_odds = json.loads((tmp_path / "null_odds.json").read_text())
  assert len(predictions) == len(null_odds) == 30  # every dev question
  # The threshold from dev decides which answers are empty.
  threshold = dev["null_score_diff_threshold"]
  assert all((predictions[q] == "") == (null_odds[q] > threshold) or predictions[q] == "" for q in predictions)


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(data, tmp_path):
  config = _experiment("glue.py", "sst2", data, eval_every_steps=0)
  finetuning.finetune(config, str(tmp_path))
  straight = _saved_params(tmp_path / "checkpoints" / "4" / "state")
  shutil.rmtree(tmp_path / "checkpoints" / "4")  # as if killed after the step-2 save
  finetuning.finetune(config, str(tmp_path))
  resumed = _saved_params(tmp_path / "checkpoints" / "4" / "state")
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  losses = {}
  for row in _metrics(tmp_path):
    if "train/loss" in row:
      assert losses.setdefault(row["step"], row["train/loss"]) == row["train/loss"]


def test_batches_are_seeded_permutations_of_each_epoch():
  epoch = np.concatenate([finetuning.batch_rows(10, 3, seed=0, step=s) for s in range(3)])
  assert len(set(epoch)) == 9  # three batches of three, the tenth row left for a later epoch
  assert not np.array_equal(finetuning.batch_rows(10, 3, 0, 0), finetuning.batch_rows(10, 3, 0, 3))
  np.testing.assert_array_equal(finetuning.batch_rows(10, 3, 0, 4), finetuning.batch_rows(10, 3, 0, 4))


@pytest.mark.parametrize(
  "experiment, task, head", [("glue.py", "sst2", "classifier_head"), ("squad.py", "v2", "qa_outputs")]
)
def test_backbone_comes_from_the_checkpoint_and_the_head_is_fresh(
  experiment, task, head, pretrained_dir, data, tmp_path
):
  config = _experiment(experiment, task, data, init_checkpoint=str(pretrained_dir))
  config.task.vocab = ""  # found next to the checkpoint
  config.model.hidden_size = 48  # shape fields yield to the checkpoint's
  config.model.hidden_dropout_prob = 0.1  # dropout follows the fine-tuning config
  tokenizer = finetuning.load_vocabulary(config, tmp_path)
  model_config, pretrained = finetuning.load_backbone(config, tokenizer)
  assert (model_config.hidden_size, model_config.hidden_dropout_prob) == (32, 0.1)
  mesh, rules = core.setup_mesh(config)
  spec = tasks.get_spec(config.task)
  setup = finetuning.build(config, model_config, spec, (config.task.max_seq_length,), mesh, rules)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    fresh = setup.init(jax.random.PRNGKey(0))
    state = finetuning.with_backbone(fresh, pretrained, setup.state_shardings)
  assert head in state.params
  expected = pretrained["params"]["albert"]
  if spec.head == "span":  # span heads have no pooler
    assert "pooler" not in state.params["albert"]
    expected = {k: v for k, v in expected.items() if k != "pooler"}
  for path, value in jax.tree_util.tree_leaves_with_path(expected):
    leaf = state.params["albert"]
    for key in path:
      leaf = leaf[key.key]
    np.testing.assert_array_equal(leaf, value, err_msg=jax.tree_util.keystr(path))
  placed = jax.tree.map(lambda x, s: x.sharding == s, state.params, setup.state_shardings.params)
  assert all(jax.tree.leaves(placed))


def test_first_steps_match_hugging_face_adamw(data):
  config = hf_finetune.sst2_config(data["glue.py"], data["vocab"], steps=20, seq=32)
  jax_run, torch_run = hf_finetune.both_runs(config, train_examples=64, with_dev=False)[:2]
  jax_losses = [jax_run.step(s) for s in range(5)]
  torch_losses = [torch_run.step(s) for s in range(5)]
  np.testing.assert_allclose(jax_losses, torch_losses, rtol=2e-6)
  assert jax_losses[-1] != jax_losses[0]


# ---------------------------------------------------------------------------
# Bad input through the command line: one clear line, no traceback.


def _cli(workdir, vocab, *flags):
  env = cli.env()
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "albert_jax.finetune",
      "--config=experiments/glue.py:sst2,tiny",
      f"--workdir={workdir}",
      f"--config.task.vocab={vocab}",
      *flags,
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def _bad_label_dir(tmp_path):
  folder = tmp_path / "SST-2"
  folder.mkdir()
  (folder / "train.tsv").write_text("sentence\tlabel\na fine film\t1\na dull film\t7\n")
  (folder / "dev.tsv").write_text("sentence\tlabel\nok\t1\n")
  return folder


@pytest.mark.parametrize(
  "case, flags, message",
  [
    ("label outside the label set", ["--config.task.data_dir={bad}"], r"train.tsv:3: label '7' is not one of"),
    ("no vocabulary", ["--config.task.vocab="], "No vocabulary: no init_checkpoint is set"),
    (
      "sequence too short for the text",
      ["--config.task.data_dir={glue}", "--config.task.max_seq_length=2"],
      "max_seq_length=2 leaves no room",
    ),
  ],
)
def test_bad_input_is_one_clear_error_line(case, flags, message, data, tmp_path):
  del case
  bad = _bad_label_dir(tmp_path)
  flags = [f.format(bad=bad, glue=data["glue.py"]) for f in flags]
  result = _cli(tmp_path / "work", data["vocab"], *flags)
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error:"), result.stderr[-3000:]
  assert re.search(message, last), last

"""Fine-tuning: GLUE and SQuAD end to end on CPU, exact resume, pretrained backbones, Hugging Face parity, bad input.

The runs read generated GLUE TSVs and SQuAD files with a generated vocabulary (tests/conftest.py): their subject
is the fine-tuning machinery, so they run without the shared data. The SQuAD 2.0 run with the original release's
head also runs on the shared v2.0 sample when it is present.
"""

import importlib.util
import json
import logging
import os
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
from albert_jax.checkpoints import export
from albert_jax.tasks import fill_mask, inference, metrics, squad
from albert_jax.trainers import core, finetuning
from tests import cli_helpers as cli
from tests import fixtures, hf_finetune
from tests.conftest import REPO, SPM_MODEL, needs_data


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  with fixtures.compilation_cache(tmp_path_factory.mktemp("xla_cache")):
    yield


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
  defined = {s: v for s, v in evals.items() if v is not None}  # null: undefined (NaN)
  if defined:
    assert results["best_step"] == max(defined, key=lambda s: (defined[s], -s))
  assert [p.name for p in (tmp_path / "best").iterdir() if p.name.isdigit()] == [str(results["best_step"])]
  assert {r["step"] for r in _metrics(tmp_path) if "train/loss" in r} == {2, 4}
  # The head and its label names, for predict and export.
  meta = json.loads((tmp_path / "config.json").read_text())
  head, id2label = ("regression", ["score"]) if task == "stsb" else ("classification", ["0", "1"])
  assert (meta["task"], meta["head"], meta["id2label"], meta["max_seq_length"]) == (task, head, id2label, 64)
  assert meta["num_labels"] == len(id2label)


# The 2-step `squad.py:v1,tiny` run on 16 dev questions, with dropout: in one process on 8 devices
# (`squad_v1_run`) and in two processes on an interleaved mesh.
SQUAD_V1_FLAGS = {
  "task.max_examples": 16,
  "model.hidden_dropout_prob": 0.1,
  "num_train_steps": 2,
  "eval_every_steps": 0,
  "checkpoint_every_steps": 2,
}


@pytest.fixture(scope="module")
def squad_v1_run(data, tmp_path_factory):
  """(workdir, results) of the SQuAD v1.1 run above, in this process."""
  config = _experiment("squad.py", "v1", data)
  for key, value in SQUAD_V1_FLAGS.items():
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
  workdir = tmp_path_factory.mktemp("squad_v1")
  return workdir, finetuning.finetune(config, str(workdir))


def test_squad_v1_on_a_dev_slice_writes_official_predictions(squad_v1_run):
  workdir, results = squad_v1_run
  assert {"exact_match", "f1"} <= set(results["dev"])
  predictions = json.loads((workdir / "predictions.json").read_text())
  assert len(predictions) == 16 and all(isinstance(a, str) for a in predictions.values())
  assert not (workdir / "null_odds.json").exists()


def test_two_processes_on_an_interleaved_mesh_predict_every_dev_row_as_one_process(squad_v1_run, data, tmp_path):
  """Issue 24: on a TPU pod the mesh interleaves the hosts along the batch (process 0 holds blocks 0, 2, 4, ...).

  The pair lays its 2 x 4 devices out so (p0d0, p1d0, p0d1, ...), trains with dropout (a row fed to another
  device would draw another row's mask) and predicts the SQuAD dev windows in padded batches of 16: every
  question's answer and the scores must be one process's on 8 devices.
  """
  single, results = squad_v1_run
  port = 20000 + (os.getpid() + 7) % 20000
  command = [
    sys.executable,
    "-m",
    "albert_jax.finetune",
    "--config=experiments/squad.py:v1,tiny",
    f"--workdir={tmp_path}",
    f"--config.task.vocab={data['vocab']}",
    f"--config.task.data_dir={data['squad.py']}",
    *(f"--config.{key}={value}" for key, value in SQUAD_V1_FLAGS.items()),
    "--config.debug.interleave_processes=true",
    f"--config.distributed.coordinator_address=127.0.0.1:{port}",
    "--config.distributed.num_processes=2",
  ]
  procs = [
    cli.spawn([*command, f"--config.distributed.process_id={i}"], tmp_path / f"stderr{i}.log", devices=4)
    for i in range(2)
  ]
  assert cli.finish(procs, timeout=300) == [0, 0], cli.tail(procs[0]) + cli.tail(procs[1])
  expected = json.loads((single / "predictions.json").read_text())
  assert len(set(expected.values())) > 8  # the answers differ from question to question
  assert json.loads((tmp_path / "predictions.json").read_text()) == expected
  assert json.loads((tmp_path / "eval_results.json").read_text())["dev"] == pytest.approx(results["dev"], rel=1e-5)


def test_squad_v2_bert_head_chooses_the_null_threshold_on_dev(data, tmp_path):
  config = _experiment("squad.py", "v2", data, num_train_steps=2, eval_every_steps=0)
  config.task.max_examples = 0
  config.task.head = "bert"
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


# ---------------------------------------------------------------------------
# SQuAD 2.0 with the original release's head: the run, its files, its best checkpoint read back and exported.

SHARED_V2 = pytest.param(
  "shared", marks=needs_data("the SQuAD v2.0 sample (14 questions) with the official vocabulary")
)


@pytest.fixture(scope="module", params=["generated", SHARED_V2])
def squad_v2_run(request, data, tmp_path_factory):
  """(config, workdir, results, dev JSON) of a 4-step `squad.py:v2,tiny` run with its default head (xlnet): on the
  generated v2.0 files, or on the shared 14-question sample (trained and evaluated on it) with the official
  vocabulary."""
  config = _experiment("squad.py", "v2", data, num_train_steps=4, eval_every_steps=2)
  config.task.max_examples = 0
  dev = data["squad.py"] / "dev-v2.0.json"
  if request.param == "shared":
    dev = request.getfixturevalue("shared_data") / "squad" / "hf_fixture_dev-v2.0_sample.json"
    config.task.vocab = str(SPM_MODEL)
    config.task.files.update(train=str(dev), dev=str(dev))
  workdir = tmp_path_factory.mktemp(f"squad_v2_{request.param}")
  results = finetuning.finetune(config, str(workdir))
  return config, workdir, results, squad.load_json(dev)


def test_squad_v2_writes_predictions_null_odds_and_the_official_scores(squad_v2_run):
  config, workdir, results, dataset = squad_v2_run
  assert config.task.head == "xlnet"
  read = lambda name: json.loads((workdir / name).read_text())
  predictions, null_odds, nbest = read("predictions.json"), read("null_odds.json"), read("nbest_predictions.json")
  questions = list(_qids(dataset))
  assert sorted(predictions) == sorted(null_odds) == sorted(nbest) == sorted(questions)
  official = read(squad.OFFICIAL_V2_FILE)
  assert list(official) == list(squad.OFFICIAL_V2_KEYS)
  assert official == {k: results["dev"][k] for k in squad.OFFICIAL_V2_KEYS}
  # The official script's numbers from the files: predictions.json as written, and the sweep over the best
  # non-null answers (nbest_predictions.json) with null_odds.json.
  as_written = metrics.squad_v2(dataset, predictions)
  sweep = metrics.squad_v2(dataset, {q: entries[0]["text"] for q, entries in nbest.items()}, na_probs=null_odds)
  for key in official:
    assert official[key] == pytest.approx((sweep if key.startswith("best") else as_written)[key]), key
  threshold = results["dev"]["null_score_diff_threshold"]
  assert threshold == official["best_f1_thresh"]
  for q, answer in predictions.items():
    assert answer == ("" if null_odds[q] > threshold else nbest[q][0]["text"])
  losses = [r["train/loss"] for r in _metrics(workdir) if "train/loss" in r]
  assert len(losses) == 2 and all(np.isfinite(losses))


def _qids(dataset):
  for article in dataset["data"]:
    for paragraph in article["paragraphs"]:
      for qa in paragraph["qas"]:
        yield qa["id"]


def test_squad_v2_best_checkpoint_reads_back_and_predicts_the_same(squad_v2_run, tmp_path):
  config, workdir, _, _ = squad_v2_run
  model_config, params = checkpoints.load(workdir)  # the best checkpoint of a fine-tuning workdir
  assert checkpoints.task_head(params) == ("answer_class", "end_logits", "start_logits")
  best_step = json.loads((workdir / "eval_results.json").read_text())["best_step"]
  stored = _saved_params(workdir / "best" / str(best_step) / "params")
  for a, b in zip(jax.tree.leaves(stored), jax.tree.leaves(params["params"]), strict=True):
    np.testing.assert_array_equal(a, b)
  spec = tasks.get_spec(config.task)
  tokenizer = tokenizer_lib.Tokenizer(workdir / "spiece.model")
  dev = tasks.load_task(config.task, tokenizer, "dev")
  mesh, rules = core.setup_mesh(config)
  setup = finetuning.build(config, model_config, spec, dev.features["input_ids"].shape[1:], mesh, rules)
  with jax.set_mesh(mesh), nn_partitioning.axis_rules(rules):
    inputs = finetuning.model_inputs(spec.head, training=False)
    outputs = finetuning.predict(setup, params["params"], dev, config.eval_batch_size, mesh, inputs)
  assert set(outputs) == set(squad.XLNET_OUTPUTS)
  tasks.write_predictions(config.task, outputs, dev, tmp_path)
  for name in ("predictions.json", "null_odds.json", "nbest_predictions.json", squad.OFFICIAL_V2_FILE):
    assert (tmp_path / name).read_text() == (workdir / name).read_text(), name
  with pytest.raises(fill_mask.InputError, match="no masked-LM head"):
    fill_mask.fill_mask(model_config, params, tokenizer, ["a [MASK] b"])


def test_squad_v2_export_says_the_head_has_no_hugging_face_equivalent_and_writes_the_backbone(
  squad_v2_run, tmp_path, caplog
):
  _, workdir, _, _ = squad_v2_run
  with caplog.at_level(logging.WARNING):
    out = export.export(workdir, tmp_path / "hf")
  lines = [r.getMessage() for r in caplog.records if "fine-tuned model" in r.getMessage()]
  assert len(lines) == 1 and "\n" not in lines[0], lines
  assert re.search(
    r"SQuAD 2.0 head .*has no Hugging Face equivalent.*writing its backbone only \(AlbertModel\)", lines[0]
  )
  assert json.loads((out / "config.json").read_text())["architectures"] == ["AlbertModel"]
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  hf_model, info = transformers.AlbertModel.from_pretrained(out, output_loading_info=True)
  assert not info["unexpected_keys"] and {k.split(".")[0] for k in info["missing_keys"]} <= {"pooler"}
  model_config, params = checkpoints.load(workdir)
  ids = np.random.default_rng(0).integers(5, model_config.vocab_size, (2, 16)).astype(np.int32)
  want, _ = model_lib.AlbertModel(model_config, add_pooling_layer=False).apply(
    {"params": params["params"]["albert"]}, ids
  )
  with torch.no_grad():
    got = hf_model.eval()(torch.from_numpy(ids.astype(np.int64))).last_hidden_state.numpy()
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_xlnet_span_loss_is_the_originals(tmp_path):
  """0.5 (start NLL + end NLL) + weight x sigmoid cross-entropy of the answerability logit, per example."""
  rng = np.random.default_rng(0)
  log_softmax = lambda x: (x - np.log(np.exp(x).sum(-1, keepdims=True))).astype(np.float32)
  outputs = {
    "start_log_probs": log_softmax(rng.normal(size=(4, 7))),
    "end_log_probs": log_softmax(rng.normal(size=(4, 7))),
    "cls_logits": rng.normal(0, 3, 4).astype(np.float32),
  }
  batch = {
    "start_positions": np.array([0, 2, 3, 0]),
    "end_positions": np.array([0, 4, 3, 0]),
    "is_impossible": np.array([1, 0, 0, 1]),
  }
  sums = finetuning.task_losses("span_xlnet", outputs, batch, answerability_loss_weight=0.5)
  rows = np.arange(4)
  span = -0.5 * (
    outputs["start_log_probs"][rows, batch["start_positions"]] + outputs["end_log_probs"][rows, batch["end_positions"]]
  )
  z, y = outputs["cls_logits"], batch["is_impossible"]
  bce = -(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z))))
  assert float(sums["count"]) == 4
  np.testing.assert_allclose(float(sums["loss_sum"]), np.sum(span + 0.5 * bce), rtol=1e-6)


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
  "experiment, task, head",
  [("glue.py", "sst2", "classifier_head"), ("squad.py", "v1", "qa_outputs"), ("squad.py", "v2", "answer_class")],
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
  if spec.head.startswith("span"):  # span heads have no pooler
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


def test_predict_answers_every_question_as_the_xlnet_heads_evaluation(squad_v2_run):
  """`predict` on a SQuAD 2.0 workdir windows and decodes as its evaluation did: the best non-null answers of
  nbest_predictions.json, and "" where the null odds exceed the threshold."""
  _, workdir, _, dataset = squad_v2_run
  examples = squad.read_examples(dataset)
  predictor = inference.Predictor(workdir, tokenizer_lib.Tokenizer(workdir / "spiece.model"), null_threshold=1e9)
  answers = predictor.predict([{"question": e.question, "context": e.context} for e in examples])
  nbest = json.loads((workdir / "nbest_predictions.json").read_text())
  null_odds = json.loads((workdir / "null_odds.json").read_text())
  assert [a["answer"] for a in answers] == [nbest[e.qid][0]["text"] for e in examples]
  np.testing.assert_allclose([a["null_odds"] for a in answers], [null_odds[e.qid] for e in examples], atol=1e-5)
  predictor.null_threshold = 0.0
  assert [
    a["answer"] for a in predictor.predict([{"question": e.question, "context": e.context} for e in examples])
  ] == ["" if null_odds[e.qid] > 0 else nbest[e.qid][0]["text"] for e in examples]

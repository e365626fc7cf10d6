"""Your own labelled files: CSV, TSV and JSON Lines in, classification or regression out, bad input as one line.

The end-to-end runs fine-tune a tiny random model for a few steps on files generated here (not in GLUE's
layout), then score the predictions file they wrote with scikit-learn and SciPy against the dev file as read
by Python's csv and json modules: the scores must be those the run reported.
"""

import csv
import importlib.util
import json
import logging
import sys

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from albert_jax import storage, tasks
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.tasks import classify, metrics
from albert_jax.trainers import finetuning
from tests import cli_helpers as cli
from tests import fixtures
from tests.conftest import REPO

VERDICTS = ("maybe", "no", "yes")


def _experiment(vocab, **task):
  spec = importlib.util.spec_from_file_location("classify", REPO / "experiments" / "classify.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  config.task.update(vocab=str(vocab), max_seq_length=32, **task)
  config.update(num_train_steps=2, eval_every_steps=2, checkpoint_every_steps=2)
  return config


def write_pairs_csv(path, count, seed):
  """id, premise, hypothesis, verdict: three string classes, commas and quotes inside quoted fields."""
  rng = np.random.default_rng(seed)
  texts = fixtures.sentences(2 * count, seed)
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["id", "premise", "hypothesis", "verdict"])
    for i in range(count):
      writer.writerow([f"r{i}", f'{texts[2 * i]}, "quoted"', texts[2 * i + 1], VERDICTS[rng.integers(3)]])
  return path


def write_scores_jsonl(path, count, seed):
  """{'sentence', 'rating'}: ratings with decimals (regression), one JSON object a line."""
  rng = np.random.default_rng(seed)
  lines = [
    json.dumps({"sentence": s, "rating": round(float(rng.uniform(0, 5)), 2)}) for s in fixtures.sentences(count, seed)
  ]
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("own_files")
  return {
    "train.csv": write_pairs_csv(root / "train.csv", 64, 0),
    "dev.csv": write_pairs_csv(root / "dev.csv", 24, 1),
    "train.jsonl": write_scores_jsonl(root / "train.jsonl", 64, 2),
    "dev.jsonl": write_scores_jsonl(root / "dev.jsonl", 24, 3),
    "root": root,
  }


def _predictions(workdir, split="dev"):
  return [json.loads(line) for line in (workdir / f"classify_{split}.jsonl").read_text().splitlines()]


def test_classification_of_a_csv_pair_file_scores_what_its_predictions_file_says(files, generated_vocab, tmp_path):
  config = _experiment(
    generated_vocab,
    files={"train": str(files["train.csv"]), "dev": str(files["dev.csv"]), "test": ""},
    text_fields="premise,hypothesis",
    label_field="verdict",
  )
  results = finetuning.finetune(config, str(tmp_path))
  meta = json.loads((tmp_path / "config.json").read_text())
  assert (meta["head"], meta["num_labels"], meta["id2label"]) == ("classification", 3, list(VERDICTS))
  assert meta["text_fields"] == ["premise", "hypothesis"]
  with open(files["dev.csv"], newline="", encoding="utf-8") as f:
    gold = [row["verdict"] for row in csv.DictReader(f)]
  predictions = _predictions(tmp_path)
  assert [p["line"] for p in predictions] == list(range(2, 2 + len(gold)))
  predicted = [p["label"] for p in predictions]
  assert set(predicted) <= set(VERDICTS) and all(1 / 3 <= p["score"] <= 1 for p in predictions)
  assert results["dev"] == pytest.approx(
    {
      "accuracy": sklearn.metrics.accuracy_score(gold, predicted),
      "macro_f1": sklearn.metrics.f1_score(gold, predicted, average="macro"),
    }
  )
  assert json.loads((tmp_path / "eval_results.json").read_text())["dev"] == results["dev"]


def test_regression_is_detected_from_decimal_labels_in_json_lines(files, generated_vocab, tmp_path, caplog):
  config = _experiment(
    generated_vocab,
    files={"train": str(files["train.jsonl"]), "dev": str(files["dev.jsonl"]), "test": str(files["dev.jsonl"])},
    text_fields="sentence",
    label_field="rating",
  )
  with caplog.at_level(logging.INFO):
    results = finetuning.finetune(config, str(tmp_path))
  assert any("config.task.problem: regression" in r.getMessage() for r in caplog.records)
  meta = json.loads((tmp_path / "config.json").read_text())
  assert (meta["head"], meta["num_labels"], meta["id2label"]) == ("regression", 1, ["rating"])
  gold = [json.loads(line)["rating"] for line in files["dev.jsonl"].read_text().splitlines()]
  scores = [p["score"] for p in _predictions(tmp_path)]
  assert results["dev"] == pytest.approx(
    {"pearson": scipy.stats.pearsonr(scores, gold)[0], "spearman": scipy.stats.spearmanr(scores, gold)[0]}
  )
  assert _predictions(tmp_path, "test") == _predictions(tmp_path, "dev")  # the test file: the same rows


def test_macro_f1_is_scikit_learns():
  rng = np.random.default_rng(0)
  for classes in (2, 3, 7):
    labels, predictions = rng.integers(classes, size=50), rng.integers(classes, size=50)
    predictions[:5] = classes  # a class only predicted
    expected = sklearn.metrics.f1_score(labels, predictions, average="macro")
    assert metrics.macro_f1(predictions, labels) == pytest.approx(expected)


def test_two_classes_add_matthews_correlation():
  labels, predictions = [0, 1, 1, 0, 1, 1], [0, 1, 0, 0, 1, 0]
  assert classify.scores("classification", 2, predictions, labels) == pytest.approx(
    {
      "accuracy": sklearn.metrics.accuracy_score(labels, predictions),
      "macro_f1": sklearn.metrics.f1_score(labels, predictions, average="macro"),
      "matthews_corr": sklearn.metrics.matthews_corrcoef(labels, predictions),
    }
  )


def test_labels_are_sorted_from_train_integers_by_value_and_tsv_is_split_on_tabs(tmp_path, generated_vocab):
  train = tmp_path / "train.tsv"
  train.write_text('text\tlabel\n"a quote\t10\nb\t9\nc\t10\nd\t-1\n', encoding="utf-8")
  config = _experiment(generated_vocab, files={"train": str(train), "dev": str(train), "test": ""})
  spec = tasks.get_spec(config.task)
  assert (spec.head, spec.label_names) == ("classification", ("-1", "9", "10"))
  data = tasks.load_task(config.task, tokenizer_lib.Tokenizer(generated_vocab), "train")
  assert [e.text_a for e in data.examples] == ['"a quote', "b", "c", "d"]
  assert data.features["label"].tolist() == [2, 1, 2, 0]


def _bad(root, name, text):
  path = root / name
  path.write_text(text, encoding="utf-8")
  return str(path)


BAD_INPUTS = {  # case -> (train, dev, the message after "error: ")
  "missing column": (
    "good.csv",
    ("dev.csv", "text,label\nfine,a\n"),
    "{root}/good.csv:1: no column 'sentence' (there are text, label); name the right one with "
    "--config.task.text_fields.",
  ),
  "dev label not in train": (
    "good_sentence.csv",
    ("dev.csv", "sentence,label\nfine,a\nodd,c\n"),
    "{root}/dev.csv:3: label 'c' is not one of the train file's labels ['a', 'b']; fix the line, or add examples of "
    "it to the train file.",
  ),
  "empty text": (
    "good_sentence.csv",
    ("dev.jsonl", '{"sentence": "fine", "label": "a"}\n\n{"sentence": " ", "label": "b"}\n'),
    "{root}/dev.jsonl:3: empty text in column 'sentence'; every row needs its text.",
  ),
  "not CSV, TSV or JSON Lines": (
    "good_sentence.csv",
    ("dev.txt", "sentence label\nfine a\n"),
    "{root}/dev.txt:1: not a CSV, TSV or JSON Lines file by its name; name it .csv, .tsv or .jsonl (with that "
    "content).",
  ),
  "regression label not a number": (
    ("scores.csv", "sentence,label\nfine,0.5\nok,1.25\ngood,high\n"),
    ("dev.csv", "sentence,label\nfine,0.5\n"),
    "{root}/scores.csv:4: regression label 'high' in column 'label' is not a number; fix the line, or set "
    "--config.task.problem=classification if the labels are classes.",
  ),
}


@pytest.fixture(scope="module")
def bad_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad_input")
  _bad(root, "good.csv", "text,label\nfine,a\nbad,b\n")
  _bad(root, "good_sentence.csv", "sentence,label\nfine,a\nbad,b\n")
  return root


def _bad_config(root, case, vocab):
  train, dev, message = BAD_INPUTS[case]
  train = _bad(root, *train) if isinstance(train, tuple) else str(root / train)
  problem = "regression" if case.startswith("regression") else ""
  config = _experiment(vocab, files={"train": train, "dev": _bad(root, *dev), "test": ""}, problem=problem)
  config.task.text_fields = "sentence"
  return config, message.format(root=root)


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_names_the_file_and_line(case, bad_root, generated_vocab):
  config, message = _bad_config(bad_root, case, generated_vocab)
  if case == "regression label not a number":
    config.task.problem = ""  # detected as classes: "high" is a class like 0.5; asked for regression, an error
    assert tasks.get_spec(config.task).head == "classification"
    config.task.problem = "regression"
  tokenizer = tokenizer_lib.Tokenizer(generated_vocab)
  with pytest.raises(ValueError) as error:
    for split in ("train", "dev"):
      tasks.load_task(config.task, tokenizer, split)
  assert str(error.value) == message


def test_bad_input_on_the_command_line_is_one_error_line(bad_root, generated_vocab, tmp_path):
  config, message = _bad_config(bad_root, "dev label not in train", generated_vocab)
  result = cli.run(
    [
      *(sys.executable, "-m", "albert_jax.finetune", "--config=experiments/classify.py:tiny", f"--workdir={tmp_path}"),
      f"--config.task.vocab={generated_vocab}",
      "--config.task.text_fields=sentence",
      *(f"--config.task.files.{split}={config.task.files[split]}" for split in ("train", "dev")),
    ]
  )
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == f"error: {message}", result.stderr[-3000:]
  assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1, result.stderr[-3000:]


def test_files_in_a_bucket_are_read_as_local_ones(files, gcs, generated_vocab):
  for name in ("train.csv", "dev.csv"):
    storage.copy(files[name], f"{gcs}/{name}")
  config = _experiment(
    generated_vocab,
    files={"train": f"{gcs}/train.csv", "dev": f"{gcs}/dev.csv", "test": ""},
    text_fields="premise,hypothesis",
    label_field="verdict",
  )
  assert tasks.get_spec(config.task).label_names == VERDICTS
  tokenizer = tokenizer_lib.Tokenizer(generated_vocab)
  remote = tasks.load_task(config.task, tokenizer, "dev")
  config.task.files.dev = str(files["dev.csv"])
  local = tasks.load_task(config.task, tokenizer, "dev")
  assert remote.examples == local.examples

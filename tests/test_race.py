"""RACE: original json folders and TFDS to [4, T] features as the original run_race."""

import collections
import json
import logging

import numpy as np
import pytest

from albert_jax import config_lib, tasks
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.tasks import race

ARTICLE = "Tom has a red bike. He rides it to school every day with his sister Ann."
FILES = {
  ("train", "high", "high1.txt"): {
    "article": ARTICLE,
    "questions": ["Tom rides his bike to _ .", "What colour is the bike?", "Who is Ann?"],
    "options": [
      ["school", "work", "the park", "town"],
      ["blue", "red", "green", "black"],
      ["his sister", "his mother"],
    ],  # Malformed: two options.
    "answers": ["A", "B", "A"],
    "id": "high1.txt",
  },
  ("train", "middle", "middle7.txt"): {
    "article": "Ann likes cats.",
    "questions": ["What does Ann like?"],
    "options": [["dogs", "cats", "birds", "fish"]],
    "answers": ["B"],
    "id": "middle7.txt",
  },
}


@pytest.fixture(scope="module")
def tok(generated_vocab):
  return tokenizer_lib.Tokenizer(generated_vocab)


@pytest.fixture
def race_dir(tmp_path):
  for (split, level, name), record in FILES.items():
    folder = tmp_path / "RACE" / split / level
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(record))
  return tmp_path / "RACE"


def test_reads_folders_and_skips_malformed_questions(race_dir, caplog):
  counts = collections.Counter()
  with caplog.at_level(logging.WARNING):
    examples = race.read_dir(race_dir, "train", counts=counts)
  assert [(e.example_id, e.level, e.label) for e in examples] == [
    ("high1.txt-0", "high", 0),
    ("high1.txt-1", "high", 1),
    ("middle7.txt-0", "middle", 1),
  ]
  assert counts == {"examples": 3, "malformed_questions": 1}
  assert "high1.txt question 2" in caplog.text
  assert len(race.read_dir(race_dir, "train", levels=("middle",))) == 1
  with pytest.raises(FileNotFoundError, match="RACE folder"):
    race.read_dir(race_dir, "dev")


def test_features_as_original_run_race(race_dir, tok):
  examples = race.read_dir(race_dir, "train")
  features = race.to_features(examples, tok, max_seq_length=96)
  assert features["input_ids"].shape == (3, 4, 96)
  np.testing.assert_array_equal(features["label"], [0, 1, 1])
  article = tok.encode(ARTICLE)
  # A blank is filled with the option; otherwise "question option".
  for c, qa in enumerate(["Tom rides his bike to school .", "Tom rides his bike to work ."]):
    ids, types = tok.encode_pair(article, tok.encode(qa))
    assert len(ids) < 96  # Not truncated.
    assert features["input_ids"][0, c, : len(ids)].tolist() == ids
    assert features["token_type_ids"][0, c, : len(ids)].tolist() == types
    assert features["attention_mask"][0, c].sum() == len(ids)
  ids, _ = tok.encode_pair(article, tok.encode("What colour is the bike? green"))
  assert features["input_ids"][1, 2, : len(ids)].tolist() == ids


def test_long_article_is_truncated_and_long_question_keeps_its_end(tok):
  example = race.Example("x-0", "high", "long article " * 100, "why " * 50 + "_ ?", ("a", "b", "c", "d"), 2)
  counts = collections.Counter()
  features = race.to_features([example], tok, max_seq_length=64, max_qa_length=10, counts=counts)
  assert counts["truncated"] == 4
  assert (features["attention_mask"][0].sum(-1) == 64).all()
  qa = tok.encode("why " * 50 + "a ?")[-10:]
  # B: the last 10 tokens of question + option, then [SEP].
  assert features["input_ids"][0, 0, 64 - 11 : 64 - 1].tolist() == qa


def test_load_task_and_evaluate(race_dir, tok, tmp_path):
  config = config_lib.finetuning("race", str(race_dir)).task
  config.max_seq_length = 32
  spec = tasks.get_spec(config)
  assert (spec.head, spec.num_labels, spec.main_metric) == ("multiple_choice", 4, "accuracy")
  data = tasks.load_task(config, tok, "train")
  assert data.features["input_ids"].shape == (3, 4, 32)
  logits = np.eye(4)[[0, 2, 1]]  # The second (high) question wrong.
  assert tasks.evaluate(config, logits, data) == {
    "accuracy": pytest.approx(2 / 3),
    "accuracy_high": 0.5,
    "accuracy_middle": 1.0,
  }
  (path,) = tasks.write_predictions(config, logits, data, tmp_path / "out")
  assert path.read_text().splitlines() == [
    "example_id\tprediction",
    "high1.txt-0\tA",
    "high1.txt-1\tC",
    "middle7.txt-0\tB",
  ]


def test_tfds_race_source(tok):
  tfds = pytest.importorskip("tensorflow_datasets")
  record = FILES[("train", "high", "high1.txt")]
  row = {
    "article": record["article"],
    "questions": np.array(record["questions"]),
    "options": [np.array(o) for o in record["options"]],
    "answers": np.array(record["answers"]),
    "example_id": record["id"],
  }
  with tfds.testing.mock_data(as_data_source_fn=lambda *args, **kwargs: [row]):
    counts = collections.Counter()
    examples = race.read_tfds("dev", levels=("high",), counts=counts)
  assert [(e.example_id, e.label) for e in examples] == [("high1.txt-0", 0), ("high1.txt-1", 1)]
  assert counts["malformed_questions"] == 1

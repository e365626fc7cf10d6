"""SQuAD: answer spans through tokenisation and back, oracle predictions, v2 threshold, bad input.

Each runs on generated SQuAD files with a generated vocabulary; the dev-set tests also run on the official v1.1 dev
set and v2.0 sample with the official vocabulary when the shared data is present.
"""

import collections
import dataclasses
import json
import logging
import zipfile

import numpy as np
import pytest

from albert_jax import config_lib, tasks
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.tasks import metrics, squad
from tests.conftest import SPM_MODEL, needs_data

SHARED_V1 = pytest.param("shared", marks=needs_data("the official SQuAD v1.1 dev set with the official vocabulary"))
SHARED_V2 = pytest.param(
  "shared", marks=needs_data("the SQuAD v2.0 sample (14 questions) with the official vocabulary")
)


@pytest.fixture(scope="module")
def tok(generated_vocab):
  return tokenizer_lib.Tokenizer(generated_vocab)


@pytest.fixture(scope="module")
def official_tok(shared_data):
  return tokenizer_lib.Tokenizer(SPM_MODEL)


@dataclasses.dataclass
class DevV1:
  features: dict
  index: squad.FeatureIndex
  counts: collections.Counter
  tok: tokenizer_lib.Tokenizer
  questions: int  # in the file
  max_seq_length: int


@pytest.fixture(scope="module", params=["generated", SHARED_V1])
def dev_v1(request, generated_squad, tok):
  """A v1.1 dev set as features: generated (short contexts, so windows of 64 tokens), or the full official one
  (about 10 s on one core)."""
  if request.param == "generated":
    path, questions, options = (
      generated_squad / "dev-v1.1.json",
      36,
      dict(max_seq_length=64, doc_stride=32, max_query_length=16),
    )
  else:
    path, questions, options = request.getfixturevalue("shared_data") / "squad" / "dev-v1.1.json.zip", 10570, {}
    tok = request.getfixturevalue("official_tok")
  dataset = squad.load_json(path)
  counts = collections.Counter()
  features, index = squad.make_features(squad.read_examples(dataset), tok, dataset=dataset, counts=counts, **options)
  return DevV1(features, index, counts, tok, questions, options.get("max_seq_length", 384))


@pytest.fixture(scope="module", params=["generated", SHARED_V2])
def v2_dev(request, generated_squad, tok):
  """(path, tokenizer, questions, unanswerable): a generated v2.0 dev file, or the official 14-question sample."""
  if request.param == "generated":
    return generated_squad / "dev-v2.0.json", tok, 30, 12
  path = request.getfixturevalue("shared_data") / "squad" / "hf_fixture_dev-v2.0_sample.json"
  return path, request.getfixturevalue("official_tok"), 14, 6


def _oracle_logits(features, index):
  """Logits peaked at the gold span of answers[0] ([CLS] for no answer)."""
  start = np.full(features["input_ids"].shape, -10.0, np.float32)
  end = start.copy()
  rows = np.arange(len(start))
  start[rows, features["start_positions"]] = 10.0
  end[rows, features["end_positions"]] = 10.0
  answerable = ~np.array([index.examples[e].is_impossible for e in index.example_index])
  start[answerable, 0] = end[answerable, 0] = 0.0  # Null below any gold span.
  return start, end


def test_every_surviving_gold_span_maps_back_to_its_answer(dev_v1):
  features, index, counts = dev_v1.features, dev_v1.index, dev_v1.counts
  assert counts["examples"] == dev_v1.questions and counts["answer_not_in_context"] == 0
  assert counts["features"] == len(features["input_ids"]) > dev_v1.questions
  found, matches = set(), 0
  for f in np.flatnonzero(features["start_positions"] > 0):
    e = index.example_index[f]
    if e in found:
      continue
    found.add(e)
    s, t = features["start_positions"][f], features["end_positions"][f]
    text = index.examples[e].context[index.char_start[f, s] : index.char_end[f, t]]
    matches += metrics.normalize_answer(text) == metrics.normalize_answer(index.examples[e].answers[0])
  share = matches / len(found)
  print(f"gold spans recovered: {matches}/{len(found)} = {share:.4f}")
  assert len(found) == dev_v1.questions  # Every answer lies inside some window.
  assert share > 0.995  # The rest start or end inside a piece ("1990s" for "1990").


def test_oracle_logits_score_about_100_on_the_whole_v1_dev_set(dev_v1):
  start, end = _oracle_logits(dev_v1.features, dev_v1.index)
  scores, predictions, null_odds = squad.evaluate(start, end, dev_v1.index, version_2=False)
  print(scores)
  assert scores["total"] == dev_v1.questions and scores["missing"] == 0 and not null_odds
  assert scores["exact_match"] > 99.5 and scores["f1"] > 99.5
  assert len(predictions) == dev_v1.questions


def test_features_layout(dev_v1):
  features, index, tok = dev_v1.features, dev_v1.index, dev_v1.tok
  ids, types, mask = (features[k] for k in ("input_ids", "token_type_ids", "attention_mask"))
  assert ids.shape[1] == dev_v1.max_seq_length and (ids[:, 0] == tok.cls_id).all()
  lengths = mask.sum(1)
  assert (ids[np.arange(len(ids)), lengths - 1] == tok.sep_id).all()
  first = index.examples[0]
  question = tok.encode(first.question)
  assert ids[0, 1 : len(question) + 1].tolist() == question
  assert (types[0, : len(question) + 2] == 0).all() and (types[0, len(question) + 2 : lengths[0]] == 1).all()
  # Context ids equal the whole context's ids: word-by-word tokenisation loses nothing.
  context = ids[0, len(question) + 2 : lengths[0] - 1].tolist()
  assert context == tok.encode(first.context)[: len(context)]
  assert (index.char_start[0, : len(question) + 2] == -1).all()


@pytest.mark.parametrize(
  "vocab",
  [
    "generated",
    pytest.param(
      "official",
      marks=needs_data("the official vocabulary, whose pieces hold the accented and other non-ASCII characters"),
    ),
  ],
)
def test_offsets_survive_normalisation(vocab, request):
  tok = request.getfixturevalue("tok" if vocab == "generated" else "official_tok")
  context = "Łazienki's ``Grand'' café measured 2½ metres; NAÏVE İstanbul visitors paid \u20ac5 (about 360—an odd sum)."
  answers = ["2½ metres", "café", "NAÏVE İstanbul", "``Grand''", "360—an odd sum", "Łazienki", "\u20ac5"]
  (tokenized,) = squad.tokenize_contexts([context], tok)
  assert tokenized.ids.tolist() == tok.encode(context)
  for answer in answers:
    example = squad.Example("q", "what?", context, (answer,), context.index(answer), False)
    features, index = squad.make_features([example], tok, max_seq_length=96)
    s, e = features["start_positions"][0], features["end_positions"][0]
    assert context[index.char_start[0, s] : index.char_end[0, e]] == answer


def test_doc_stride_windows_cover_the_context_and_max_context_is_unique(tok):
  context = " ".join(f"word{i} is here." for i in range(120))
  example = squad.Example("q", "where is word99?", context, ("word99",), context.index("word99 "), False)
  counts = collections.Counter()
  features, index = squad.make_features([example], tok, max_seq_length=64, doc_stride=16, training=True, counts=counts)
  n_context = len(tok.encode(context))
  covered = collections.Counter()
  for f in range(len(index.example_index)):
    inside = index.char_start[f] >= 0
    covered.update(index.char_start[f][inside & index.max_context[f]].tolist())
  assert len(features["input_ids"]) > 3
  # Every context token is the max-context token of exactly one window.
  assert sum(covered.values()) == n_context
  assert counts["answer_outside_window"] == len(features["input_ids"]) - np.sum(features["start_positions"] > 0)
  # Windows start doc_stride tokens apart.
  first_tokens = [index.char_start[f][index.char_start[f] >= 0][0] for f in range(2)]
  (tokenized,) = squad.tokenize_contexts([context], tok)
  assert first_tokens[1] == tokenized.starts[16]


def test_v2_oracle_and_null_answers(v2_dev, tmp_path):
  path, tok, questions, unanswerable = v2_dev
  dataset = squad.load_json(path)
  examples = squad.read_examples(dataset)
  assert len(examples) == questions and sum(e.is_impossible for e in examples) == unanswerable
  features, index = squad.make_features(examples, tok, max_seq_length=128, doc_stride=32, dataset=dataset)
  start, end = _oracle_logits(features, index)
  scores, predictions, null_odds = squad.evaluate(start, end, index, version_2=True)
  assert scores["exact"] == scores["f1"] == 100.0
  assert scores["NoAns_total"] == unanswerable and scores["HasAns_total"] == questions - unanswerable
  assert all((predictions[e.qid] == "") == e.is_impossible for e in examples)
  assert all((null_odds[e.qid] > 0) == e.is_impossible for e in examples)
  paths = squad.write_predictions(tmp_path, predictions, null_odds)
  assert [p.name for p in paths] == ["predictions.json", "null_odds.json"]
  assert json.loads(paths[0].read_text()) == predictions
  # The official script's input: the same scores from the files.
  assert metrics.squad_v2(dataset, json.loads(paths[0].read_text()))["exact"] == 100.0


def test_v2_threshold_is_chosen_on_dev(v2_dev):
  """Null scores raised for every question: threshold 0 fails, the sweep recovers."""
  path, tok, questions, unanswerable = v2_dev
  dataset = squad.load_json(path)
  features, index = squad.make_features(
    squad.read_examples(dataset), tok, max_seq_length=128, doc_stride=32, dataset=dataset
  )
  start, end = _oracle_logits(features, index)
  # Null odds: answerable 30 - 20 = +10, unanswerable 50 - (-20) = +70.
  start[:, 0] += 15.0
  end[:, 0] += 15.0
  fixed, _, _ = squad.evaluate(start, end, index, version_2=True, null_threshold=0.0)
  assert fixed["exact"] == pytest.approx(100 * unanswerable / questions)  # Everything "no answer".
  chosen, predictions, null_odds = squad.evaluate(start, end, index, version_2=True)
  assert chosen["exact"] == chosen["f1"] == chosen["best_f1"] == 100.0
  threshold = chosen["null_score_diff_threshold"]
  assert threshold == chosen["best_f1_thresh"]
  answerable = [q for q, p in predictions.items() if p]
  assert len(answerable) == questions - unanswerable and all(null_odds[q] <= threshold for q in answerable)
  assert squad.apply_null_threshold({"a": "x", "b": "y"}, {"a": 1.0, "b": -1.0}, 0.0) == {"a": "", "b": "y"}


def test_answer_not_in_context_is_skipped_for_training_and_kept_for_eval(tok, caplog):
  good = squad.Example("good", "who?", "Alice met Bob.", ("Bob",), 10, False)
  bad = squad.Example("bad", "who?", "Alice met Bob.", ("Carol",), 10, False)
  counts = collections.Counter()
  with caplog.at_level(logging.WARNING):
    features, index = squad.make_features([good, bad], tok, max_seq_length=32, training=True, counts=counts)
  assert counts["answer_not_in_context"] == 1 and [e.qid for e in index.examples] == ["good"]
  assert len(features["input_ids"]) == 1 and "question bad" in caplog.text
  features, index = squad.make_features([good, bad], tok, max_seq_length=32)
  assert [e.qid for e in index.examples] == ["good", "bad"]
  assert features["start_positions"][1] == 0


def test_long_question_is_truncated_and_counted(tok):
  example = squad.Example("q", "why " * 100, "Because it rained.", ("it rained",), 8, False)
  counts = collections.Counter()
  features, index = squad.make_features([example], tok, max_seq_length=96, max_query_length=64, counts=counts)
  assert counts["truncated_questions"] == 1
  assert (features["token_type_ids"][0, :66] == 0).all()  # [CLS] + 64 + [SEP].
  s, e = features["start_positions"][0], features["end_positions"][0]
  assert example.context[index.char_start[0, s] : index.char_end[0, e]] == "it rained"
  with pytest.raises(ValueError, match="leaves no room"):
    squad.make_features([example], tok, max_seq_length=64, max_query_length=64)


def test_json_and_zip_load_the_same(tmp_path, generated_squad):
  dataset = squad.load_json(generated_squad / "dev-v2.0.json")
  with zipfile.ZipFile(tmp_path / "dev-v2.0.json.zip", "w") as archive:
    archive.writestr("dev-v2.0.json", json.dumps(dataset))
  assert squad.load_json(tmp_path / "dev-v2.0.json.zip") == dataset
  with pytest.raises(FileNotFoundError):
    squad.load_json(tmp_path / "missing.json")


def test_tasks_interface_for_squad_v2(generated_squad, tok, tmp_path):
  config = config_lib.finetuning("squad_v2", str(tmp_path)).task
  config.update(
    dict(files={"train": "", "dev": str(generated_squad / "dev-v2.0.json")}, max_seq_length=128, doc_stride=32)
  )
  spec = tasks.get_spec(config)
  assert (spec.head, spec.main_metric) == ("span", "f1")
  data = tasks.load_task(config, tok, "dev")
  start, end = _oracle_logits(data.features, data.index)
  outputs = {"start_logits": start, "end_logits": end}
  assert tasks.evaluate(config, outputs, data)["f1"] == 100.0
  paths = tasks.write_predictions(config, outputs, data, tmp_path / "out")
  assert [p.name for p in paths] == ["predictions.json", "null_odds.json"]
  with pytest.raises(FileNotFoundError, match="config.task.files"):
    tasks.load_task(config, tok, "train")

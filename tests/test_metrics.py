"""GLUE metrics against scikit-learn / SciPy; SQuAD against the official logic, on generated questions and, when
the shared data is present, on the official dev sets."""

import collections
import json
import re
import string
import zipfile

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from albert_jax.tasks import metrics
from tests import fixtures
from tests.conftest import needs_data

# ---------------------------------------------------------------- GLUE


def random_cases(num_classes):
  rng = np.random.default_rng(num_classes)
  for size in (1, 2, 7, 100, 1000):
    labels = rng.integers(0, num_classes, size)
    yield rng.integers(0, num_classes, size), labels
    yield labels.copy(), labels  # perfect
    yield np.zeros(size, int), labels  # constant predictions
    yield (labels + 1) % num_classes, labels  # all wrong
  yield np.ones(5, int), np.ones(5, int)  # one class only


@pytest.mark.filterwarnings("ignore:A single label was found")
@pytest.mark.parametrize("num_classes", [2, 3])
def test_classification_metrics_agree_with_sklearn(num_classes):
  for predictions, labels in random_cases(num_classes):
    assert metrics.accuracy(predictions, labels) == pytest.approx(skm.accuracy_score(labels, predictions))
    assert metrics.matthews_corrcoef(predictions, labels) == pytest.approx(
      skm.matthews_corrcoef(labels, predictions), abs=1e-12
    )
    if num_classes == 2:
      assert metrics.f1(predictions, labels) == pytest.approx(skm.f1_score(labels, predictions, zero_division=0.0))


def test_matthews_is_zero_for_constant_predictions_like_sklearn():
  labels = np.array([0, 1, 1, 0, 1])
  assert metrics.matthews_corrcoef(np.ones(5, int), labels) == 0.0
  assert skm.matthews_corrcoef(labels, np.ones(5, int)) == 0.0


def correlation_cases():
  rng = np.random.default_rng(0)
  for size in (2, 3, 10, 500):
    x = rng.normal(size=size)
    yield x + rng.normal(size=size), x
    yield -x, x
  ties = rng.integers(0, 4, 200).astype(float)  # many ties, both sides
  yield ties, rng.integers(0, 3, 200) + 0.5 * ties
  yield np.round(rng.uniform(0, 5, 300), 1), np.round(rng.uniform(0, 5, 300))
  yield np.array([1.0, 2.0, 2.0, 3.0]), np.array([4.0, 4.0, 4.0, 5.0])


def test_correlations_agree_with_scipy_including_ties():
  for predictions, labels in correlation_cases():
    assert metrics.pearson(predictions, labels) == pytest.approx(stats.pearsonr(predictions, labels)[0], abs=1e-10)
    assert metrics.spearman(predictions, labels) == pytest.approx(stats.spearmanr(predictions, labels)[0], abs=1e-10)


def test_correlation_of_a_constant_is_zero_where_scipy_gives_nan():
  labels = np.array([0.5, 1.0, 3.0, 4.0])
  with pytest.warns(stats.ConstantInputWarning):
    assert np.isnan(stats.pearsonr(np.full(4, 2.0), labels)[0])
  assert metrics.pearson(np.full(4, 2.0), labels) == 0.0
  assert metrics.spearman(np.full(4, 2.0), labels) == 0.0


@pytest.mark.parametrize(
  "task, names, main",
  [
    ("cola", {"matthews_corr", "accuracy"}, "matthews_corr"),
    ("sst2", {"accuracy"}, "accuracy"),
    ("mrpc", {"accuracy", "f1"}, "accuracy"),
    ("stsb", {"pearson", "spearman"}, "pearson"),
    ("qqp", {"accuracy", "f1"}, "accuracy"),
    ("mnli", {"accuracy"}, "accuracy"),
    ("MNLI-mm", {"accuracy"}, "accuracy"),
    ("mnli_matched", {"accuracy"}, "accuracy"),
    ("qnli", {"accuracy"}, "accuracy"),
    ("rte", {"accuracy"}, "accuracy"),
    ("wnli", {"accuracy"}, "accuracy"),
  ],
)
def test_each_glue_task_reports_its_official_metrics(task, names, main):
  labels = np.array([0, 1, 1, 0, 1, 0])
  predictions = np.array([0, 1, 0, 0, 1, 1])
  if task == "stsb":
    labels, predictions = labels * 2.5, predictions + 0.1 * np.arange(6)
  result = metrics.glue_metrics(task, predictions, labels)
  assert set(result) == names
  assert metrics.main_metric(task) == main
  if "f1" in names:
    assert result["f1"] == pytest.approx(skm.f1_score(labels, predictions))


def test_glue_bad_input_says_what_to_do():
  with pytest.raises(ValueError, match="Unknown GLUE task"):
    metrics.glue_metrics("squad", [1], [1])
  with pytest.raises(ValueError, match="one prediction per example"):
    metrics.glue_metrics("sst2", [1, 0], [1])


# ---------------------------------------------------------------- SQuAD
# A transcription of the official SQuAD evaluation scripts' logic (v1.1 and
# v2.0, https://rajpurkar.github.io/SQuAD-explorer/), kept here as the
# reference the library is checked against.


def ref_normalize(s):
  s = s.lower()
  s = "".join(ch for ch in s if ch not in set(string.punctuation))
  s = re.sub(r"\b(a|an|the)\b", " ", s)
  return " ".join(s.split())


def ref_f1_v1(prediction, truth):
  p, t = ref_normalize(prediction).split(), ref_normalize(truth).split()
  same = sum((collections.Counter(p) & collections.Counter(t)).values())
  if same == 0:
    return 0
  precision, recall = same / len(p), same / len(t)
  return 2 * precision * recall / (precision + recall)


def ref_evaluate_v1(dataset, predictions):
  f1 = exact_match = total = 0
  for article in dataset:
    for paragraph in article["paragraphs"]:
      for qa in paragraph["qas"]:
        total += 1
        if qa["id"] not in predictions:
          continue
        truths = [a["text"] for a in qa["answers"]]
        pred = predictions[qa["id"]]
        exact_match += max(ref_normalize(pred) == ref_normalize(t) for t in truths)
        f1 += max(ref_f1_v1(pred, t) for t in truths)
  return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def ref_f1_v2(gold, pred):
  g = ref_normalize(gold).split() if gold else []
  p = ref_normalize(pred).split() if pred else []
  if not g or not p:
    return int(g == p)
  same = sum((collections.Counter(g) & collections.Counter(p)).values())
  if same == 0:
    return 0
  precision, recall = same / len(p), same / len(g)
  return 2 * precision * recall / (precision + recall)


def ref_evaluate_v2(dataset, preds, na_probs, thresh=1.0):
  has_ans, exact_raw, f1_raw = {}, {}, {}
  for article in dataset:
    for p in article["paragraphs"]:
      for qa in p["qas"]:
        has_ans[qa["id"]] = bool(qa["answers"])
        golds = [a["text"] for a in qa["answers"] if ref_normalize(a["text"])]
        golds = golds or [""]
        pred = preds[qa["id"]]
        exact_raw[qa["id"]] = max(int(ref_normalize(a) == ref_normalize(pred)) for a in golds)
        f1_raw[qa["id"]] = max(ref_f1_v2(a, pred) for a in golds)

  def apply_thresh(scores):
    return {q: float(not has_ans[q]) if na_probs[q] > thresh else s for q, s in scores.items()}

  def make(exact, f1, qids):
    return (100.0 * sum(exact[k] for k in qids) / len(qids), 100.0 * sum(f1[k] for k in qids) / len(qids), len(qids))

  exact, f1 = apply_thresh(exact_raw), apply_thresh(f1_raw)
  out = dict(zip(("exact", "f1", "total"), make(exact, f1, list(exact))))
  for name, flag in (("HasAns", True), ("NoAns", False)):
    qids = [k for k, v in has_ans.items() if v == flag]
    if qids:
      out.update(zip((f"{name}_exact", f"{name}_f1", f"{name}_total"), make(exact, f1, qids)))

  def best_thresh(scores):
    num_no_ans = sum(1 for k in has_ans if not has_ans[k])
    cur = best = num_no_ans
    best_t = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
      if has_ans[qid]:
        diff = scores[qid]
      else:
        diff = -1 if preds[qid] else 0
      cur += diff
      if cur > best:
        best, best_t = cur, na_probs[qid]
    return 100.0 * best / len(scores), best_t

  out["best_exact"], out["best_exact_thresh"] = best_thresh(exact_raw)
  out["best_f1"], out["best_f1_thresh"] = best_thresh(f1_raw)
  return out


@pytest.fixture(scope="module")
def squad_v1_dev(shared_data):
  with zipfile.ZipFile(shared_data / "squad" / "dev-v1.1.json.zip") as zf:
    return json.loads(zf.read("dev-v1.1.json"))["data"]


@pytest.fixture(
  scope="module",
  params=["generated", pytest.param("shared", marks=needs_data("the official SQuAD v1.1 dev set (10,570 questions)"))],
)
def squad_v1(request):
  """(data, questions): generated (20 articles, 120 questions), or the official v1.1 dev set."""
  if request.param == "generated":
    return fixtures.squad_dataset("1.1", 20)["data"], 120
  return request.getfixturevalue("squad_v1_dev"), 10570


@pytest.fixture(
  scope="module",
  params=[
    "generated",
    pytest.param("shared", marks=needs_data("the SQuAD v2.0 sample (14 questions, 6 unanswerable)")),
  ],
)
def squad_v2(request):
  """(data, (questions, answerable, unanswerable)): generated, or the official format's 14-question sample."""
  if request.param == "generated":
    return fixtures.squad_dataset("2.0", 3)["data"], (30, 18, 12)
  path = request.getfixturevalue("shared_data") / "squad" / "hf_fixture_dev-v2.0_sample.json"
  return json.loads(path.read_text())["data"], (14, 8, 6)


def questions(dataset):
  return [qa for a in dataset for p in a["paragraphs"] for qa in p["qas"]]


def test_normalize_answer_official_rules():
  assert metrics.normalize_answer("  The  Denver-Broncos!  ") == "denverbroncos"
  assert metrics.normalize_answer("An apple, a pear; the end.") == ("apple pear end")
  assert metrics.normalize_answer("Theatre") == "theatre"  # whole words only


def test_squad_v1_hand_checked():
  dataset = [
    {
      "paragraphs": [
        {
          "qas": [
            {"id": "a", "answers": [{"text": "Denver Broncos"}, {"text": "The Denver Broncos"}]},
            {"id": "b", "answers": [{"text": "Santa Clara, California"}]},
            {"id": "c", "answers": [{"text": "February 7, 2016"}]},
          ]
        }
      ]
    }
  ]
  predictions = {"a": "Denver", "b": "santa clara", "c": "the February 7 2016!"}
  result = metrics.squad_v1(dataset, predictions)
  # a: P=1, R=1/2 -> F1 2/3; b: P=1, R=2/3 -> F1 0.8; c: exact after normalising.
  assert result["exact_match"] == pytest.approx(100 / 3)
  assert result["f1"] == pytest.approx(100 * (2 / 3 + 0.8 + 1) / 3)
  assert result["total"] == 3 and result["missing"] == 0


def test_squad_v1_gold_answers_score_100_on_a_whole_dev_set(squad_v1):
  data, total = squad_v1
  qas = questions(data)
  predictions = {qa["id"]: qa["answers"][0]["text"] for qa in qas}
  result = metrics.squad_v1({"data": data}, predictions)
  assert result["total"] == len(qas) == total
  assert result["exact_match"] == 100.0 and result["f1"] == 100.0


def perturbed(qas):
  """Wrong, partial, decorated and missing answers, by question index."""
  predictions = {}
  for i, qa in enumerate(qas):
    gold = qa["answers"][0]["text"] if qa["answers"] else ""
    other = qas[(i + 1) % len(qas)]["answers"]
    kind = i % 7
    if kind == 0:
      predictions[qa["id"]] = gold
    elif kind == 1:
      predictions[qa["id"]] = " ".join(gold.split()[1:])
    elif kind == 2:
      predictions[qa["id"]] = gold + " and some more words"
    elif kind == 3:
      predictions[qa["id"]] = other[0]["text"] if other else "nothing"
    elif kind == 4:
      predictions[qa["id"]] = ""
    elif kind == 5:
      predictions[qa["id"]] = "The " + gold.upper() + "."
    # kind 6: no prediction at all
  return predictions


def test_squad_v1_wrong_answers_match_official_logic(squad_v1):
  data, _ = squad_v1
  predictions = perturbed(questions(data))
  result = metrics.squad_v1(data, predictions)
  reference = ref_evaluate_v1(data, predictions)
  assert 20 < result["exact_match"] < 80 and 20 < result["f1"] < 90
  assert result["exact_match"] == pytest.approx(reference["exact_match"], abs=1e-9)
  assert result["f1"] == pytest.approx(reference["f1"], abs=1e-9)
  assert result["missing"] == result["total"] - len(predictions)


def test_squad_v2_gold_answers_score_100(squad_v2):
  data, totals = squad_v2
  qas = questions(data)
  predictions = {qa["id"]: qa["answers"][0]["text"] if qa["answers"] else "" for qa in qas}
  result = metrics.squad_v2(data, predictions)
  assert result["exact"] == result["f1"] == 100.0
  assert (result["total"], result["HasAns_total"], result["NoAns_total"]) == totals


@pytest.mark.parametrize("thresh", [1.0, 0.5])
def test_squad_v2_matches_official_logic_with_thresholds(squad_v2, thresh):
  data, _ = squad_v2
  qas = questions(data)
  rng = np.random.default_rng(0)
  predictions = {}
  for i, qa in enumerate(qas):
    plausible = [a["text"] for a in qa.get("plausible_answers", [])]
    gold = qa["answers"][0]["text"] if qa["answers"] else ""
    choice = i % 4
    predictions[qa["id"]] = [gold, (plausible or ["x"])[0], " ".join(gold.split()[:1]), ""][choice]
  na_probs = {qa["id"]: float(rng.uniform()) for qa in qas}
  result = metrics.squad_v2(data, predictions, na_probs, thresh)
  reference = ref_evaluate_v2(data, predictions, na_probs, thresh)
  assert set(reference) <= set(result)
  for key, value in reference.items():
    assert result[key] == pytest.approx(value, abs=1e-9), key


def test_squad_v2_threshold_search_hand_checked():
  dataset = [
    {
      "paragraphs": [
        {
          "qas": [
            {"id": "h1", "answers": [{"text": "Rollo"}]},
            {"id": "h2", "answers": [{"text": "the 10th century"}]},
            {"id": "n1", "answers": []},
            {"id": "n2", "answers": []},
          ]
        }
      ]
    }
  ]
  predictions = {"h1": "Rollo", "h2": "10th century", "n1": "Paris", "n2": "France"}
  na_probs = {"h1": 0.1, "h2": 0.3, "n1": 0.2, "n2": 0.9}
  result = metrics.squad_v2(dataset, predictions, na_probs)
  # Raw: both answerable right, both unanswerable wrong -> 50.
  assert result["exact"] == 50.0 and result["NoAns_exact"] == 0.0
  # Sweep from 2 (all blank): h1 +1 -> 3, n1 -1 -> 2, h2 +1 -> 3, n2 -1.
  # The first maximum (3) is reached at na_prob 0.1.
  assert result["best_exact"] == 75.0
  assert result["best_exact_thresh"] == 0.1


@pytest.mark.parametrize("thresh", [1.0, 0.1])
def test_squad_v2_a_gold_answer_that_normalises_to_nothing_still_has_an_answer(thresh):
  # evaluate-v2.0.py splits HasAns/NoAns on bool(qa["answers"]), the raw list: "The" has an answer, although it
  # normalises to '' and so scores against ''. The sweep starts from the unanswerable count, so it moves too.
  dataset = [{"paragraphs": [{"qas": [{"id": "t", "answers": [{"text": "The"}]}, {"id": "n", "answers": []}]}]}]
  predictions = {"t": "", "n": "Paris"}
  na_probs = {"t": 0.2, "n": 0.6}
  result = metrics.squad_v2(dataset, predictions, na_probs, thresh)
  assert (result["HasAns_total"], result["NoAns_total"]) == (1, 1)
  assert result["best_exact_thresh"] == 0.2  # admitting "t" gains its exact match
  reference = ref_evaluate_v2(dataset, predictions, na_probs, thresh)
  assert set(reference) <= set(result)
  for key, value in reference.items():
    assert result[key] == pytest.approx(value, abs=1e-9), key

"""Official evaluation metrics: GLUE and SQuAD v1.1 / v2.0.

Pure NumPy and Python, so evaluation needs neither scikit-learn nor SciPy.
GLUE metrics are fractions and correlations as scikit-learn / SciPy return
them; SQuAD scores are percentages as the official scripts print them.
"""

import collections
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# ---------------------------------------------------------------- GLUE


def accuracy(predictions: Sequence[Any], labels: Sequence[Any]) -> float:
  predictions, labels = _pair(predictions, labels)
  return float(np.mean(predictions == labels))


def f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
  """Binary F1 of class 1; 0 when there are no true positives."""
  predictions, labels = _pair(predictions, labels)
  true_pos = np.sum((predictions == 1) & (labels == 1))
  if true_pos == 0:
    return 0.0
  precision = true_pos / np.sum(predictions == 1)
  recall = true_pos / np.sum(labels == 1)
  return float(2 * precision * recall / (precision + recall))


def macro_f1(predictions: Sequence[Any], labels: Sequence[Any]) -> float:
  """The mean over classes of each class's F1 (0 without true positives), the classes being those among the labels
  or predictions: scikit-learn's f1_score(average='macro')."""
  predictions, labels = _pair(predictions, labels)
  scores = []
  for c in np.unique(np.concatenate([labels, predictions])):
    true_pos = np.sum((predictions == c) & (labels == c))
    scores.append(0.0 if true_pos == 0 else 2 * true_pos / (np.sum(predictions == c) + np.sum(labels == c)))
  return float(np.mean(scores))


def matthews_corrcoef(predictions: Sequence[int], labels: Sequence[int]) -> float:
  """Matthews correlation (multi-class R_K); 0 when undefined (a constant).

  Gorodkin's form over the confusion matrix, as scikit-learn computes it.
  """
  predictions, labels = _pair(predictions, labels)
  classes, index = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
  n = len(labels)
  confusion = np.zeros((len(classes), len(classes)), np.float64)
  np.add.at(confusion, (index[:n], index[n:]), 1.0)
  true_sum, pred_sum = confusion.sum(axis=1), confusion.sum(axis=0)
  correct, total = np.trace(confusion), confusion.sum()
  cov_true_pred = correct * total - true_sum @ pred_sum
  cov_pred_pred = total**2 - pred_sum @ pred_sum
  cov_true_true = total**2 - true_sum @ true_sum
  if cov_pred_pred * cov_true_true == 0:
    return 0.0
  return float(cov_true_pred / np.sqrt(cov_true_true * cov_pred_pred))


def pearson(predictions: Sequence[float], labels: Sequence[float]) -> float:
  """Pearson's r; 0 (SciPy: nan) when either side is constant.

  Early in STS-B fine-tuning a model can predict one value for everything;
  0 keeps best-checkpoint comparisons well defined.
  """
  x, y = _pair(predictions, labels, np.float64)
  x, y = x - x.mean(), y - y.mean()
  denominator = np.sqrt((x @ x) * (y @ y))
  if denominator == 0:
    return 0.0
  return float(np.clip((x @ y) / denominator, -1.0, 1.0))


def spearman(predictions: Sequence[float], labels: Sequence[float]) -> float:
  """Spearman's rho: Pearson's r of the ranks, ties sharing their mean rank."""
  x, y = _pair(predictions, labels, np.float64)
  return pearson(_average_ranks(x), _average_ranks(y))


def _average_ranks(values: np.ndarray) -> np.ndarray:
  _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
  first_rank = np.cumsum(counts) - counts + 1
  return (first_rank + (counts - 1) / 2.0)[inverse]


def _pair(predictions, labels, dtype=None):
  predictions = np.asarray(predictions, dtype).reshape(-1)
  labels = np.asarray(labels, dtype).reshape(-1)
  if predictions.shape != labels.shape or not len(labels):
    raise ValueError(
      f"Got {len(predictions)} predictions for {len(labels)} labels; pass one prediction per example (at least one)."
    )
  return predictions, labels


_METRICS = {
  "accuracy": accuracy,
  "f1": f1,
  "macro_f1": macro_f1,
  "matthews_corr": matthews_corrcoef,
  "pearson": pearson,
  "spearman": spearman,
}

# task -> (metrics reported, the metric that picks the best checkpoint).
# The main metric follows the original run_classifier: Matthews for CoLA,
# Pearson for STS-B, accuracy elsewhere. MNLI is evaluated on its matched
# and mismatched dev sets separately; the matched accuracy is the main one.
GLUE_TASKS = {
  "cola": (("matthews_corr", "accuracy"), "matthews_corr"),
  "sst2": (("accuracy",), "accuracy"),
  "mrpc": (("accuracy", "f1"), "accuracy"),
  "stsb": (("pearson", "spearman"), "pearson"),
  "qqp": (("accuracy", "f1"), "accuracy"),
  "mnli": (("accuracy",), "accuracy"),
  "mnli_matched": (("accuracy",), "accuracy"),
  "mnli_mismatched": (("accuracy",), "accuracy"),
  "qnli": (("accuracy",), "accuracy"),
  "rte": (("accuracy",), "accuracy"),
  "wnli": (("accuracy",), "accuracy"),
}


def _task(task: str) -> tuple[tuple[str, ...], str]:
  key = task.lower().replace("-", "").replace("_", "")
  key = {
    "mnlim": "mnli_matched",
    "mnlimm": "mnli_mismatched",
    "mnlimatched": "mnli_matched",
    "mnlimismatched": "mnli_mismatched",
  }.get(key, key)
  if key not in GLUE_TASKS:
    raise ValueError(f"Unknown GLUE task {task!r}; use one of {', '.join(GLUE_TASKS)}.")
  return GLUE_TASKS[key]


def glue_metrics(task: str, predictions: Sequence[Any], labels: Sequence[Any]) -> dict[str, float]:
  """The task's official metrics: class ids, or scores for STS-B."""
  names, _ = _task(task)
  return {name: _METRICS[name](predictions, labels) for name in names}


def main_metric(task: str) -> str:
  """Name of the metric (higher is better) that selects the best checkpoint."""
  return _task(task)[1]


# ---------------------------------------------------------------- SQuAD


def normalize_answer(text: str) -> str:
  """Lowercase, drop punctuation and the articles a/an/the, squeeze spaces."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


_PUNCTUATION = frozenset(string.punctuation)


def squad_exact(prediction: str, gold: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str, empty_matches_empty: bool = True) -> float:
  """Token-overlap F1 of the normalised answers.

  Args:
    prediction: predicted answer text.
    gold: one gold answer.
    empty_matches_empty: v2.0 rule (an empty side scores 1 only against an
      empty side); False gives the v1.1 script's 0 for any empty side.

  Returns:
    F1 in [0, 1].
  """
  pred_tokens = normalize_answer(prediction).split()
  gold_tokens = normalize_answer(gold).split()
  if empty_matches_empty and (not pred_tokens or not gold_tokens):
    return float(pred_tokens == gold_tokens)
  common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
  overlap = sum(common.values())
  if overlap == 0:
    return 0.0
  precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def _questions(dataset: Any):
  """(id, gold answer texts) for every question of SQuAD JSON (or its data)."""
  articles = dataset["data"] if isinstance(dataset, Mapping) else dataset
  for article in articles:
    for paragraph in article["paragraphs"]:
      for qa in paragraph["qas"]:
        yield qa["id"], [answer["text"] for answer in qa["answers"]]


def squad_v1(dataset: Any, predictions: Mapping[str, str]) -> dict[str, float]:
  """The official v1.1 scores: {'exact_match', 'f1'} in percent.

  Args:
    dataset: the parsed dev JSON (or its 'data' list).
    predictions: question id -> answer text (the predictions.json).

  Returns:
    Mean over ALL questions of the max over gold answers; a question with no
    prediction scores 0, as in the official script. 'missing' counts them.
  """
  exact = f1_total = 0.0
  total = missing = 0
  for qid, golds in _questions(dataset):
    total += 1
    if qid not in predictions:
      missing += 1
      continue
    prediction = predictions[qid]
    exact += max(squad_exact(prediction, g) for g in golds)
    f1_total += max(squad_f1(prediction, g, empty_matches_empty=False) for g in golds)
  return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1_total / total, "total": total, "missing": missing}


def squad_v2(
  dataset: Any, predictions: Mapping[str, str], na_probs: Mapping[str, float] | None = None, na_prob_thresh: float = 1.0
) -> dict[str, float]:
  """The official v2.0 scores, with the HasAns / NoAns breakdown.

  Args:
    dataset: the parsed dev JSON (or its 'data' list).
    predictions: question id -> answer text, '' for "no answer".
    na_probs: optional question id -> no-answer probability (or any score
      where larger means "no answer"); adds the best thresholds.
    na_prob_thresh: a question whose na_prob exceeds this is taken as
      answered with ''.

  Returns:
    exact, f1, total, HasAns_* and NoAns_* (percent and counts), missing;
    with na_probs also best_exact, best_exact_thresh, best_f1,
    best_f1_thresh: the scores when every question whose na_prob exceeds
    the threshold is answered with '' (the threshold to use on test).
    Unlike the official script (which drops a missing prediction from the
    totals or crashes in the breakdown), a missing prediction scores 0.
  """
  na_probs = na_probs or {}
  raw_exact, raw_f1, has_answer = {}, {}, {}
  missing = 0
  for qid, golds in _questions(dataset):
    golds = [g for g in golds if normalize_answer(g)] or [""]
    has_answer[qid] = golds != [""]
    if qid not in predictions:
      missing += 1
      raw_exact[qid] = raw_f1[qid] = 0.0
      continue
    raw_exact[qid] = max(squad_exact(predictions[qid], g) for g in golds)
    raw_f1[qid] = max(squad_f1(predictions[qid], g) for g in golds)

  def threshold(scores):
    return {q: float(not has_answer[q]) if na_probs.get(q, 0.0) > na_prob_thresh else s for q, s in scores.items()}

  exact, f1s = threshold(raw_exact), threshold(raw_f1)

  def summary(qids, prefix=""):
    return {
      f"{prefix}exact": 100.0 * sum(exact[q] for q in qids) / len(qids),
      f"{prefix}f1": 100.0 * sum(f1s[q] for q in qids) / len(qids),
      f"{prefix}total": len(qids),
    }

  result = summary(list(exact))
  for prefix, wanted in (("HasAns_", True), ("NoAns_", False)):
    qids = [q for q in exact if has_answer[q] == wanted]
    if qids:
      result.update(summary(qids, prefix))
  result["missing"] = missing
  if na_probs:
    for name, scores in (("exact", raw_exact), ("f1", raw_f1)):
      best, best_thresh = _best_threshold(predictions, scores, na_probs, has_answer)
      result[f"best_{name}"], result[f"best_{name}_thresh"] = best, best_thresh
  return result


def _best_threshold(predictions, scores, na_probs, has_answer):
  """Sweeps the no-answer threshold as the official v2.0 script does.

  Start from "every question answered with ''" (all NoAns right), then admit
  questions in order of increasing na_prob: an answerable one gains its
  score, an unanswerable one loses 1 if the prediction is non-empty.
  """
  current = best = float(sum(not has for has in has_answer.values()))
  threshold = 0.0
  for qid in sorted(scores, key=lambda q: na_probs.get(q, 0.0)):
    if has_answer[qid]:
      current += scores[qid]
    elif predictions.get(qid):
      current -= 1
    if current > best:
      best, threshold = current, na_probs.get(qid, 0.0)
  return 100.0 * best / len(scores), threshold

"""Predictions of a fine-tuned model on new inputs (`python -m albert_jax.predict --checkpoint=FINETUNED`).

A row is a dict of texts; which fields it needs depends on the head the checkpoint holds (`FIELDS`):
text [+ text_pair] (classification, regression), question + context (the span heads), text + choices (multiple
choice, an optional question joined to each choice as RACE does), text (tagging: its words are what
whitespace separates). Rows become features through the task modules' own code (`glue.to_features`,
`squad.make_features`, `race.to_features`, `tagging.to_features`) and the outputs become answers through their
post-processing (`squad.postprocess`, `squad.postprocess_xlnet`, `tagging.predicted_tags` and `tagging.chunks`),
so a prediction is what the fine-tuning evaluation would have made of the same input.

Rows are run in batches of similar length: sorted by length, each batch cut to the smallest of the fine-tuning's
length buckets (`tasks.buckets`) that holds its longest row, so that many rows reuse a few compiled programs. Each
answer carries label names with probabilities, as the Hugging Face pipelines give them, and the raw logits.
"""

import operator
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from albert_jax import checkpoints
from albert_jax import model as model_lib
from albert_jax.tasks import buckets, family, fill_mask, glue, race, squad, tagging
from albert_jax.tasks.fill_mask import InputError

# Per head: the row fields it needs, then those it may have.
FIELDS = {
  "classification": (("text",), ("text_pair",)),
  "regression": (("text",), ("text_pair",)),
  "span": (("question", "context"), ()),
  "span_xlnet": (("question", "context"), ()),
  "multiple_choice": (("text", "choices"), ("question",)),
  "tagging": (("text",), ()),
}
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_WORD = re.compile(r"\S+")  # a tagging row's words: what str.split() gives, with their offsets
# SQuAD's windows, decoding and the XLNet head's beam when the checkpoint does not record them (a Hugging Face
# directory): config_lib.finetuning's defaults.
SQUAD_DEFAULTS = {
  "doc_stride": 128,
  "max_query_length": 64,
  "n_best_size": 20,
  "max_answer_length": 30,
  "start_n_top": 5,
  "end_n_top": 5,
}


class Predictor:
  """A fine-tuned model, its tokenizer and what its head answers with; `predict(rows)` answers rows.

  Args:
    source: a fine-tuning workdir or a Hugging Face directory of a head's class (`checkpoints.head_info`).
    tokenizer: the model's `tokenizer.Tokenizer`.
    batch_size: rows per model call.
    max_seq_length: tokens per input; default: the fine-tuning's, else the model's maximum.
    null_threshold: the span heads answer "" (no answer) where the null odds exceed it; None: never, unless the
      model was fine-tuned on SQuAD 2.0 (then its config.task.null_score_diff_threshold, else 0).
    n_best_size: the span head's start and end candidates per window (`squad.postprocess`); default: the
      fine-tuning's (20); Hugging Face's question-answering pipeline searched every pair (max_seq_length).

  The span heads window and decode as the fine-tuning did (its doc_stride, max_query_length, max_answer_length
  and beam, from experiment.json), else with `SQUAD_DEFAULTS`.
  """

  def __init__(
    self,
    source,
    tokenizer,
    batch_size: int = 32,
    max_seq_length: int | None = None,
    null_threshold=None,
    n_best_size: int | None = None,
  ):
    self.info = checkpoints.head_info(source)
    if self.info is None or self.info.head not in FIELDS:
      raise InputError(
        f"{source} holds no fine-tuned head that predict knows ({', '.join(FIELDS)}); a pretrained model fills "
        "masks instead: pass --text with [MASK]."
      )
    self.config, params = checkpoints.load(source)
    self.params = params["params"]
    self.tokenizer = tokenizer
    self.batch_size = batch_size
    limit = self.config.max_position_embeddings
    self.max_seq_length = min(max_seq_length or self.info.max_seq_length or limit, limit)
    configured = self.info.settings.get("length_buckets")
    self.buckets = (
      tuple(configured)
      if configured and configured[-1] == self.max_seq_length
      else buckets.default_buckets(self.max_seq_length)
    )
    if null_threshold is None and self.info.task == "squad_v2":
      null_threshold = self.info.settings.get("null_score_diff_threshold") or 0.0
    self.null_threshold = null_threshold
    self.squad = {k: self.info.settings.get(k, v) for k, v in SQUAD_DEFAULTS.items()}
    if n_best_size is not None:
      self.squad["n_best_size"] = n_best_size
    head = self.info.head
    num_labels = len(self.info.labels) if self.info.labels else 1 if head == "regression" else 2
    self.labels = self.info.labels or tuple(f"LABEL_{i}" for i in range(num_labels))
    n_top = {k: self.squad[k] for k in ("start_n_top", "end_n_top")} if head == "span_xlnet" else {}
    model = model_lib.for_head(head, self.config, num_labels, **n_top)
    self._inputs = (*_MODEL_INPUTS, "p_mask") if head == "span_xlnet" else _MODEL_INPUTS  # as finetuning.model_inputs
    # One compilation per batch shape.
    self._apply = jax.jit(lambda params, batch: model.apply({"params": params}, **batch, deterministic=True))

  def predict(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One answer per row, in order (see the module docstring)."""
    rows = [_checked(self.info.head, number, row) for number, row in enumerate(rows, start=1)]
    if not rows:
      return []
    features, index = self.encode(rows)
    return self.answers(rows, self.outputs(features), index)

  def encode(self, rows: Sequence[dict[str, Any]]) -> tuple[dict[str, np.ndarray], Any]:
    """The model inputs of `rows` as the task modules make them, and what maps them back (SQuAD's FeatureIndex)."""
    head = self.info.head
    if head in ("classification", "regression"):
      examples = [glue.Example(str(i), r["text"], r.get("text_pair"), None) for i, r in enumerate(rows)]
      return glue.to_features(examples, self.tokenizer, self.max_seq_length, head == "regression"), None
    if head == "multiple_choice":
      if {len(r["choices"]) for r in rows} != {race.NUM_CHOICES}:
        raise InputError(
          f"The multiple-choice head reads {race.NUM_CHOICES} choices per question; pass exactly that many."
        )
      examples = [
        race.Example(str(i), "", r["text"], r.get("question", ""), tuple(r["choices"]), -1) for i, r in enumerate(rows)
      ]
      return race.to_features(examples, self.tokenizer, self.max_seq_length, self.max_seq_length), None
    if head == "tagging":
      sentences = [tagging.Sentence(i, tuple(r["text"].split()), None, None) for i, r in enumerate(rows)]
      features, windows = tagging.to_features(sentences, self.tokenizer, self.max_seq_length, self.labels)
      return features, family.TaskData(features, "predict", sentences, windows)
    examples = [squad.Example(str(i), r["question"], r["context"], (), -1, True) for i, r in enumerate(rows)]
    stride = min(self.squad["doc_stride"], self.max_seq_length // 2)
    query = min(self.squad["max_query_length"], self.max_seq_length // 2)
    return squad.make_features(examples, self.tokenizer, self.max_seq_length, stride, query)

  def outputs(self, features: dict[str, np.ndarray]) -> Any:
    """The head's outputs for every row of `features`, in order, run in batches of similar length.

    Outputs with one value per token (the span and tagging heads') are padded back to the features' length with
    -1e30.
    """
    inputs = {k: features[k] for k in self._inputs}
    lengths = buckets.row_lengths(inputs)
    order = np.argsort(lengths, kind="stable")
    full = inputs["input_ids"].shape[-1]
    positional = self.info.head in ("span", "tagging")
    outputs = []
    for start in range(0, len(order), self.batch_size):
      chunk = order[start : start + self.batch_size]
      length = buckets.bucket_length(lengths[chunk], self.buckets, full)
      rows = fill_mask.bucket(len(chunk), 1, self.batch_size)
      batch = {k: _pad_rows(v[chunk][..., :length], rows) for k, v in inputs.items()}
      out = jax.device_get(self._apply(self.params, batch))
      out = jax.tree.map(operator.itemgetter(slice(0, len(chunk))), out)
      if positional:
        pad = lambda a, length=length: np.pad(
          a, [(0, 0), (0, full - length)] + [(0, 0)] * (a.ndim - 2), constant_values=-1e30
        )
        out = jax.tree.map(pad, out)
      outputs.append(out)
    stacked = jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)
    return jax.tree.map(lambda a: a[np.argsort(order, kind="stable")], stacked)

  def answers(self, rows: Sequence[dict[str, Any]], outputs: Any, index: Any) -> list[dict[str, Any]]:
    """The rows' answers from the head's `outputs` (see `encode` for `index`)."""
    head = self.info.head
    if head in ("classification", "regression"):
      return [self._sequence_answer(logits) for logits in outputs]
    if head == "multiple_choice":
      return [self._choice_answer(row, logits) for row, logits in zip(rows, outputs)]
    if head == "tagging":
      return self._tagged(rows, outputs, index)
    return self._span_answers(outputs, index)

  def _sequence_answer(self, logits: np.ndarray) -> dict[str, Any]:
    logits = np.asarray(logits, np.float64).reshape(-1)
    if self.info.head == "regression":
      return {"score": float(logits[0]), "logits": logits.tolist()}
    probabilities = _softmax(logits)
    ranked = np.argsort(-probabilities, kind="stable")
    return {
      "label": self.labels[ranked[0]],
      "score": float(probabilities[ranked[0]]),
      "scores": [{"label": self.labels[i], "score": float(probabilities[i])} for i in ranked],
      "logits": logits.tolist(),
    }

  def _choice_answer(self, row: dict[str, Any], logits: np.ndarray) -> dict[str, Any]:
    logits = np.asarray(logits, np.float64)
    probabilities = _softmax(logits)
    best = int(np.argmax(logits))
    return {
      "label": row["choices"][best],
      "index": best,
      "score": float(probabilities[best]),
      "scores": probabilities.tolist(),
      "logits": logits.tolist(),
    }

  def _tagged(self, rows, logits: np.ndarray, data: family.TaskData) -> list[dict[str, Any]]:
    """Each word with its tag (the argmax at its first piece, `tagging.predicted_tags`) and that tag's probability;
    the entities as conlleval reads the tags (`tagging.chunks`), with their character offsets."""
    tags = tagging.predicted_tags(logits, data, self.labels)
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    scores = [[0.0] * len(s.tokens) for s in data.examples]
    for row, window in enumerate(data.index):
      for w, position in enumerate(window.positions):
        scores[window.sentence][window.first + w] = float(probabilities[row, position].max())
    out = []
    for row, sentence_tags, word_scores in zip(rows, tags, scores):
      spans = [m.span() for m in _WORD.finditer(row["text"])]
      words = [
        {"word": row["text"][a:b], "tag": tag, "score": score, "start": a, "end": b}
        for (a, b), tag, score in zip(spans, sentence_tags, word_scores)
      ]
      entities = [
        {
          "entity": kind,
          "word": row["text"][spans[first][0] : spans[last][1]],
          "start": spans[first][0],
          "end": spans[last][1],
          "score": float(np.mean(word_scores[first : last + 1])),
        }
        for first, last, kind in sorted(tagging.chunks(sentence_tags))
      ]
      out.append({"words": words, "entities": entities})
    return out

  def _span_answers(self, outputs: Any, index: squad.FeatureIndex) -> list[dict[str, Any]]:
    sizes = self.squad["n_best_size"], self.squad["max_answer_length"]
    if self.info.head == "span_xlnet":
      answers, null_odds, nbest = squad.postprocess_xlnet(outputs, index, *sizes)
      scores = {q: entries[0]["probability"] for q, entries in nbest.items()}
    else:
      answers, null_odds = squad.postprocess(outputs["start_logits"], outputs["end_logits"], index, *sizes)
      scores = None
    if self.null_threshold is not None:
      answers = squad.apply_null_threshold(answers, null_odds, float(self.null_threshold))
    out = []
    for example in index.examples:
      answer = {"answer": answers[example.qid], "null_odds": float(null_odds[example.qid])}
      if scores is not None:
        answer["score"] = float(scores[example.qid])
      out.append(answer)
    return out


def _checked(head: str, number: int, row: dict[str, Any]) -> dict[str, Any]:
  """The row, after checking that it has the fields the head needs, each a non-empty text (choices: a list)."""
  needed, optional = FIELDS[head]
  missing = [f for f in needed if not row.get(f)]
  if missing:
    given = " ".join(f"--{f}" for f in needed)
    raise InputError(f"Row {number} has no {', '.join(missing)}; the {head} head needs {given}.")
  unknown = sorted(set(row) - set(needed) - set(optional))
  if unknown:
    raise InputError(f"Row {number} has {', '.join(unknown)}, which the {head} head does not read; remove it.")
  return row


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
  return np.concatenate([a, np.zeros((rows - len(a), *a.shape[1:]), a.dtype)]) if rows > len(a) else a


def _softmax(logits: np.ndarray) -> np.ndarray:
  e = np.exp(logits - logits.max())
  return e / e.sum()

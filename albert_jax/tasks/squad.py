"""SQuAD v1.1 / v2.0: JSON, doc-stride features, and answers from span logits.

Every token of a context carries the character span it came from in the
ORIGINAL context, so gold answers (character offsets) become token positions
and predicted positions become text cut from the original context, whatever
ALBERT's normalisation did (NFKD can make "½" three characters, lowercasing
"İ" two, `` becomes "). Contexts are tokenised word by word (whitespace-
separated): SentencePiece never lets a piece cross whitespace, so the ids equal
those of the whole context. Within a word, the normalisation is applied one
character at a time to remember where each normalised character came from, and
the pieces' surfaces are matched against the normalised word (an `<unk>` piece
matches whatever lies between its neighbours). In the rare word where that
match fails, each of its pieces spans the whole word.

Features follow google-research/albert and BERT: `[CLS] question [SEP] context
window [SEP]`, the question cut to `max_query_length` tokens, windows of the
context `doc_stride` tokens apart; a training answer outside the window, or no
answer (v2.0), points at [CLS] (position 0).

Predictions of the BERT-style head (`postprocess`): for every example, the
n best start and end positions of each of its windows (context tokens only, a
start only in the window where that token has the most context around it,
length <= max_answer_length), scored start + end logit; the best over all
windows wins. For v2.0, the null score is the smallest [CLS] start + end over
the windows, and `null_odds` holds null score - best span score. The original
release's SQuAD 2.0 head (`postprocess_xlnet`) ranks its start x end beam by
log-probability and takes its null odds from the answerability classifier.
Either way the answer is "" when the null odds exceed a threshold chosen on
dev (`metrics.squad_v2`'s best_f1_thresh; `score` says how this follows the
official script).

Bad input: an answer whose text is not at its `answer_start` in the context
is skipped for training (the example is dropped) and counted
(`counts['answer_not_in_context']`, logged with the question id); evaluation
keeps every question, since the official score counts them all. A question
longer than `max_query_length` tokens is cut and counted
(`counts['truncated_questions']`).
"""

import collections
import dataclasses
import json
import os
import pathlib
import re
import unicodedata
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from albert_jax import config_lib
from albert_jax.tasks import family, metrics

_WORD = re.compile(r"\S+")
_WORD_START = "\u2581"
_MAX_LOGGED = 10
_NO_SPAN_ODDS = 1e9  # null_odds of an example with no valid span at all.


@dataclasses.dataclass(frozen=True)
class Example:
  """One question.

  Attributes:
    qid: the question id (the key of predictions.json).
    question, context: the texts.
    answers: all gold answer texts (empty for an unanswerable question).
    answer_start: character offset of answers[0] in the context; -1 if none.
    is_impossible: v2.0 "no answer".
  """

  qid: str
  question: str
  context: str
  answers: tuple[str, ...]
  answer_start: int
  is_impossible: bool


def load_json(path: str | os.PathLike) -> dict[str, Any]:
  """A SQuAD JSON file, or a .zip holding one (as dev-v1.1.json.zip)."""
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"SQuAD file {path} not found.")
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      names = [n for n in archive.namelist() if n.endswith(".json")]
      if len(names) != 1:
        raise ValueError(f"{path} must hold exactly one .json file, has {names}.")
      dataset = json.loads(archive.read(names[0]).decode("utf-8"))
  else:
    dataset = json.loads(path.read_text(encoding="utf-8"))
  if "data" not in dataset:
    raise ValueError(f'{path} is not SQuAD JSON (no "data" list).')
  return dataset


def read_examples(dataset: Mapping[str, Any]) -> list[Example]:
  """The questions of a parsed SQuAD JSON, in file order."""
  examples = []
  for article in dataset["data"]:
    for paragraph in article["paragraphs"]:
      context = paragraph["context"]
      for qa in paragraph["qas"]:
        answers = qa.get("answers", [])
        impossible = bool(qa.get("is_impossible", False)) or not answers
        examples.append(
          Example(
            qid=qa["id"],
            question=qa["question"],
            context=context,
            answers=tuple(a["text"] for a in answers),
            answer_start=-1 if impossible else int(answers[0]["answer_start"]),
            is_impossible=impossible,
          )
        )
  return examples


@dataclasses.dataclass(frozen=True)
class TokenizedContext:
  """Token ids of a context and each token's [start, end) in the original text."""

  ids: np.ndarray  # int32 [n]
  starts: np.ndarray  # int32 [n], non-decreasing
  ends: np.ndarray  # int32 [n], non-decreasing; start == end for a lone "▁"


def tokenize_contexts(contexts: Sequence[str], tokenizer: Any) -> list[TokenizedContext]:
  """Tokenises contexts with character offsets (see the module docstring)."""
  words = {}
  spans = []
  for context in contexts:
    spans.append([(m.start(), m.end()) for m in _WORD.finditer(context)])
    for start, end in spans[-1]:
      words.setdefault(context[start:end], len(words))
  word_list = list(words)
  word_ids = tokenizer.encode_batch(word_list)
  word_offsets = [_piece_offsets(w, ids, tokenizer) for w, ids in zip(word_list, word_ids)]
  out = []
  for context, context_spans in zip(contexts, spans):
    ids, starts, ends = [], [], []
    for start, end in context_spans:
      w = words[context[start:end]]
      ids.extend(word_ids[w])
      starts.extend(start + s for s, _ in word_offsets[w])
      ends.extend(start + e for _, e in word_offsets[w])
    out.append(TokenizedContext(np.array(ids, np.int32), np.array(starts, np.int32), np.array(ends, np.int32)))
  return out


def _normalize_with_origin(word: str) -> tuple[str, list[int], list[int]]:
  """ALBERT's `normalize` of one word, and each output character's source span."""
  if word.isascii() and "``" not in word and "''" not in word:
    return word.lower(), list(range(len(word))), list(range(1, len(word) + 1))
  chars, starts, ends = [], [], []
  i = 0
  while i < len(word):
    if word.startswith(("``", "''"), i):
      chars.append('"')
      starts.append(i)
      ends.append(i + 2)
      i += 2
      continue
    for c in unicodedata.normalize("NFKD", word[i]):
      if not unicodedata.combining(c):
        lowered = c.lower()
        chars.append(lowered)
        starts.extend([i] * len(lowered))
        ends.extend([i + 1] * len(lowered))
    i += 1
  return "".join(chars), starts, ends


def _piece_offsets(word: str, ids: Sequence[int], tokenizer: Any) -> list[tuple[int, int]]:
  """[start, end) in `word` of each piece of `word`."""
  normalized, starts, ends = _normalize_with_origin(word)
  surfaces = [tokenizer.id_to_piece(i).replace(_WORD_START, "") for i in ids]
  bounds = None
  if "".join(surfaces) == normalized:
    cut = np.cumsum([len(s) for s in surfaces]).tolist()
    bounds = list(zip([0] + cut[:-1], cut))
  else:
    pattern = "".join("(.+?)" if i == tokenizer.unk_id else f"({re.escape(s)})" for i, s in zip(ids, surfaces))
    match = re.fullmatch(pattern, normalized, re.DOTALL)
    if match:
      bounds = [match.span(g + 1) for g in range(len(ids))]
  if bounds is None:
    return [(0, len(word))] * len(ids)
  starts = starts + [len(word)]  # A lone "▁" at the end of a word.
  return [(starts[s], ends[e - 1]) if e > s else (starts[s], starts[s]) for s, e in bounds]


@dataclasses.dataclass
class FeatureIndex:
  """What turns feature-level logits back into answers, one row per feature.

  Attributes:
    examples: the examples the features came from.
    dataset: the parsed JSON (for the official scores); None if not kept.
    example_index: int32 [F], the example of each feature.
    char_start, char_end: int32 [F, T], each context token's span in the
      original context; -1 at [CLS], question, [SEP] and padding.
    max_context: bool [F, T], True where this window gives the token its most
      context (a span may only start there).
  """

  examples: list[Example]
  dataset: Mapping[str, Any] | None
  example_index: np.ndarray
  char_start: np.ndarray
  char_end: np.ndarray
  max_context: np.ndarray


def _context_room(max_seq_length: int, query_length: int, max_query_length: int) -> int:
  """Context tokens per window after `[CLS] question [SEP]` and the final `[SEP]`."""
  room = max_seq_length - query_length - 3
  if room < 1:
    raise ValueError(
      f"max_seq_length={max_seq_length} leaves no room for the context after a {max_query_length}-token question: "
      "raise max_seq_length or lower max_query_length."
    )
  return room


def _answer_missing(example: Example, training: bool, counts: collections.Counter) -> bool:
  """Counts (and logs the first few) answers not found in their context; True when the example is dropped."""
  counts["answer_not_in_context"] += 1
  if counts["answer_not_in_context"] <= _MAX_LOGGED:
    logging.warning(
      "SQuAD question %s: answer %r is not at offset %d of its context; %s.",
      example.qid,
      example.answers[0],
      example.answer_start,
      "skipped" if training else "kept for evaluation",
    )
  return training


def make_features(
  examples: Sequence[Example],
  tokenizer: Any,
  max_seq_length: int = 384,
  doc_stride: int = 128,
  max_query_length: int = 64,
  training: bool = False,
  dataset: Mapping[str, Any] | None = None,
  counts: collections.Counter | None = None,
) -> tuple[dict[str, np.ndarray], FeatureIndex]:
  """Doc-stride features of SQuAD examples.

  Args:
    examples: the questions.
    tokenizer: an `albert_jax.tokenizer.Tokenizer`.
    max_seq_length, doc_stride, max_query_length: as in BERT/ALBERT run_squad.
    training: drop examples whose answer is not in the context (see the
      module docstring); evaluation keeps them with positions 0.
    dataset: the parsed JSON, kept in the index for `evaluate`.
    counts: updated with 'examples', 'features', 'truncated_questions',
      'answer_not_in_context', 'answer_outside_window' (training features
      whose window misses the answer; they point at [CLS]).

  Returns:
    features: input_ids, attention_mask, token_type_ids, start_positions,
      end_positions, p_mask, is_impossible (int32, [F, T] and [F]);
      positions of answers[0] (0 if none or outside the window); p_mask 1
      where no answer can start or end (all but [CLS] and the context, as the
      original's p_mask); is_impossible 1 where the positions are 0: "no
      answer in this window", the answerability label of the XLNet head.
    index: the `FeatureIndex` for `postprocess`.
  """
  counts = collections.Counter() if counts is None else counts
  examples = list(examples)
  contexts = list(dict.fromkeys(e.context for e in examples))
  tokenized = dict(zip(contexts, tokenize_contexts(contexts, tokenizer)))
  questions = tokenizer.encode_batch([e.question for e in examples])
  rows = collections.defaultdict(list)
  kept = []
  for example, query in zip(examples, questions):
    if len(query) > max_query_length:
      counts["truncated_questions"] += 1
      query = query[:max_query_length]
    context = tokenized[example.context]
    answer = _answer_tokens(example, context)
    if answer is None and not example.is_impossible and _answer_missing(example, training, counts):
      continue
    kept.append(example)
    max_doc = _context_room(max_seq_length, len(query), max_query_length)
    _windows(
      len(kept) - 1, query, context, answer, max_doc, doc_stride, max_seq_length, tokenizer, rows, counts, training
    )
  counts["examples"] += len(kept)
  counts["features"] += len(rows["input_ids"])
  features = {
    k: np.array(rows[k], np.int32)
    for k in ("input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions")
  }
  if not kept:
    features = {k: v.reshape(0, max_seq_length) if k.endswith(("ids", "mask")) else v for k, v in features.items()}
  index = FeatureIndex(
    kept,
    dataset,
    np.array(rows["example_index"], np.int32),
    np.array(rows["char_start"], np.int32).reshape(-1, max_seq_length),
    np.array(rows["char_end"], np.int32).reshape(-1, max_seq_length),
    np.array(rows["max_context"], bool).reshape(-1, max_seq_length),
  )
  candidate = (index.char_start >= 0) | (np.arange(max_seq_length) == 0)
  features["p_mask"] = (~candidate).astype(np.int32)
  features["is_impossible"] = (features["start_positions"] == 0).astype(np.int32)
  return features, index


def _answer_tokens(example: Example, context: TokenizedContext) -> tuple[int, int] | None:
  """First and last context token of answers[0], or None if it is not there."""
  if example.is_impossible:
    return None
  text, start = example.answers[0], example.answer_start
  found = example.context[start : start + len(text)]
  if start < 0 or " ".join(found.split()) != " ".join(text.split()) or not text.strip():
    return None
  end = start + len(text)
  first = int(np.searchsorted(context.ends, start, side="right"))
  last = int(np.searchsorted(context.starts, end, side="left")) - 1
  return (first, last) if first <= last else None


def _windows(
  example_index, query, context, answer, max_doc, doc_stride, max_seq_length, tokenizer, rows, counts, training
):
  """Appends the features of one example to `rows`."""
  n = len(context.ids)
  starts = [0]
  while starts[-1] + max_doc < n:
    starts.append(starts[-1] + min(max_doc, doc_stride))
  lengths = [min(max_doc, n - s) for s in starts]
  # BERT's _check_is_max_context: the window where a token is farthest from
  # an edge (plus 0.01 * window length); the first such window on ties.
  token = np.arange(n)
  scores = np.full((len(starts), n), -np.inf)
  for w, (s, length) in enumerate(zip(starts, lengths)):
    inside = slice(s, s + length)
    scores[w, inside] = np.minimum(token[inside] - s, s + length - 1 - token[inside]) + 0.01 * length
  best_window = scores.argmax(0) if n else token
  offset = len(query) + 2
  for w, (s, length) in enumerate(zip(starts, lengths)):
    ids, types = tokenizer.encode_pair(query, context.ids[s : s + length].tolist())
    pad = max_seq_length - len(ids)
    char_start = np.full(max_seq_length, -1, np.int32)
    char_end = np.full(max_seq_length, -1, np.int32)
    max_context = np.zeros(max_seq_length, bool)
    char_start[offset : offset + length] = context.starts[s : s + length]
    char_end[offset : offset + length] = context.ends[s : s + length]
    max_context[offset : offset + length] = best_window[s : s + length] == w
    start_position = end_position = 0
    if answer is not None:
      if s <= answer[0] and answer[1] < s + length:
        start_position, end_position = answer[0] - s + offset, answer[1] - s + offset
      elif training:
        counts["answer_outside_window"] += 1
    rows["input_ids"].append(ids + [0] * pad)
    rows["attention_mask"].append([1] * len(ids) + [0] * pad)
    rows["token_type_ids"].append(types + [0] * pad)
    rows["start_positions"].append(start_position)
    rows["end_positions"].append(end_position)
    rows["example_index"].append(example_index)
    rows["char_start"].append(char_start)
    rows["char_end"].append(char_end)
    rows["max_context"].append(max_context)


def postprocess(
  start_logits: Any, end_logits: Any, index: FeatureIndex, n_best_size: int = 20, max_answer_length: int = 30
) -> tuple[dict[str, str], dict[str, float]]:
  """The best non-null answer of every example, and its null odds.

  Args:
    start_logits, end_logits: [F, T], one row per feature of `index`.
    index: from `make_features`.
    n_best_size: start and end candidates per window (among context tokens).
    max_answer_length: longest answer in tokens.

  Returns:
    answers: question id -> best span text, cut from the original context
      ('' if no valid span exists).
    null_odds: question id -> null score - best span score (v2.0: larger
      means "no answer"; `_NO_SPAN_ODDS` when no valid span exists).
  """
  start_logits = np.asarray(start_logits, np.float32)
  end_logits = np.asarray(end_logits, np.float32)
  if start_logits.shape != index.char_start.shape or end_logits.shape != index.char_start.shape:
    raise ValueError(
      f"Logits {start_logits.shape} / {end_logits.shape} do not match the "
      f"features {index.char_start.shape}: pass one row per feature, in order."
    )
  best = [(-np.inf, "")] * len(index.examples)
  null = [np.inf] * len(index.examples)
  for f, e in enumerate(index.example_index):
    starts_f, ends_f = start_logits[f], end_logits[f]
    null[e] = min(null[e], float(starts_f[0] + ends_f[0]))
    context = np.flatnonzero(index.char_start[f] >= 0)
    if not len(context):
      continue
    top_s = _top(context[index.max_context[f, context]], starts_f, n_best_size)
    top_e = _top(context, ends_f, n_best_size)
    score = starts_f[top_s][:, None] + ends_f[top_e][None, :]
    length = top_e[None, :] - top_s[:, None] + 1
    nonempty = index.char_end[f, top_e][None, :] > index.char_start[f, top_s][:, None]
    score = np.where((length >= 1) & (length <= max_answer_length) & nonempty, score, -np.inf)
    if not score.size or not np.isfinite(score.max()):
      continue
    i, j = np.unravel_index(score.argmax(), score.shape)
    if score[i, j] > best[e][0]:
      text = index.examples[e].context[index.char_start[f, top_s[i]] : index.char_end[f, top_e[j]]]
      best[e] = (float(score[i, j]), text)
  answers, null_odds = {}, {}
  for example, (score, text), null_score in zip(index.examples, best, null):
    answers[example.qid] = text
    null_odds[example.qid] = null_score - score if np.isfinite(score) else _NO_SPAN_ODDS
  return answers, null_odds


# The outputs of model.AlbertForQuestionAnsweringXLNet at inference, [F, ...] for the features of a FeatureIndex.
XLNET_OUTPUTS = ("start_top_log_probs", "start_top_index", "end_top_log_probs", "end_top_index", "cls_logits")
_EMPTY_NBEST = {"text": "", "probability": 1.0, "start_log_prob": -1e6, "end_log_prob": -1e6}


def postprocess_xlnet(
  outputs: Mapping[str, Any], index: FeatureIndex, n_best_size: int = 20, max_answer_length: int = 30
) -> tuple[dict[str, str], dict[str, float], dict[str, list[dict[str, Any]]]]:
  """The original ALBERT's SQuAD 2.0 decoding (squad_utils.py accumulate_predictions_v2 + write_predictions_v2).

  In every window, each of the start_n_top x end_n_top (start, end) pairs of
  the head is a candidate when both are context tokens, the end is not before
  the start, the answer has at most `max_answer_length` tokens, and the start
  has its most context in this window (the end is not checked, as in the
  original). The candidates of all the windows of a question are ranked by
  start + end log-probability (each normalised within its window; ties keep
  window, start, end order); their texts, cut from the original context and
  stripped, are deduplicated and the first `n_best_size` kept (one '' entry
  with log-probabilities -1e6 when there is none). The answer is the first;
  the null odds are the smallest answerability logit over the windows (the
  window most sure that it holds the answer).

  Args:
    outputs: `XLNET_OUTPUTS`, one row per feature of `index`.
    index: from `make_features`.
    n_best_size: entries kept per question (it does not change the answer).
    max_answer_length: longest answer in tokens.

  Returns:
    answers: question id -> best non-null text ('' only as above).
    null_odds: question id -> the smallest answerability logit (larger: "no answer").
    nbest: question id -> [{text, probability (softmax over the entries' summed
      log-probabilities), start_log_prob, end_log_prob}], best first.
  """
  missing = [k for k in XLNET_OUTPUTS if k not in outputs]
  if missing:
    raise ValueError(f"postprocess_xlnet needs the XLNet head's outputs; {missing} are missing.")
  start_index, end_index = (np.asarray(outputs[k], np.int64) for k in ("start_top_index", "end_top_index"))
  if start_index.shape[0] != len(index.example_index) or end_index.shape[1] % max(start_index.shape[1], 1):
    raise ValueError(
      f"Outputs of {start_index.shape[0]} features with {start_index.shape[1]} starts and {end_index.shape[1]} "
      f"ends do not match the {len(index.example_index)} features: pass one row per feature, in order."
    )
  ends_per_start = end_index.shape[1] // start_index.shape[1]
  starts = np.repeat(start_index, ends_per_start, axis=1)  # [F, K*K'], start-major like end_index
  log_probs = np.repeat(np.asarray(outputs["start_top_log_probs"], np.float64), ends_per_start, axis=1)
  log_probs = np.stack([log_probs, np.asarray(outputs["end_top_log_probs"], np.float64)], -1)  # [F, K*K', 2]
  rows = np.arange(len(starts))[:, None]
  valid = (
    (index.char_start[rows, starts] >= 0)
    & (index.char_start[rows, end_index] >= 0)
    & index.max_context[rows, starts]
    & (end_index >= starts)
    & (end_index - starts + 1 <= max_answer_length)
  )
  cls_logits = np.asarray(outputs["cls_logits"], np.float32).reshape(-1)
  answers, null_odds, nbest = {}, {}, {}
  per_example = np.bincount(index.example_index, minlength=len(index.examples))
  features_of = np.split(np.argsort(index.example_index, kind="stable"), np.cumsum(per_example)[:-1])
  for example, features in zip(index.examples, features_of):
    chosen = valid[features]
    candidates = (
      np.repeat(features, chosen.shape[1]).reshape(chosen.shape)[chosen],
      starts[features][chosen],
      end_index[features][chosen],
      log_probs[features][chosen],
    )
    nbest[example.qid] = _nbest(example.context, index, *candidates, n_best_size)
    answers[example.qid] = nbest[example.qid][0]["text"]
    null_odds[example.qid] = float(cls_logits[features].min())
  return answers, null_odds, nbest


def _nbest(context, index, features, starts, ends, log_probs, n_best_size):
  """The best `n_best_size` distinct texts among the candidates, in candidate order on ties."""
  entries, seen = [], set()
  for c in np.argsort(-log_probs.sum(-1), kind="stable"):
    if len(entries) == n_best_size:
      break
    f = features[c]
    text = context[index.char_start[f, starts[c]] : index.char_end[f, ends[c]]].strip()
    if text not in seen:
      seen.add(text)
      entries.append({"text": text, "start_log_prob": float(log_probs[c, 0]), "end_log_prob": float(log_probs[c, 1])})
  if not entries:
    return [dict(_EMPTY_NBEST)]
  totals = np.array([e["start_log_prob"] + e["end_log_prob"] for e in entries])
  probabilities = np.exp(totals - totals.max())
  probabilities /= probabilities.sum()
  return [
    {
      "text": e["text"],
      "probability": float(p),
      "start_log_prob": e["start_log_prob"],
      "end_log_prob": e["end_log_prob"],
    }
    for e, p in zip(entries, probabilities)
  ]


def _top(positions: np.ndarray, logits: np.ndarray, k: int) -> np.ndarray:
  order = np.argsort(-logits[positions], kind="stable")[:k]
  return positions[order]


def apply_null_threshold(
  answers: Mapping[str, str], null_odds: Mapping[str, float], threshold: float
) -> dict[str, str]:
  """v2.0 predictions: '' where null_odds exceeds the threshold."""
  return {q: "" if null_odds[q] > threshold else a for q, a in answers.items()}


def evaluate(
  start_logits: Any,
  end_logits: Any,
  index: FeatureIndex,
  version_2: bool,
  n_best_size: int = 20,
  max_answer_length: int = 30,
  null_threshold: float | None = None,
) -> tuple[dict[str, float], dict[str, str], dict[str, float]]:
  """Official scores, predictions.json and null_odds.json contents of the BERT-style head's logits.

  Args:
    start_logits, end_logits: [F, T] for the features of `index`.
    index: from `make_features` with `dataset` set.
    version_2: SQuAD 2.0 (answerability) scoring.
    n_best_size, max_answer_length: as `postprocess`.
    null_threshold: as `score`.

  Returns:
    `score`'s scores, predictions and null odds.
  """
  _check_gold(index)
  answers, null_odds = postprocess(start_logits, end_logits, index, n_best_size, max_answer_length)
  return score(answers, null_odds, index, version_2, null_threshold)


def _check_gold(index: FeatureIndex) -> None:
  if index.dataset is None:
    raise ValueError(
      "evaluate needs the gold answers: build the features with make_features(..., dataset=load_json(path))."
    )


def score(
  answers: Mapping[str, str],
  null_odds: Mapping[str, float],
  index: FeatureIndex,
  version_2: bool,
  null_threshold: float | None = None,
) -> tuple[dict[str, float], dict[str, str], dict[str, float]]:
  """Official scores of the best non-null answers and their null odds (from either head's decoding).

  v2.0 follows the official evaluation script (evaluate-v2.0.py) where the
  original ALBERT's `evaluate_v2` departs from it: the answer is '' where the
  null odds EXCEED the threshold, the sweep's "answer iff odds <= threshold"
  (evaluate_v2 answers only below it, so the question at the threshold loses
  its answer); and the script's --na-prob-thresh cut-off (1.0, meant for
  probabilities) is not applied to these logit-scale odds (evaluate_v2 applies
  it again after thresholding, so that the exact and f1 it reports are not
  those of the predictions it writes once the threshold exceeds 1.0). exact
  and f1 are thus the official scores of the predictions returned;
  best_exact and best_f1 those of the official sweep over `answers` and
  `null_odds` (`evaluate-v2.0.py dev.json <answers> -n null_odds.json`).

  Args:
    answers, null_odds: question id -> best non-null answer, null odds.
    index: from `make_features` with `dataset` set.
    version_2: SQuAD 2.0 (answerability) scoring.
    null_threshold: v2.0: fixed null-odds threshold; None chooses the one with
      the best F1 on this set (`metrics.squad_v2`'s best_f1_thresh).

  Returns:
    scores: v1.1 exact_match and f1; v2.0 exact, f1, HasAns_/NoAns_ breakdown
      at the threshold, best_exact / best_f1 of the sweep and
      null_score_diff_threshold (the threshold used).
    predictions: question id -> answer ('' = no answer).
    null_odds: question id -> null odds ({} for v1.1).
  """
  _check_gold(index)
  if not version_2:
    return metrics.squad_v1(index.dataset, answers), dict(answers), {}
  sweep = metrics.squad_v2(index.dataset, answers, na_probs=null_odds)
  threshold = sweep["best_f1_thresh"] if null_threshold is None else null_threshold
  predictions = apply_null_threshold(answers, null_odds, threshold)
  scores = metrics.squad_v2(index.dataset, predictions)
  scores.update({k: sweep[k] for k in ("best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh")})
  scores["null_score_diff_threshold"] = float(threshold)
  return scores, predictions, dict(null_odds)


# What the official SQuAD 2.0 script (evaluate-v2.0.py with --na-prob-file) prints, in its order.
OFFICIAL_V2_KEYS = tuple(
  f"{group}{name}" for group in ("", "HasAns_", "NoAns_") for name in ("exact", "f1", "total")
) + ("best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh")
OFFICIAL_V2_FILE = "evaluate-v2.0.json"


def write_predictions(
  output_dir: str | os.PathLike,
  predictions: Mapping[str, str],
  null_odds: Mapping[str, float] | None = None,
  nbest: Mapping[str, list[dict[str, Any]]] | None = None,
  v2_scores: Mapping[str, float] | None = None,
) -> list[pathlib.Path]:
  """Writes predictions.json, and what is given of null_odds.json, nbest_predictions.json and the official v2.0
  scores (`OFFICIAL_V2_FILE`: `OFFICIAL_V2_KEYS` of `score`'s v2.0 scores), as the official scripts read them."""
  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  contents = {"predictions.json": dict(predictions)}
  if null_odds:
    contents["null_odds.json"] = {q: float(v) for q, v in null_odds.items()}
  if nbest:
    contents["nbest_predictions.json"] = dict(nbest)
  if v2_scores:
    contents[OFFICIAL_V2_FILE] = {k: v2_scores[k] for k in OFFICIAL_V2_KEYS if k in v2_scores}
  paths = []
  for name, content in contents.items():
    paths.append(output_dir / name)
    paths[-1].write_text(json.dumps(content, indent=2, ensure_ascii=False), encoding="utf-8")
  return paths


# ---------------------------------------------------------------------------
# The task family interface (`albert_jax.tasks.family`).

VERSIONS = {"squad_v1": "1.1", "squad_v2": "2.0"}  # task name -> SQuAD version
NAMES = tuple(VERSIONS)
SPAN_HEADS = {"bert": "span", "xlnet": "span_xlnet"}  # config.task.head -> TaskSpec.head


def task_spec(task_config: Any) -> family.TaskSpec:
  name = config_lib.task_name(task_config if isinstance(task_config, str) else task_config.name)
  return family.TaskSpec(name, _span_head(task_config, name), 2, "train", ("dev",), (), "f1")


def _span_head(task_config: Any, name: str) -> str:
  """The TaskSpec head of a SQuAD task: config.task.head (the release's head for the version when only named)."""
  head = config_lib.SQUAD_HEADS[name] if isinstance(task_config, str) else task_config.head
  if head not in SPAN_HEADS:
    raise ValueError(f"config.task.head={head!r}: use 'xlnet' (the original SQuAD 2.0 head) or 'bert'.")
  if head == "xlnet" and not isinstance(task_config, str):
    for field in ("start_n_top", "end_n_top"):
      if not 1 <= task_config[field] <= task_config.max_seq_length:
        raise ValueError(
          f"config.task.{field}={task_config[field]}: choose between 1 and "
          f"max_seq_length ({task_config.max_seq_length})."
        )
  return SPAN_HEADS[head]


def load_split(task_config: Any, tokenizer: Any, split: str) -> family.TaskData:
  spec = task_spec(task_config)
  path = family.file_override(task_config, split)
  if path is None:
    stem = pathlib.Path(task_config.data_dir).expanduser() / f"{split}-v{VERSIONS[spec.name]}.json"
    candidates = [stem, stem.with_name(stem.name + ".zip")]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
      raise FileNotFoundError(
        f"Neither {candidates[0]} nor {candidates[1]} exists: set config.task.data_dir, or config.task.files." + split
      )
  dataset = load_json(path)
  examples = family.first(read_examples(dataset), task_config)
  if int(task_config.max_examples) > 0:  # Score only the questions kept.
    kept = {e.qid for e in examples}
    dataset = {
      "data": [
        {
          "paragraphs": [
            {"context": p["context"], "qas": [qa for qa in p["qas"] if qa["id"] in kept]} for p in article["paragraphs"]
          ]
        }
        for article in dataset["data"]
      ]
    }
  counts = collections.Counter()
  features, index = make_features(
    examples,
    tokenizer,
    int(task_config.max_seq_length),
    int(task_config.doc_stride),
    int(task_config.max_query_length),
    training=split == spec.train_split,
    dataset=dataset,
    counts=counts,
  )
  return family.TaskData(features, split, index.examples, index, counts)


def evaluate_split(task_config: Any, outputs: Any, data: family.TaskData) -> dict[str, float]:
  return _results(task_config, outputs, data)[0]


def _answers(task_config, outputs, data):
  """(best non-null answers, null odds, nbest or None) of either span head's outputs."""
  sizes = int(task_config.n_best_size), int(task_config.max_answer_length)
  if task_spec(task_config).head == "span_xlnet":
    return postprocess_xlnet(outputs, data.index, *sizes)
  return (*postprocess(outputs["start_logits"], outputs["end_logits"], data.index, *sizes), None)


def _results(task_config, outputs, data):
  """(scores, predictions, null odds, nbest) of dev: scored with the gold answers."""
  threshold = task_config.null_score_diff_threshold
  answers, null_odds, nbest = _answers(task_config, outputs, data)
  version_2 = task_spec(task_config).name == "squad_v2"
  scores, predictions, null_odds = score(
    answers, null_odds, data.index, version_2, None if threshold is None else float(threshold)
  )
  return scores, predictions, null_odds, nbest


def write_split(task_config: Any, outputs: Any, data: family.TaskData, output_dir: str) -> list[pathlib.Path]:
  """predictions.json; v2.0 also null_odds.json and, when the threshold is chosen on this split's gold answers, the
  official scores (`OFFICIAL_V2_FILE`); the 'xlnet' head also nbest_predictions.json."""
  version_2 = task_spec(task_config).name == "squad_v2"
  threshold = task_config.null_score_diff_threshold
  if threshold is None:
    scores, predictions, null_odds, nbest = _results(task_config, outputs, data)
  else:  # A threshold from dev: no gold answers needed (test sets).
    predictions, null_odds, nbest = _answers(task_config, outputs, data)
    scores = None
    if version_2:
      predictions = apply_null_threshold(predictions, null_odds, float(threshold))
  v2_scores = scores if version_2 else None
  return write_predictions(output_dir, predictions, null_odds if version_2 else None, nbest, v2_scores)

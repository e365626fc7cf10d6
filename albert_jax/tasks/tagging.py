"""Token classification (NER, POS, chunking) of your own files: CoNLL or JSON Lines (`experiments/tag.py`).

Files (`config.task.files.train`, `.dev`, optional `.test`; local or gs://):
  * `.jsonl`: one sentence a line, `{"tokens": [...], "tags": [...]}` (the
    field names are `config.task.tokens_field`, `tags_field`).
  * anything else is CoNLL: one token a line, its columns split on
    whitespace, the token first and the tag last; blank lines between
    sentences; `-DOCSTART-` lines skipped. A test file may have the token
    column only.
Tags are whatever the train file uses (IOB1, IOB2, POS tags), sorted into the
head's `id2label`.

Each word is labelled on its first SentencePiece piece; its other pieces get
-100 (`IGNORE`), left out of the loss as in Hugging Face. A sentence whose
pieces do not fit `max_seq_length` (with [CLS] and [SEP]) is cut into
consecutive windows at word boundaries, so every word is predicted exactly
once (a single word longer than a window keeps its first pieces).

Scores (`conll_scores`): entity precision, recall and F1 computed as the
conlleval script computes them (its chunk boundaries read IOB1 and IOB2
alike), as fractions, and the accuracy over all tokens.

Predictions (`tag_<split><the input's suffix>`) are in the input's format:
CoNLL lines with the tag column holding the predicted tag (appended when the
input had none), JSON Lines records with their tags field predicted.
"""

import collections
import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from albert_jax import storage
from albert_jax.tasks import family

NAMES = ("tag",)
IGNORE = -100  # the label of pieces that are not a word's first


@dataclasses.dataclass(frozen=True)
class Sentence:
  """One sentence of a tagging file.

  Attributes:
    line: its first line in the file.
    tokens: the words.
    tags: their tags; None when the file has none (a test file).
    source: what its predictions are written from: per word the CoNLL
      columns before the tag, or the JSON Lines record.
  """

  line: int
  tokens: tuple[str, ...]
  tags: tuple[str, ...] | None
  source: Any


def read_file(path: str, tokens_field: str = "tokens", tags_field: str = "tags") -> list[Sentence]:
  """The sentences of a CoNLL or JSON Lines file (see the module docstring)."""
  text = storage.path(path).read_text(encoding="utf-8-sig")
  if pathlib.PurePath(path).suffix.lower() == ".jsonl":
    return _json_lines(path, text, tokens_field, tags_field)
  return _conll(path, text)


def _conll(path, text):
  sentences, rows, first = [], [], 0
  lines = text.splitlines()
  for number, line in enumerate([*lines, ""], 1):
    columns = line.split()
    if columns and columns[0] == "-DOCSTART-":
      continue
    if columns:
      first = first or number
      rows.append((number, columns))
      continue
    if rows:
      labelled = {len(c) > 1 for _, c in rows}
      if len(labelled) > 1:
        number = next(n for n, c in rows if len(c) == 1)
        raise ValueError(f"{path}:{number}: a token without a tag in a tagged sentence; put its tag last on the line.")
      tags = tuple(c[-1] for _, c in rows) if labelled == {True} else None
      source = tuple(tuple(c[:-1]) if tags else tuple(c) for _, c in rows)
      sentences.append(Sentence(first, tuple(c[0] for _, c in rows), tags, source))
    rows, first = [], 0
  return sentences


def _json_lines(path, text, tokens_field, tags_field):
  sentences = []
  for number, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{number}: not JSON ({e.msg}); a .jsonl file has one JSON object a line.") from None
    tokens, tags = record.get(tokens_field), record.get(tags_field)
    if not isinstance(tokens, list) or not tokens:
      raise ValueError(f"{path}:{number}: no list of words in field {tokens_field!r} (set --config.task.tokens_field).")
    if tags is not None and len(tags) != len(tokens):
      raise ValueError(f"{path}:{number}: {len(tags)} tags for {len(tokens)} tokens; give one tag per token.")
    tags = None if tags is None else tuple(str(t) for t in tags)
    sentences.append(Sentence(number, tuple(str(t) for t in tokens), tags, record))
  return sentences


def _sentences(task_config, split):
  path = family.file_override(task_config, split)
  if path is None:
    raise FileNotFoundError(f"config.task.files.{split} is not set; point it at a CoNLL or .jsonl file.")
  return path, family.read_once(read_file, path, task_config.tokens_field, task_config.tags_field)


def _tags(path: str, sentences: Sequence[Sentence]) -> tuple[str, ...]:
  tags = {t for s in sentences for t in (s.tags or ())}
  if not tags:
    raise ValueError(f"{path}:1: no tags; a train file needs a tag on every token (the last CoNLL column).")
  return tuple(sorted(tags))


def task_spec(task_config: Any) -> family.TaskSpec:
  path, sentences = _sentences(task_config, "train")
  tags = _tags(path, sentences)
  return family.TaskSpec("tag", "tagging", len(tags), "train", ("dev",), ("test",), "f1", tags)


@dataclasses.dataclass(frozen=True)
class Window:
  """Which words a feature row holds: sentence `sentence`'s words from `first`, their first pieces at `positions`."""

  sentence: int
  first: int
  positions: tuple[int, ...]


def to_features(
  sentences: Sequence[Sentence], tokenizer: Any, max_seq_length: int, tags: Sequence[str], path: str = ""
) -> tuple[dict[str, np.ndarray], list[Window]]:
  """Rows `[CLS] pieces [SEP]` of every window, labels on first pieces; and the windows (see the module docstring).

  A tag that is not in `tags` is an error naming the sentence's line.
  """
  room = max_seq_length - 2
  if room < 1:
    raise ValueError(f"max_seq_length={max_seq_length} leaves no room for words.")
  tag_ids = {t: i for i, t in enumerate(tags)}
  pieces = iter(tokenizer.encode_batch([w for s in sentences for w in s.tokens]))
  rows, windows = [], []
  for n, sentence in enumerate(sentences):
    for tag in sentence.tags or ():
      if tag not in tag_ids:
        raise ValueError(
          f"{path}:{sentence.line}: tag {tag!r} (in the sentence from this line) is not among the train file's tags "
          f"{list(tags)}; fix it, or add examples of it to the train file."
        )
    words = [(next(pieces) or [tokenizer.unk_id])[:room] for _ in sentence.tokens]
    start = 0
    while start < len(words):
      end, used = start, 0
      while end < len(words) and used + len(words[end]) <= room:
        used += len(words[end])
        end += 1
      end = max(end, start + 1)
      ids, labels, positions = [tokenizer.cls_id], [IGNORE], []
      for w in range(start, end):
        positions.append(len(ids))
        labels += [tag_ids[sentence.tags[w]] if sentence.tags else IGNORE] + [IGNORE] * (len(words[w]) - 1)
        ids += words[w]
      rows.append((ids + [tokenizer.sep_id], labels + [IGNORE]))
      windows.append(Window(n, start, tuple(positions)))
      start = end
  shape = (len(rows), max_seq_length)
  features = {
    "input_ids": np.zeros(shape, np.int32),
    "attention_mask": np.zeros(shape, np.int32),
    "token_type_ids": np.zeros(shape, np.int32),
    "label": np.full(shape, IGNORE, np.int32),
  }
  for r, (ids, labels) in enumerate(rows):
    features["input_ids"][r, : len(ids)] = ids
    features["attention_mask"][r, : len(ids)] = 1
    features["label"][r, : len(labels)] = labels
  return features, windows


def load_split(task_config: Any, tokenizer: Any, split: str) -> family.TaskData:
  tags = task_spec(task_config).label_names
  path, sentences = _sentences(task_config, split)
  sentences = family.first(sentences, task_config)
  if split != "test" and any(s.tags is None for s in sentences):
    line = next(s.line for s in sentences if s.tags is None)
    raise ValueError(f"{path}:{line}: a sentence without tags; the {split} file needs a tag on every token.")
  features, windows = to_features(sentences, tokenizer, int(task_config.max_seq_length), tags, path)
  counts = collections.Counter(sentences=len(sentences), windows=len(windows))
  return family.TaskData(features, split, sentences, windows, counts)


def predicted_tags(logits: Any, data: family.TaskData, tags: Sequence[str]) -> list[list[str]]:
  """Per sentence of `data`, the tag of every word: the argmax at its first piece."""
  best = np.asarray(logits).argmax(-1)
  out = [[""] * len(s.tokens) for s in data.examples]
  for row, window in enumerate(data.index):
    for w, position in enumerate(window.positions):
      out[window.sentence][window.first + w] = tags[int(best[row, position])]
  return out


# ---------------------------------------------------------------------------
# conlleval's chunks: a tag "B-PER" is the chunk tag "B" and the type "PER"; "O" is outside.


def _split_tag(tag: str) -> tuple[str, str]:
  prefix, dash, kind = tag.partition("-")
  return (prefix, kind) if dash else (tag, "")


def _chunk_ends(prev_tag, tag, prev_type, kind) -> bool:
  """conlleval's endOfChunk: the chunk open before this token ends before it."""
  return (
    (prev_tag in ("B", "I") and tag in ("B", "O"))
    or (prev_tag == "E" and tag in ("E", "I", "O"))
    or (prev_tag not in ("O", ".") and prev_type != kind)
    or prev_tag in ("[", "]")
  )


def _chunk_starts(prev_tag, tag, prev_type, kind) -> bool:
  """conlleval's startOfChunk: a chunk starts at this token."""
  return (
    (prev_tag in ("B", "I", "O") and tag == "B")
    or (prev_tag in ("O", "E") and tag in ("I", "E"))
    or (tag not in ("O", ".") and prev_type != kind)
    or tag in ("[", "]")
  )


def chunks(tags: Sequence[str]) -> set[tuple[int, int, str]]:
  """(first, last, type) of every chunk of one sentence, as conlleval finds them."""
  found, start = set(), None
  prev_tag, prev_type = "O", ""
  for i, (tag, kind) in enumerate([*map(_split_tag, tags), ("O", "")]):
    if start is not None and _chunk_ends(prev_tag, tag, prev_type, kind):
      found.add((start, i - 1, prev_type))
      start = None
    if _chunk_starts(prev_tag, tag, prev_type, kind):
      start = i
    prev_tag, prev_type = tag, kind
  return found


def conll_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
  """Entity precision, recall and F1 as conlleval computes them (fractions, 0 when undefined); token accuracy."""
  correct = guessed = expected = tokens = right = 0
  for gold_tags, predicted_tags_ in zip(gold, predicted, strict=True):
    gold_chunks, predicted_chunks = chunks(gold_tags), chunks(predicted_tags_)
    correct += len(gold_chunks & predicted_chunks)
    guessed += len(predicted_chunks)
    expected += len(gold_chunks)
    tokens += len(gold_tags)
    right += sum(g == p for g, p in zip(gold_tags, predicted_tags_, strict=True))
  precision = correct / guessed if guessed else 0.0
  recall = correct / expected if expected else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"precision": precision, "recall": recall, "f1": f1, "accuracy": right / max(tokens, 1)}


def evaluate_split(task_config: Any, outputs: Any, data: family.TaskData) -> dict[str, float]:
  if any(s.tags is None for s in data.examples):
    raise ValueError(f"{data.split} has untagged sentences: use write_predictions.")
  predicted = predicted_tags(outputs, data, task_spec(task_config).label_names)
  return conll_scores([s.tags for s in data.examples], predicted)


def write_split(task_config: Any, outputs: Any, data: family.TaskData, output_dir: str) -> list[pathlib.Path]:
  """tag_<split><the input's suffix>, in the input's format (see the module docstring)."""
  source = family.file_override(task_config, data.split)
  suffix = pathlib.PurePath(source).suffix or ".conll"
  predicted = predicted_tags(outputs, data, task_spec(task_config).label_names)
  out = pathlib.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"tag_{data.split}{suffix}"
  with open(path, "w", encoding="utf-8") as f:
    for sentence, tags in zip(data.examples, predicted):
      if suffix.lower() == ".jsonl":
        f.write(json.dumps({**sentence.source, task_config.tags_field: tags}, ensure_ascii=False) + "\n")
      else:
        f.write("".join(" ".join([*columns, tag]) + "\n" for columns, tag in zip(sentence.source, tags)) + "\n")
  return [path]

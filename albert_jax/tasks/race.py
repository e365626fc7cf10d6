"""RACE: four-option reading comprehension as [C=4, T] multiple-choice features.

Data: the original release (`RACE/{train,dev,test}/{high,middle}/*.txt`, each
file a JSON object with `article`, `questions`, `options`, `answers` and
`id`), or the TFDS catalog datasets `race/high` and `race/middle`.

Features follow google-research/albert `race_utils`: per option, the article
is segment A and segment B is the question with its blank "_" filled by the
option, or "question option" when there is no blank; B keeps its last
`max_qa_length` tokens, then the pair is cut longest-first to fit.

Bad input: a question without exactly four options or with an answer other
than A-D is skipped, counted (`counts['malformed_questions']`) and logged
with its file and question number. An unreadable file is an error.
"""

import collections
import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from albert_jax.tasks import family, glue

LEVELS = ("high", "middle")
NUM_CHOICES = 4
_MAX_LOGGED = 10


@dataclasses.dataclass(frozen=True)
class Example:
  """One question.

  Attributes:
    example_id: '<file id>-<question number>', e.g. 'high1.txt-0'.
    level: 'high' or 'middle' (the paper reports both).
    article, question: the texts.
    options: the four options.
    label: index of the right option; -1 when unknown.
  """

  example_id: str
  level: str
  article: str
  question: str
  options: tuple[str, ...]
  label: int


def _questions(record: dict[str, Any], level: str, source: str, counts: collections.Counter) -> list[Example]:
  examples = []
  answers = list(record.get("answers", []))
  for q, (question, options) in enumerate(zip(record["questions"], record["options"])):
    answer = answers[q] if q < len(answers) else ""
    options = tuple(str(o) for o in options)
    if len(options) != NUM_CHOICES or answer not in ("A", "B", "C", "D", ""):
      counts["malformed_questions"] += 1
      if counts["malformed_questions"] <= _MAX_LOGGED:
        logging.warning(
          "%s question %d: skipped, needs %d options and an answer in A-D (has %d options, answer %r).",
          source,
          q,
          NUM_CHOICES,
          len(options),
          answer,
        )
      continue
    examples.append(
      Example(
        f"{record.get('id', source)}-{q}",
        level,
        record["article"],
        question,
        options,
        ord(answer) - ord("A") if answer else -1,
      )
    )
  return examples


def read_dir(
  data_dir: str | os.PathLike, split: str, levels: Sequence[str] = LEVELS, counts: collections.Counter | None = None
) -> list[Example]:
  """Questions of `split` ('train', 'dev', 'test') from the original folders.

  Args:
    data_dir: the RACE folder (holding train/, dev/, test/).
    split: the split.
    levels: which of 'high', 'middle'.
    counts: updated with 'examples' and 'malformed_questions'.

  Returns:
    The questions, level by level, files in name order.
  """
  counts = collections.Counter() if counts is None else counts
  examples = []
  for level in levels:
    folder = pathlib.Path(data_dir).expanduser() / split / level
    if not folder.is_dir():
      raise FileNotFoundError(
        f"{folder} not found: point data_dir at the RACE folder "
        "holding {train,dev,test}/{high,middle}/*.txt, or use "
        "the TFDS source race/high, race/middle."
      )
    for path in sorted(folder.glob("*.txt")):
      try:
        record = json.loads(path.read_text(encoding="utf-8"))
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a RACE JSON file: {e}") from None
      record.setdefault("id", path.name)
      examples.extend(_questions(record, level, str(path), counts))
  counts["examples"] += len(examples)
  return examples


def read_tfds(
  split: str,
  levels: Sequence[str] = LEVELS,
  data_dir: str | None = None,
  download: bool = True,
  counts: collections.Counter | None = None,
) -> list[Example]:
  """Questions of `split` from the TFDS datasets race/<level> (no TensorFlow)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  counts = collections.Counter() if counts is None else counts
  examples = []
  for level in levels:
    source = tfds.data_source(
      f"race/{level}", split=split, data_dir=data_dir, download=download, builder_kwargs={"file_format": "array_record"}
    )
    for i in range(len(source)):
      row = source[i]
      record = {
        "id": _text(row["example_id"]),
        "article": _text(row["article"]),
        "questions": [_text(q) for q in row["questions"]],
        "options": [[_text(o) for o in opts] for opts in row["options"]],
        "answers": [_text(a) for a in row["answers"]],
      }
      examples.extend(_questions(record, level, f"race/{level} {split} {record['id']}", counts))
  counts["examples"] += len(examples)
  return examples


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _option_text(question: str, option: str) -> str:
  return question.replace("_", option) if "_" in question else f"{question} {option}"


def to_features(
  examples: Sequence[Example],
  tokenizer: Any,
  max_seq_length: int = 512,
  max_qa_length: int = 128,
  counts: collections.Counter | None = None,
) -> dict[str, np.ndarray]:
  """Model inputs [N, 4, T] and labels [N].

  Args:
    examples: the questions.
    tokenizer: an `albert_jax.tokenizer.Tokenizer`.
    max_seq_length: T.
    max_qa_length: question+option tokens kept (the last ones).
    counts: updated with 'truncated' (option sequences that did not fit).

  Returns:
    input_ids, attention_mask, token_type_ids: int32 [N, 4, T]; label: int32
    [N] (-1 where unknown).
  """
  counts = collections.Counter() if counts is None else counts
  articles = list(dict.fromkeys(e.article for e in examples))
  article_ids = dict(zip(articles, tokenizer.encode_batch(articles)))
  qa_ids = iter(tokenizer.encode_batch([_option_text(e.question, o) for e in examples for o in e.options]))
  shape = (len(examples), NUM_CHOICES, max_seq_length)
  input_ids = np.zeros(shape, np.int32)
  token_type_ids = np.zeros(shape, np.int32)
  attention_mask = np.zeros(shape, np.int32)
  for n, example in enumerate(examples):
    for c in range(NUM_CHOICES):
      qa = next(qa_ids)[-max_qa_length:]
      a = article_ids[example.article]
      if len(a) + len(qa) > max_seq_length - 3:
        counts["truncated"] += 1
        a, qa = glue.truncate_pair(a, qa, max_seq_length - 3)
      ids, types = tokenizer.encode_pair(a, qa)
      input_ids[n, c, : len(ids)] = ids
      token_type_ids[n, c, : len(ids)] = types
      attention_mask[n, c, : len(ids)] = 1
  label = np.array([e.label for e in examples], np.int32)
  return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids, "label": label}


def evaluate(logits: Any, examples: Sequence[Example]) -> dict[str, float]:
  """Accuracy overall and per level (accuracy_high, accuracy_middle)."""
  predictions = np.asarray(logits).argmax(-1)
  labels = np.array([e.label for e in examples])
  levels = np.array([e.level for e in examples])
  if len(predictions) != len(labels):
    raise ValueError(f"{len(predictions)} predictions for {len(labels)} questions.")
  scores = {"accuracy": float(np.mean(predictions == labels))}
  for level in LEVELS:
    if (levels == level).any():
      scores[f"accuracy_{level}"] = float(np.mean(predictions[levels == level] == labels[levels == level]))
  return scores


# ---------------------------------------------------------------------------
# The task family interface (`albert_jax.tasks.family`).

NAMES = ("race",)
LETTERS = "ABCD"


def task_spec(task_config: Any) -> family.TaskSpec:
  return family.TaskSpec(
    "race", "multiple_choice", NUM_CHOICES, "train", ("dev",), ("test",), "accuracy", tuple(LETTERS)
  )


def load_split(task_config: Any, tokenizer: Any, split: str) -> family.TaskData:
  counts = collections.Counter()
  levels = tuple(task_config.levels)
  if task_config.source == "tfds":
    examples = read_tfds(split, levels, task_config.tfds_data_dir or None, counts=counts)
  else:
    examples = read_dir(family.file_override(task_config, split) or task_config.data_dir, split, levels, counts)
  examples = family.first(examples, task_config)
  max_seq_length, max_qa_length = int(task_config.max_seq_length), int(task_config.max_qa_length)
  features = to_features(examples, tokenizer, max_seq_length, max_qa_length, counts)
  return family.TaskData(features, split, examples, counts=counts)


def evaluate_split(task_config: Any, outputs: Any, data: family.TaskData) -> dict[str, float]:
  return evaluate(outputs, data.examples)


def write_split(task_config: Any, outputs: Any, data: family.TaskData, output_dir: str) -> list[pathlib.Path]:
  """race_<split>.tsv with `example_id\\tprediction` (A-D)."""
  out = pathlib.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"race_{data.split}.tsv"
  with open(path, "w", encoding="utf-8") as f:
    f.write("example_id\tprediction\n")
    for example, p in zip(data.examples, np.asarray(outputs).argmax(-1)):
      f.write(f"{example.example_id}\t{LETTERS[int(p)]}\n")
  return [path]

"""Your own labelled files: classification or regression of one text or a pair (`experiments/classify.py`).

Files (`config.task.files.train`, `.dev`, optional `.test`; local or gs://)
are chosen by their name: `.csv` and `.tsv` with a header row (CSV quoting
applies to .csv; a .tsv is split on tabs only, as GLUE's files), `.jsonl`
with one JSON object a line. `config.task.text_fields` names one or two text
columns, `config.task.label_field` the label.

Labels: strings and integers are classes, the list fixed from the train
file and sorted (integers by value), kept as the head's `id2label`. Numbers
with decimals mean regression (`config.task.problem` '' detects it and says
so in the log; 'classification' or 'regression' decides). Inputs are
`[CLS] a [SEP] (b [SEP])`, cut longest-first, as GLUE's (`glue.to_features`).

Bad input is an error naming the file and its line: a missing column, an
empty text, a dev or test label the train file never had, a regression label
that is not a number, a file that is not CSV, TSV or JSON Lines. A test file
may leave the label out (column absent, or empty).

Predictions (`classify_<split>.jsonl`, one line per example): its line in the
input file and, as Hugging Face's text-classification pipeline gives them,
`label` (the class name) and `score` (its probability); regression: `score`.
"""

import collections
import csv
import io
import json
import math
import pathlib
import re
from typing import Any

import numpy as np
from absl import logging

from albert_jax import storage
from albert_jax.tasks import family, glue, metrics

NAMES = ("classify",)
FORMATS = {".csv": "CSV", ".tsv": "TSV", ".jsonl": "JSON Lines"}
_INTEGER = re.compile(r"[+-]?\d+")


def text_fields(task_config: Any) -> tuple[str, ...]:
  """config.task.text_fields ('a' or 'a,b') as a tuple of one or two names."""
  fields = tuple(f.strip() for f in str(task_config.text_fields).split(",") if f.strip())
  if len(fields) not in (1, 2):
    raise ValueError(f"config.task.text_fields={task_config.text_fields!r}: name one text column, or two ('a,b').")
  return fields


def read_records(path: str) -> list[tuple[int, dict[str, Any]]]:
  """(line number, record) of every row of a CSV, TSV or JSON Lines file; the header is line 1 of a CSV/TSV.

  A record maps column names to values: strings (CSV, TSV), or JSON values.
  """
  suffix = pathlib.PurePath(path).suffix.lower()
  if suffix not in FORMATS:
    raise ValueError(
      f"{path}:1: not a CSV, TSV or JSON Lines file by its name; name it .csv, .tsv or .jsonl (with that content)."
    )
  text = storage.path(path).read_text(encoding="utf-8-sig")
  if suffix == ".jsonl":
    return list(_json_lines(path, text))
  options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
  reader = csv.reader(io.StringIO(text, newline=""), **options)
  header = next(reader, None)
  if not header:
    raise ValueError(f"{path}:1: no header row; the first line names the columns.")
  records, line = [], reader.line_num + 1
  for row in reader:
    if row:  # blank lines are skipped
      if len(row) != len(header):
        raise ValueError(f"{path}:{line}: {len(row)} {FORMATS[suffix]} fields where the header has {len(header)}.")
      records.append((line, dict(zip(header, row))))
    line = reader.line_num + 1
  return records


def _json_lines(path, text):
  for line_number, line in enumerate(text.splitlines(), 1):
    if line.strip():
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(
          f"{path}:{line_number}: not JSON ({e.msg}); a .jsonl file has one JSON object a line."
        ) from None
      if not isinstance(record, dict):
        raise ValueError(f"{path}:{line_number}: a JSON {type(record).__name__}, not an object with named fields.")
      yield line_number, record


def _missing(path, line, field, record, flag):
  """The error of a column that is not there: a CSV/TSV header's (line 1), or a JSON Lines record's."""
  if pathlib.PurePath(path).suffix.lower() != ".jsonl":
    line = 1
  raise ValueError(
    f"{path}:{line}: no column {field!r} (there are {', '.join(record)}); name the right one with {flag}."
  )


def _label_text(value: Any) -> str:
  """A value as the text it names: a string as it is, null as empty, other JSON values as JSON writes them."""
  if value is None:
    return ""
  return value if isinstance(value, str) else json.dumps(value)


def _is_decimal(value: Any) -> bool:
  """A number written with decimals (3.5, '3.5', '1e-3'): what makes a label a regression target."""
  if isinstance(value, bool):
    return False
  if isinstance(value, float):
    return True
  return isinstance(value, str) and not _INTEGER.fullmatch(value.strip()) and _number(value) is not None


def _number(value: Any) -> float | None:
  if isinstance(value, bool):
    return None
  try:
    number = float(value)
  except (TypeError, ValueError):
    return None
  return number if math.isfinite(number) else None


def _files(task_config, split):
  path = family.file_override(task_config, split)
  if path is None:
    raise FileNotFoundError(f"config.task.files.{split} is not set; point it at a .csv, .tsv or .jsonl file.")
  return path


def _labels(train: str, label_field: str, problem: str) -> tuple[str, tuple[str, ...] | None]:
  """(problem, sorted class names or None) of the train file."""
  raw = []
  for line, record in family.read_once(read_records, train):
    if label_field not in record:
      _missing(train, line, label_field, record, "--config.task.label_field")
    value = record[label_field]
    if _label_text(value).strip() == "":
      raise ValueError(f"{train}:{line}: empty label in column {label_field!r}; every train row needs one.")
    raw.append((line, value))
  if not raw:
    raise ValueError(f"{train}: no rows; a train file needs at least one labelled example.")
  if problem not in ("", "classification", "regression"):
    raise ValueError(f"config.task.problem={problem!r}: use 'classification', 'regression' or '' (detect).")
  if not problem:
    decimal = next(((line, v) for line, v in raw if _is_decimal(v)), None)
    numbers = all(_number(v) is not None for _, v in raw)
    problem = "regression" if decimal and numbers else "classification"
    if problem == "regression":
      logging.info(
        "config.task.problem: regression, since the train labels are numbers with decimals (%s:%d has %s); "
        "set --config.task.problem=classification to make them classes.",
        train,
        decimal[0],
        _label_text(decimal[1]),
      )
    else:
      logging.info("config.task.problem: classification (set --config.task.problem=regression for scores).")
  if problem == "regression":
    for line, value in raw:
      _regression_label(value, train, line, label_field)
    return problem, None
  names = {_label_text(v).strip() for _, v in raw}
  if all(_INTEGER.fullmatch(n) for n in names):
    return problem, tuple(sorted(names, key=int))
  return problem, tuple(sorted(names))


def _regression_label(value, path, line, field) -> float:
  number = _number(value)
  if number is None:
    raise ValueError(
      f"{path}:{line}: regression label {_label_text(value)!r} in column {field!r} is not a number; fix the line, "
      "or set --config.task.problem=classification if the labels are classes."
    )
  return number


def problem_and_labels(task_config: Any) -> tuple[str, tuple[str, ...] | None]:
  """('classification', the sorted class names) or ('regression', None), from the train file."""
  return family.read_once(_labels, _files(task_config, "train"), task_config.label_field, task_config.problem)


def task_spec(task_config: Any) -> family.TaskSpec:
  problem, names = problem_and_labels(task_config)
  if problem == "regression":
    return family.TaskSpec(
      "classify", "regression", 1, "train", ("dev",), ("test",), "pearson", (task_config.label_field,)
    )
  return family.TaskSpec("classify", "classification", len(names), "train", ("dev",), ("test",), "accuracy", names)


def load_split(task_config: Any, tokenizer: Any, split: str) -> family.TaskData:
  path = _files(task_config, split)
  problem, names = problem_and_labels(task_config)
  fields = text_fields(task_config)
  label_field = task_config.label_field
  examples = []
  for line, record in family.read_once(read_records, path):
    texts = []
    for field in fields:
      if field not in record:
        _missing(path, line, field, record, "--config.task.text_fields")
      value = record[field]
      if not _label_text(value).strip():
        raise ValueError(f"{path}:{line}: empty text in column {field!r}; every row needs its text.")
      texts.append(_label_text(value))
    if label_field not in record and split != "test":
      _missing(path, line, label_field, record, "--config.task.label_field")
    value = record.get(label_field)
    if _label_text(value).strip() == "":
      if split != "test":
        raise ValueError(f"{path}:{line}: empty label in column {label_field!r}; the {split} file needs one a row.")
      label = None
    elif problem == "regression":
      label = _regression_label(value, path, line, label_field)
    else:
      name = _label_text(value).strip()
      if name not in names:
        raise ValueError(
          f"{path}:{line}: label {name!r} is not one of the train file's labels {list(names)}; fix the line, or "
          "add examples of it to the train file."
        )
      label = names.index(name)
    examples.append(glue.Example(str(line), texts[0], texts[1] if len(texts) == 2 else None, label))
  if not examples:
    raise ValueError(f"{path}: no rows.")
  examples = family.first(examples, task_config)
  counts = collections.Counter(examples=len(examples))
  features = glue.to_features(examples, tokenizer, int(task_config.max_seq_length), problem == "regression", counts)
  return family.TaskData(features, split, examples, counts=counts)


def scores(problem: str, num_labels: int, predictions: Any, labels: Any) -> dict[str, float]:
  """Classification: accuracy and macro F1, plus MCC for two classes; regression: Pearson and Spearman."""
  if problem == "regression":
    return {"pearson": metrics.pearson(predictions, labels), "spearman": metrics.spearman(predictions, labels)}
  out = {"accuracy": metrics.accuracy(predictions, labels), "macro_f1": metrics.macro_f1(predictions, labels)}
  if num_labels == 2:
    out["matthews_corr"] = metrics.matthews_corrcoef(predictions, labels)
  return out


def evaluate_split(task_config: Any, outputs: Any, data: family.TaskData) -> dict[str, float]:
  spec = task_spec(task_config)
  outputs, labels = np.asarray(outputs), data.features["label"]
  if (np.isnan(labels) if spec.head == "regression" else labels < 0).any():
    raise ValueError(f"{data.split} has unlabelled rows: use write_predictions.")
  predictions = outputs.reshape(-1) if spec.head == "regression" else outputs.argmax(-1)
  return scores(spec.head, spec.num_labels, predictions, labels)


def write_split(task_config: Any, outputs: Any, data: family.TaskData, output_dir: str) -> list[pathlib.Path]:
  """classify_<split>.jsonl (see the module docstring)."""
  spec = task_spec(task_config)
  out = pathlib.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"classify_{data.split}.jsonl"
  outputs = np.asarray(outputs, np.float64)
  with open(path, "w", encoding="utf-8") as f:
    for example, row in zip(data.examples, outputs):
      if spec.head == "regression":
        record = {"line": int(example.index), "score": float(row.reshape(-1)[0])}
      else:
        probabilities = np.exp(row - row.max())
        probabilities /= probabilities.sum()
        best = int(row.argmax())
        record = {"line": int(example.index), "label": spec.label_names[best], "score": float(probabilities[best])}
      f.write(json.dumps(record) + "\n")
  return [path]

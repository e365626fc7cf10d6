"""GLUE: the nine tasks, their data (original TSVs or TFDS) and model features.

`TASKS` holds, per task, where its fields are in the original GLUE release
(https://gluebenchmark.com), its labels and its TFDS catalog twin
`glue/<task>`; the fine-tuning settings are `config_lib.RECIPES`.

Inputs become `[CLS] A [SEP] B [SEP]` (`[CLS] A [SEP]` for single sentences)
with ALBERT's tokenizer, truncated at the end of the longer segment first
(`truncate_pair`: Hugging Face's `longest_first`).

Bad input, decided per case:
  * A line with the wrong number of tab-separated columns is skipped, counted
    (`counts['malformed_lines']`) and logged with its file and line number.
    The original GLUE QQP and MNLI files contain a few such lines and the
    original run_classifier skipped them too.
  * A label outside the task's label set (or an STS-B score that is not a
    number) is an error naming file, line and the labels expected: it means
    the file belongs to another task or is corrupt, and dropping rows would
    silently change the dev-set metrics.
  * A pair longer than the sequence is truncated and counted
    (`counts['truncated']`).
"""

import collections
import dataclasses
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from albert_jax.tasks import family, metrics

_MAX_LOGGED = 10  # Malformed lines logged one by one per file; then a summary.


@dataclasses.dataclass(frozen=True)
class Columns:
  """Where one TSV file keeps its fields: 0-based, negative from the end."""

  text_a: int
  text_b: int | None = None
  label: int | None = None  # None: unlabelled (test files).
  index: int | None = None  # None: the row number is the index.
  header: bool = True
  num_columns: int | None = None  # None: as many as the header has.


@dataclasses.dataclass(frozen=True)
class Example:
  """One GLUE row.

  Attributes:
    index: what the submission file keys on (the test file's index column),
      else the row number.
    text_a, text_b: the sentence(s); text_b is None for single-sentence tasks.
    label: the class id (position in `GlueTask.labels`), the STS-B score, or
      None when the split has no labels.
  """

  index: str
  text_a: str
  text_b: str | None
  label: int | float | None


@dataclasses.dataclass(frozen=True)
class GlueTask:
  """Everything task-specific about one GLUE task."""

  name: str
  dirname: str  # The task's folder in the GLUE release.
  labels: tuple[str, ...] | None  # Label strings as in the TSVs; None: regression.
  files: Mapping[str, str]  # split -> file name.
  columns: Mapping[str, Columns]  # split -> layout.
  submission_files: Mapping[str, str]  # test split -> GLUE submission file name.
  tfds_splits: Mapping[str, str]  # split -> TFDS split.
  tfds_text: tuple[str, str | None]  # TFDS feature names of text_a, text_b.
  tfds_labels: tuple[str, ...] | None  # TFDS ClassLabel names, in `labels` order.

  @property
  def is_regression(self) -> bool:
    return self.labels is None

  @property
  def num_labels(self) -> int:
    """Outputs of the classifier head (1 for regression)."""
    return 1 if self.labels is None else len(self.labels)

  @property
  def is_pair(self) -> bool:
    return self.tfds_text[1] is not None

  @property
  def eval_splits(self) -> tuple[str, ...]:
    return tuple(s for s in self.files if s.startswith("dev"))

  @property
  def test_splits(self) -> tuple[str, ...]:
    return tuple(self.submission_files)

  def check_split(self, split: str) -> None:
    if split not in self.files:
      raise ValueError(f"GLUE {self.name} has no split {split!r}; use one of {', '.join(self.files)}.")


def _task(name, dirname, labels, train, test, tfds_text, tfds_labels, extra_dev=None):
  """Builds a task whose train and dev files share one layout."""
  if extra_dev is None:
    files = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
    columns = {"train": train, "dev": train, "test": test}
    submission = {"test": f"{dirname}.tsv"}
    tfds_splits = {"train": "train", "dev": "validation", "test": "test"}
  else:  # MNLI: matched and mismatched dev and test sets.
    files = {"train": "train.tsv"}
    columns = {"train": train}
    submission, tfds_splits = {}, {"train": "train"}
    for kind, short in extra_dev:
      files[f"dev_{kind}"] = f"dev_{kind}.tsv"
      files[f"test_{kind}"] = f"test_{kind}.tsv"
      columns[f"dev_{kind}"], columns[f"test_{kind}"] = train, test
      submission[f"test_{kind}"] = f"{dirname}-{short}.tsv"
      tfds_splits[f"dev_{kind}"] = f"validation_{kind}"
      tfds_splits[f"test_{kind}"] = f"test_{kind}"
  return GlueTask(name, dirname, labels, files, columns, submission, tfds_splits, tfds_text, tfds_labels)


_BINARY = ("0", "1")
_ENTAILMENT = ("entailment", "not_entailment")
TASKS: dict[str, GlueTask] = {
  t.name: t
  for t in (
    _task(
      "cola",
      "CoLA",
      _BINARY,
      Columns(3, label=1, header=False, num_columns=4),
      Columns(1, index=0),
      ("sentence", None),
      ("unacceptable", "acceptable"),
    ),
    _task(
      "sst2", "SST-2", _BINARY, Columns(0, label=1), Columns(1, index=0), ("sentence", None), ("negative", "positive")
    ),
    _task(
      "mrpc",
      "MRPC",
      _BINARY,
      Columns(3, 4, label=0),
      Columns(3, 4, index=0),
      ("sentence1", "sentence2"),
      ("not_equivalent", "equivalent"),
    ),
    _task(
      "stsb", "STS-B", None, Columns(7, 8, label=9, index=0), Columns(7, 8, index=0), ("sentence1", "sentence2"), None
    ),
    _task(
      "qqp",
      "QQP",
      _BINARY,
      Columns(3, 4, label=5, index=0),
      Columns(1, 2, index=0),
      ("question1", "question2"),
      ("not_duplicate", "duplicate"),
    ),
    _task(
      "mnli",
      "MNLI",
      ("contradiction", "entailment", "neutral"),
      Columns(8, 9, label=-1, index=0),
      Columns(8, 9, index=0),
      ("premise", "hypothesis"),
      ("contradiction", "entailment", "neutral"),
      extra_dev=(("matched", "m"), ("mismatched", "mm")),
    ),
    _task(
      "qnli",
      "QNLI",
      _ENTAILMENT,
      Columns(1, 2, label=3, index=0),
      Columns(1, 2, index=0),
      ("question", "sentence"),
      _ENTAILMENT,
    ),
    _task(
      "rte",
      "RTE",
      _ENTAILMENT,
      Columns(1, 2, label=3, index=0),
      Columns(1, 2, index=0),
      ("sentence1", "sentence2"),
      _ENTAILMENT,
    ),
    _task(
      "wnli",
      "WNLI",
      _BINARY,
      Columns(1, 2, label=3, index=0),
      Columns(1, 2, index=0),
      ("sentence1", "sentence2"),
      ("not_entailment", "entailment"),
    ),
  )
}


def get_task(name: str) -> GlueTask:
  """The task called `name` ('sst2', 'SST-2', 'sts-b', ... all work)."""
  key = name.lower().replace("-", "").replace("_", "")
  if key not in TASKS:
    raise ValueError(f"Unknown GLUE task {name!r}; use one of {', '.join(TASKS)}.")
  return TASKS[key]


def task_file(task: GlueTask, data_dir: str | os.PathLike, split: str) -> pathlib.Path:
  """The TSV of `split` in `data_dir`: the task folder or the GLUE root above it."""
  task.check_split(split)
  data_dir = pathlib.Path(data_dir).expanduser()
  if (data_dir / task.dirname).is_dir():
    data_dir = data_dir / task.dirname
  path = data_dir / task.files[split]
  if not path.is_file():
    raise FileNotFoundError(
      f"{path} not found: point data_dir at the GLUE {task.dirname} folder "
      f"(holding {', '.join(task.files.values())}) or at the GLUE root, or "
      f"use the TFDS source glue/{task.name}."
    )
  return path


def read_tsv(
  task: GlueTask, path: str | os.PathLike, split: str, counts: collections.Counter | None = None
) -> list[Example]:
  """Reads one original GLUE TSV file of `task` (see the module docstring).

  Fields are split on tabs only: GLUE text has unbalanced quotes, so no CSV
  quoting applies. A UTF-8 BOM (MRPC) is ignored.

  Args:
    task: the task.
    path: the file.
    split: its split ('train', 'dev', 'test', MNLI 'dev_matched', ...),
      which picks the column layout.
    counts: updated with 'examples' and 'malformed_lines'.

  Returns:
    The examples in file order.
  """
  task.check_split(split)
  columns = task.columns[split]
  counts = collections.Counter() if counts is None else counts
  examples, malformed = [], 0
  with open(path, encoding="utf-8-sig", newline="\n") as f:
    num_columns = columns.num_columns
    if columns.header:
      num_columns = num_columns or len(f.readline().rstrip("\r\n").split("\t"))
    first_line = 2 if columns.header else 1
    for line_number, line in enumerate(f, first_line):
      fields = line.rstrip("\r\n").split("\t")
      if len(fields) != num_columns:
        malformed += 1
        if malformed <= _MAX_LOGGED:
          logging.warning(
            "%s:%d: skipped, %d tab-separated columns instead of %d.", path, line_number, len(fields), num_columns
          )
        continue
      examples.append(
        Example(
          index=(fields[columns.index] if columns.index is not None else str(len(examples))),
          text_a=fields[columns.text_a],
          text_b=None if columns.text_b is None else fields[columns.text_b],
          label=(None if columns.label is None else _parse_label(task, fields[columns.label], path, line_number)),
        )
      )
  if malformed:
    logging.warning("%s: skipped %d malformed line(s) of %d.", path, malformed, malformed + len(examples))
  counts["examples"] += len(examples)
  counts["malformed_lines"] += malformed
  return examples


def _parse_label(task: GlueTask, text: str, path, line_number) -> int | float:
  text = text.strip()
  if task.labels is None:
    try:
      score = float(text)
    except ValueError:
      score = math.nan
    if not math.isfinite(score):
      raise ValueError(
        f"{path}:{line_number}: {task.name} score {text!r} is not a "
        "number; fix the line or check the file belongs to this task."
      )
    return score
  if text not in task.labels:
    raise ValueError(
      f"{path}:{line_number}: label {text!r} is not one of "
      f"{list(task.labels)} for GLUE {task.name}; fix the line or "
      "check the file belongs to this task."
    )
  return task.labels.index(text)


def read_tfds(task: GlueTask, split: str, data_dir: str | None = None, download: bool = True) -> list[Example]:
  """Reads `split` of the TFDS catalog dataset `glue/<task>` (no TensorFlow).

  TFDS numbers some labels differently from the TSVs (MNLI: entailment,
  neutral, contradiction); they are mapped by name onto `task.labels`.
  TFDS test labels (-1) become None.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  task.check_split(split)
  source = tfds.data_source(
    f"glue/{task.name}",
    split=task.tfds_splits[split],
    data_dir=data_dir,
    download=download,
    builder_kwargs={"file_format": "array_record"},
  )
  key_a, key_b = task.tfds_text
  examples = []
  for row in (source[i] for i in range(len(source))):
    label = row["label"]
    if task.is_regression:
      label = float(label)
      label = None if label < 0 else label
    else:
      label = int(label)
      if label >= len(task.labels):
        raise ValueError(
          f"glue/{task.name} {split}: label {label} outside {list(task.tfds_labels)}; is the TFDS version newer?"
        )
      label = None if label < 0 else task.labels.index(task.tfds_labels[label])
    examples.append(
      Example(str(int(row["idx"])), _text(row[key_a]), None if key_b is None else _text(row[key_b]), label)
    )
  return examples


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def truncate_pair(a: list[int], b: list[int] | None, max_tokens: int) -> tuple[list[int], list[int] | None]:
  """Cuts the ends of the segments so that together they fit `max_tokens`.

  `longest_first` as Hugging Face tokenizers computes it: only the longer
  segment is cut while the shorter fits in half the budget; otherwise the
  shorter keeps half (rounded down) and the longer the rest. This is BERT's
  `_truncate_seq_pair` (one token at a time from the longer) except on ties,
  where BERT gives A the extra token and this gives it to B.
  """
  if b is None:
    return a[:max_tokens], None
  if len(a) + len(b) <= max_tokens:
    return a, b
  swap = len(a) > len(b)
  shorter = len(b) if swap else len(a)
  if 2 * shorter > max_tokens:
    shorter = max_tokens // 2
  longer = max_tokens - shorter
  len_a, len_b = (longer, shorter) if swap else (shorter, longer)
  return a[:len_a], b[:len_b]


def to_features(
  examples: Sequence[Example],
  tokenizer: Any,
  max_seq_length: int,
  regression: bool = False,
  counts: collections.Counter | None = None,
) -> dict[str, np.ndarray]:
  """Fixed-length model inputs and labels, one row per example.

  Args:
    examples: the examples (pairs when text_b is set).
    tokenizer: an `albert_jax.tokenizer.Tokenizer`.
    max_seq_length: length of every row, special tokens included.
    regression: float labels (STS-B) instead of class ids.
    counts: updated with 'truncated' (examples that did not fit).

  Returns:
    input_ids, attention_mask, token_type_ids: int32 [N, max_seq_length],
    zero-padded; label: int32 [N] (-1 where unlabelled) or float32 [N] (NaN
    where unlabelled) for regression.
  """
  counts = collections.Counter() if counts is None else counts
  a_ids = tokenizer.encode_batch([e.text_a for e in examples])
  has_b = [e.text_b is not None for e in examples]
  b_ids = iter(tokenizer.encode_batch([e.text_b for e in examples if e.text_b is not None]))
  n = len(examples)
  input_ids = np.zeros((n, max_seq_length), np.int32)
  token_type_ids = np.zeros((n, max_seq_length), np.int32)
  attention_mask = np.zeros((n, max_seq_length), np.int32)
  for row, (a, pair) in enumerate(zip(a_ids, has_b)):
    b = next(b_ids) if pair else None
    budget = max_seq_length - (3 if pair else 2)
    if budget < (2 if pair else 1):
      raise ValueError(f"max_seq_length={max_seq_length} leaves no room for text.")
    total = len(a) + (len(b) if pair else 0)
    if total > budget:
      counts["truncated"] += 1
      a, b = truncate_pair(a, b, budget)
    ids, types = tokenizer.encode_pair(a, b)
    input_ids[row, : len(ids)] = ids
    token_type_ids[row, : len(ids)] = types
    attention_mask[row, : len(ids)] = 1
  if regression:
    label = np.array([np.nan if e.label is None else e.label for e in examples], np.float32)
  else:
    label = np.array([-1 if e.label is None else e.label for e in examples], np.int32)
  return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids, "label": label}


def prediction_strings(task: GlueTask, predictions: Any) -> list[str]:
  """Predictions as GLUE's server expects them.

  Args:
    task: the task.
    predictions: class ids [N], logits [N, C], or STS-B scores [N] / [N, 1].

  Returns:
    Label strings ('0'/'1', 'entailment', ...), or STS-B scores clipped to
    [0, 5] with three decimals.
  """
  predictions = np.asarray(predictions)
  if task.is_regression:
    return [f"{s:.3f}" for s in np.clip(predictions.reshape(-1), 0.0, 5.0)]
  if predictions.ndim == 2:
    predictions = predictions.argmax(-1)
  return [task.labels[int(p)] for p in predictions]


def write_submission(
  task: GlueTask, split: str, examples: Sequence[Example], predictions: Any, output_dir: str | os.PathLike
) -> pathlib.Path:
  """Writes GLUE's `index\\tprediction` file (`SST-2.tsv`, `MNLI-m.tsv`, ...).

  Args:
    task: the task.
    split: a test split of the task ('test', 'test_matched', ...).
    examples: the examples predicted, in order (their `index` is written).
    predictions: one per example, as `prediction_strings` takes them.
    output_dir: the folder; created if needed.

  Returns:
    The file written.
  """
  if split not in task.submission_files:
    raise ValueError(f"GLUE {task.name} submissions are for {', '.join(task.submission_files)}, not {split!r}.")
  strings = prediction_strings(task, predictions)
  if len(strings) != len(examples):
    raise ValueError(f"{len(strings)} predictions for {len(examples)} examples.")
  path = pathlib.Path(output_dir) / task.submission_files[split]
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write("index\tprediction\n")
    for example, prediction in zip(examples, strings):
      f.write(f"{example.index}\t{prediction}\n")
  return path


# ---------------------------------------------------------------------------
# The task family interface (`albert_jax.tasks.family`).

NAMES = tuple(TASKS)


def task_spec(task_config: Any) -> family.TaskSpec:
  task = get_task(task_config if isinstance(task_config, str) else task_config.name)
  return family.TaskSpec(
    task.name,
    "regression" if task.is_regression else "classification",
    task.num_labels,
    "train",
    task.eval_splits,
    task.test_splits,
    metrics.main_metric(task.name),
    ("score",) if task.is_regression else task.labels,
  )


def load_split(task_config: Any, tokenizer: Any, split: str) -> family.TaskData:
  task = get_task(task_config.name)
  counts = collections.Counter()
  if task_config.source == "tfds":
    examples = read_tfds(task, split, task_config.tfds_data_dir or None)
  else:
    path = family.file_override(task_config, split) or task_file(task, task_config.data_dir, split)
    examples = read_tsv(task, path, split, counts)
  examples = family.first(examples, task_config)
  features = to_features(examples, tokenizer, int(task_config.max_seq_length), task.is_regression, counts)
  return family.TaskData(features, split, examples, counts=counts)


def evaluate_split(task_config: Any, outputs: Any, data: family.TaskData) -> dict[str, float]:
  task = get_task(task_config.name)
  labels = data.features["label"]
  outputs = np.asarray(outputs)
  if task.is_regression:
    predictions = outputs.reshape(-1)
  else:
    predictions = outputs.argmax(-1) if outputs.ndim == 2 else outputs
  unlabelled = np.isnan(labels) if task.is_regression else labels < 0
  if unlabelled.any():
    raise ValueError(f"{task.name} {data.split} has no labels: use write_predictions.")
  return metrics.glue_metrics(task.name, predictions, labels)


def write_split(task_config: Any, outputs: Any, data: family.TaskData, output_dir: str) -> list[pathlib.Path]:
  """Test splits: the submission file (SST-2.tsv, MNLI-m.tsv, ...); others `<task>_<split>.tsv`, the same format."""
  task = get_task(task_config.name)
  out = pathlib.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  if data.split in task.submission_files:
    return [write_submission(task, data.split, data.examples, outputs, out)]
  path = out / f"{task.name}_{data.split}.tsv"
  with open(path, "w", encoding="utf-8") as f:
    f.write("index\tprediction\n")
    for example, p in zip(data.examples, prediction_strings(task, outputs)):
      f.write(f"{example.index}\t{p}\n")
  return [path]

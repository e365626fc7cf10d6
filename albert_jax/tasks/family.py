"""What every task family module gives the registry (`albert_jax.tasks`), and the types they share.

A family module (glue, squad, race, classify, tagging) defines:

  NAMES                                          the task names it serves (`config.task.name`)
  task_spec(task_config) -> TaskSpec             head, outputs, label names, splits, metric
  load_split(task_config, tokenizer, split) -> TaskData
  evaluate_split(task_config, outputs, data) -> dict[str, float]
  write_split(task_config, outputs, data, output_dir) -> list[pathlib.Path]

`task_config` is the `config.task` section (`task_spec` of the benchmark
families also takes the bare task name); `outputs` are what the head returns
for every row of `data.features`, in order, stacked with numpy.
"""

import collections
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from albert_jax import storage


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """What the fine-tuning loop needs to know before it sees any data.

  Attributes:
    name: the task name.
    head: 'classification', 'regression', 'span', 'span_xlnet',
      'multiple_choice' or 'tagging' (the model:
      AlbertForSequenceClassification(num_labels), AlbertForQuestionAnswering,
      AlbertForQuestionAnsweringXLNet, AlbertForMultipleChoice,
      AlbertForTokenClassification(num_labels)).
    num_labels: classifier outputs (1 for regression, 4 choices for RACE,
      2 start/end for spans, the tags for tagging).
    train_split, eval_splits, test_splits: split names for load_split.
    main_metric: the score (higher is better) that picks the best checkpoint.
    label_names: the name of each output, in order (classes as the data
      names them, tags, RACE's letters; regression: what the score is); None
      for span heads. The workdir's config.json keeps them as `id2label`.
  """

  name: str
  head: str
  num_labels: int
  train_split: str
  eval_splits: tuple[str, ...]
  test_splits: tuple[str, ...]
  main_metric: str
  label_names: tuple[str, ...] | None = None


@dataclasses.dataclass
class TaskData:
  """A loaded split.

  Attributes:
    features: model inputs (input_ids, attention_mask, token_type_ids) and
      targets (label; SQuAD start_positions, end_positions), numpy arrays
      with one row per model input.
    split: the split name.
    examples: the examples, in feature order (SQuAD: see `index`).
    index: the family's map from features back to examples (SQuAD's
      `squad.FeatureIndex`, tagging's windows); else None.
    counts: what reading and conversion skipped, truncated or counted.
  """

  features: dict[str, np.ndarray]
  split: str
  examples: list[Any]
  index: Any = None
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def __len__(self) -> int:
    return len(self.features["input_ids"])


def file_override(task_config: Any, split: str) -> str | None:
  """config.task.files.<split>, None when unset ('' = the family's default file)."""
  if isinstance(task_config, str):
    raise ValueError(f"Task {task_config!r} reads config.task.files: pass the config.task section, not the name.")
  return task_config.files.get(split) or None


def first(examples: list[Any], task_config: Any) -> list[Any]:
  """The first config.task.max_examples examples (all when 0)."""
  limit = int(task_config.max_examples)
  return examples[:limit] if limit > 0 else examples


def read_once(read: Callable[..., Any], path: str, *args: Any) -> Any:
  """`read(path, *args)`, read again only once the file has changed (its size or time): the spec, the load and
  every evaluation of your own files need the train file's labels."""
  stat = storage.path(path).stat()
  return _read_cached(read, path, args, (stat.length, stat.mtime))


@functools.lru_cache(maxsize=16)
def _read_cached(read, path, args, stamp):
  del stamp  # part of the key only
  return read(path, *args)

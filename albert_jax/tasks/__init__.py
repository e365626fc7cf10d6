"""The task registry: one interface over every task family for the fine-tuning loop.

  spec = tasks.get_spec(config.task)           # head, outputs, label names, splits, metric
  data = tasks.load_task(config.task, tokenizer, 'train')
  data.features                                # dict of numpy arrays, one row each
  scores = tasks.evaluate(config.task, outputs, data)
  tasks.write_predictions(config.task, outputs, data, workdir)

A task name (`config.task.name`) belongs to one family module, which does the
work (`family` lists what each module defines). `outputs` are what the task's
head returns for every row of `data.features`, in order, stacked with numpy:
class logits [N, C] (GLUE), scores [N] or [N, 1] (STS-B), {'start_logits',
'end_logits'} [F, T] (SQuAD, head 'bert') or `squad.XLNET_OUTPUTS` (SQuAD,
head 'xlnet'), choice logits [N, 4] (RACE), class logits or scores (your own
files, `classify`), tag logits [N, T, tags] (`tagging`).

`task_config` is the `config.task` section that `config_lib.finetuning`
builds (every field and its default are documented there).

Adding a family: a module with `family`'s functions, and its line in FAMILIES.
"""

import pathlib
from types import ModuleType
from typing import Any

from absl import logging

from albert_jax import config_lib
from albert_jax.tasks import classify, glue, race, squad, tagging
from albert_jax.tasks.family import TaskData, TaskSpec

FAMILIES = (glue, squad, race, classify, tagging)
_BY_NAME = {name: module for module in FAMILIES for name in module.NAMES}

__all__ = ["TaskData", "TaskSpec", "evaluate", "family_of", "get_spec", "load_task", "write_predictions"]


def family_of(task_config: Any) -> ModuleType:
  """The family module of `task_config` (a config with .name, or the name)."""
  name = task_config if isinstance(task_config, str) else task_config.name
  return _BY_NAME[config_lib.task_name(name)]


def get_spec(task_config: Any) -> TaskSpec:
  """The `TaskSpec` of `task_config` (a config with .name, or the name)."""
  return family_of(task_config).task_spec(task_config)


def load_task(task_config: Any, tokenizer: Any, split: str) -> TaskData:
  """Reads `split` of the task and converts it to model features.

  Args:
    task_config: the `config.task` fields in the module docstring.
    tokenizer: an `albert_jax.tokenizer.Tokenizer`.
    split: 'train', 'dev' ('dev_matched' / 'dev_mismatched' for MNLI),
      'test', ... (see `get_spec(...).eval_splits`).

  Returns:
    The features and what `evaluate` / `write_predictions` need.
  """
  source = task_config.get("source", "files")
  if source not in ("files", "tfds"):
    raise ValueError(f"config.task.source={source!r}: use 'files' or 'tfds'.")
  data = family_of(task_config).load_split(task_config, tokenizer, split)
  logging.info("Loaded %s: %d rows; %s", data.split, len(data), dict(data.counts))
  return data


def evaluate(task_config: Any, outputs: Any, data: TaskData) -> dict[str, float]:
  """The task's official scores of `outputs` (see the module docstring)."""
  return family_of(task_config).evaluate_split(task_config, outputs, data)


def write_predictions(task_config: Any, outputs: Any, data: TaskData, output_dir: str) -> list[pathlib.Path]:
  """Writes the task's prediction files into `output_dir` (each family's `write_split` says which)."""
  return family_of(task_config).write_split(task_config, outputs, data, output_dir)

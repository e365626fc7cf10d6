"""One interface over GLUE, SQuAD and RACE for the fine-tuning loop.

  spec = tasks.get_spec(config.task.name)      # head, outputs, splits, metric
  data = tasks.load_task(config.task, tokenizer, 'train')
  data.features                                # dict of numpy arrays, one row each
  scores = tasks.evaluate(config.task, outputs, data)
  tasks.write_predictions(config.task, outputs, data, workdir)

`outputs` are what the task's head returns for every row of `data.features`,
in order, stacked with numpy: class logits [N, C] (GLUE), scores [N] or
[N, 1] (STS-B), {'start_logits', 'end_logits'} [F, T] (SQuAD, head 'bert') or
`squad.XLNET_OUTPUTS` (SQuAD, head 'xlnet'), choice logits [N, 4] (RACE).

`task_config` is the `config.task` section that `config_lib.finetuning`
builds (every field and its default are documented there).
"""

import collections
import dataclasses
import pathlib
from typing import Any

import numpy as np
from absl import logging

from albert_jax import config_lib
from albert_jax.tasks import glue, metrics, race, squad

SQUAD_TASKS = {"squad_v1": "1.1", "squad_v2": "2.0"}


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """What the fine-tuning loop needs to know before it sees any data.

  Attributes:
    name: the task name.
    head: 'classification', 'regression', 'span', 'span_xlnet' or
      'multiple_choice' (the model: AlbertForSequenceClassification(num_labels),
      AlbertForQuestionAnswering, AlbertForQuestionAnsweringXLNet,
      AlbertForMultipleChoice).
    num_labels: classifier outputs (1 for regression, 4 choices for RACE,
      2 start/end for spans).
    train_split, eval_splits, test_splits: split names for load_task.
    main_metric: the score (higher is better) that picks the best checkpoint.
  """

  name: str
  head: str
  num_labels: int
  train_split: str
  eval_splits: tuple[str, ...]
  test_splits: tuple[str, ...]
  main_metric: str


@dataclasses.dataclass
class TaskData:
  """A loaded split.

  Attributes:
    features: model inputs (input_ids, attention_mask, token_type_ids) and
      targets (label; SQuAD start_positions, end_positions), numpy arrays
      with one row per model input.
    split: the split name.
    examples: the examples, in feature order (SQuAD: see `index`).
    index: SQuAD's `squad.FeatureIndex` (features -> questions); else None.
    counts: what reading and conversion skipped, truncated or counted.
  """

  features: dict[str, np.ndarray]
  split: str
  examples: list[Any]
  index: squad.FeatureIndex | None = None
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def __len__(self) -> int:
    return len(self.features["input_ids"])


def _name(task_config: Any) -> str:
  return task_config if isinstance(task_config, str) else task_config.name


def get_spec(task_config: Any) -> TaskSpec:
  """The `TaskSpec` of `task_config` (a config with .name, or the name)."""
  name = config_lib.task_name(_name(task_config))
  if name in SQUAD_TASKS:
    return TaskSpec(name, _span_head(task_config, name), 2, "train", ("dev",), (), "f1")
  if name == "race":
    return TaskSpec(name, "multiple_choice", race.NUM_CHOICES, "train", ("dev",), ("test",), "accuracy")
  task = glue.get_task(name)
  return TaskSpec(
    task.name,
    "regression" if task.is_regression else "classification",
    task.num_labels,
    "train",
    task.eval_splits,
    task.test_splits,
    metrics.main_metric(task.name),
  )


SPAN_HEADS = {"bert": "span", "xlnet": "span_xlnet"}  # config.task.head -> TaskSpec.head


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


def _file_override(task_config: Any, split: str) -> str | None:
  return task_config.files.get(split) or None  # '' = the default file


def _first(examples: list[Any], task_config: Any) -> list[Any]:
  limit = int(task_config.max_examples)
  return examples[:limit] if limit > 0 else examples


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
  spec = get_spec(task_config)
  source = task_config.source
  if source not in ("files", "tfds"):
    raise ValueError(f"config.task.source={source!r}: use 'files' or 'tfds'.")
  data_dir = task_config.data_dir
  tfds_dir = task_config.tfds_data_dir or None
  max_seq_length = int(task_config.max_seq_length)
  counts = collections.Counter()
  if spec.name in SQUAD_TASKS:
    return _load_squad(task_config, spec, tokenizer, split, data_dir, max_seq_length, counts)
  if spec.name == "race":
    levels = tuple(task_config.levels)
    if source == "tfds":
      examples = race.read_tfds(split, levels, tfds_dir, counts=counts)
    else:
      examples = race.read_dir(_file_override(task_config, split) or data_dir, split, levels, counts)
    examples = _first(examples, task_config)
    features = race.to_features(examples, tokenizer, max_seq_length, int(task_config.max_qa_length), counts)
    return _done(TaskData(features, split, examples, counts=counts))
  task = glue.get_task(spec.name)
  if source == "tfds":
    examples = glue.read_tfds(task, split, tfds_dir)
  else:
    path = _file_override(task_config, split) or glue.task_file(task, data_dir, split)
    examples = glue.read_tsv(task, path, split, counts)
  examples = _first(examples, task_config)
  features = glue.to_features(examples, tokenizer, max_seq_length, task.is_regression, counts)
  return _done(TaskData(features, split, examples, counts=counts))


def _load_squad(task_config, spec, tokenizer, split, data_dir, max_seq_length, counts):
  path = _file_override(task_config, split)
  if path is None:
    stem = pathlib.Path(data_dir).expanduser() / f"{split}-v{SQUAD_TASKS[spec.name]}.json"
    candidates = [stem, stem.with_name(stem.name + ".zip")]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
      raise FileNotFoundError(
        f"Neither {candidates[0]} nor {candidates[1]} exists: set config.task.data_dir, or config.task.files." + split
      )
  dataset = squad.load_json(path)
  examples = _first(squad.read_examples(dataset), task_config)
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
  features, index = squad.make_features(
    examples,
    tokenizer,
    max_seq_length,
    int(task_config.doc_stride),
    int(task_config.max_query_length),
    training=split == spec.train_split,
    dataset=dataset,
    counts=counts,
  )
  return _done(TaskData(features, split, index.examples, index, counts))


def _done(data: TaskData) -> TaskData:
  logging.info("Loaded %s: %d rows; %s", data.split, len(data), dict(data.counts))
  return data


def evaluate(task_config: Any, outputs: Any, data: TaskData) -> dict[str, float]:
  """The task's official scores of `outputs` (see the module docstring)."""
  spec = get_spec(task_config)
  if spec.name in SQUAD_TASKS:
    return _squad_results(task_config, spec, outputs, data)[0]
  if spec.name == "race":
    return race.evaluate(outputs, data.examples)
  task = glue.get_task(spec.name)
  labels = data.features["label"]
  outputs = np.asarray(outputs)
  if task.is_regression:
    predictions = outputs.reshape(-1)
  else:
    predictions = outputs.argmax(-1) if outputs.ndim == 2 else outputs
  unlabelled = np.isnan(labels) if task.is_regression else labels < 0
  if unlabelled.any():
    raise ValueError(f"{spec.name} {data.split} has no labels: use write_predictions.")
  return metrics.glue_metrics(task.name, predictions, labels)


def _squad_answers(task_config, spec, outputs, data):
  """(best non-null answers, null odds, nbest or None) of either span head's outputs."""
  sizes = int(task_config.n_best_size), int(task_config.max_answer_length)
  if spec.head == "span_xlnet":
    return squad.postprocess_xlnet(outputs, data.index, *sizes)
  return (*squad.postprocess(outputs["start_logits"], outputs["end_logits"], data.index, *sizes), None)


def _squad_results(task_config, spec, outputs, data):
  """(scores, predictions, null odds, nbest) of dev: scored with the gold answers."""
  threshold = task_config.null_score_diff_threshold
  answers, null_odds, nbest = _squad_answers(task_config, spec, outputs, data)
  version_2 = spec.name == "squad_v2"
  scores, predictions, null_odds = squad.score(
    answers, null_odds, data.index, version_2, None if threshold is None else float(threshold)
  )
  return scores, predictions, null_odds, nbest


def _write_squad(task_config, spec, outputs, data, out):
  version_2 = spec.name == "squad_v2"
  threshold = task_config.null_score_diff_threshold
  if threshold is None:
    scores, predictions, null_odds, nbest = _squad_results(task_config, spec, outputs, data)
  else:  # A threshold from dev: no gold answers needed (test sets).
    predictions, null_odds, nbest = _squad_answers(task_config, spec, outputs, data)
    scores = None
    if version_2:
      predictions = squad.apply_null_threshold(predictions, null_odds, float(threshold))
  v2_scores = scores if version_2 else None
  return squad.write_predictions(out, predictions, null_odds if version_2 else None, nbest, v2_scores)


def write_predictions(task_config: Any, outputs: Any, data: TaskData, output_dir: str) -> list[pathlib.Path]:
  """Writes the task's prediction files into `output_dir`.

  GLUE test splits: the submission file (SST-2.tsv, MNLI-m.tsv, ...); other
  GLUE splits: `<task>_<split>.tsv` in the same format. SQuAD:
  predictions.json; v2.0 also null_odds.json and, when the threshold is
  chosen on this split's gold answers, the official scores
  (`squad.OFFICIAL_V2_FILE`); the 'xlnet' head also nbest_predictions.json.
  RACE: race_<split>.tsv with `example_id\\tprediction` (A-D).
  """
  spec = get_spec(task_config)
  out = pathlib.Path(output_dir)
  if spec.name in SQUAD_TASKS:
    return _write_squad(task_config, spec, outputs, data, out)
  out.mkdir(parents=True, exist_ok=True)
  if spec.name == "race":
    path = out / f"race_{data.split}.tsv"
    letters = "ABCD"
    with open(path, "w", encoding="utf-8") as f:
      f.write("example_id\tprediction\n")
      for example, p in zip(data.examples, np.asarray(outputs).argmax(-1)):
        f.write(f"{example.example_id}\t{letters[int(p)]}\n")
    return [path]
  task = glue.get_task(spec.name)
  if data.split in task.submission_files:
    return [glue.write_submission(task, data.split, data.examples, outputs, out)]
  path = out / f"{task.name}_{data.split}.tsv"
  with open(path, "w", encoding="utf-8") as f:
    f.write("index\tprediction\n")
    for example, p in zip(data.examples, glue.prediction_strings(task, outputs)):
      f.write(f"{example.index}\t{p}\n")
  return [path]

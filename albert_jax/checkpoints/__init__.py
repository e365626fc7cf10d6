"""ALBERT parameters in and out: `load(path)` reads any checkpoint, `save` writes albert_jax's own format.

Formats: an albert_jax checkpoint directory or training workdir (`native`), a
Hugging Face ALBERT directory (`hf`), an original google-research/albert
TensorFlow checkpoint (`original_tf`); `export` writes Hugging Face
directories. Every source and output may be local or in a bucket (`gs://`).
"""

import dataclasses
from typing import Any

from etils import epath

from albert_jax import model as model_lib
from albert_jax import storage
from albert_jax.checkpoints import hf, native, original_tf
from albert_jax.checkpoints.errors import CheckpointError
from albert_jax.checkpoints.native import FORMAT, FORMAT_VERSION, save  # noqa: F401  (the public API)


def load(path, complete: bool = True) -> tuple[model_lib.AlbertConfig, dict[str, Any]]:
  """Any checkpoint source → `(config, {'params': ...})` of `AlbertForPreTraining`.

  Sources: an albert_jax checkpoint directory or pretraining workdir, a Hugging Face ALBERT directory, or an
  original google-research/albert TensorFlow checkpoint (its prefix, or a directory holding it and
  `albert_config.json`). A fine-tuning workdir gives the parameters of its best checkpoint instead: its task
  model's (the `albert` backbone, without the pooler under a span head, and the head; `task_head` names it).
  A released checkpoint without an SOP head gets a fresh one, unless `complete=False` (then it has none: continued
  pretraining initialises what is missing from its own seed and says so).
  """
  tf_prefix = original_tf.find_prefix(path)
  if tf_prefix is not None:
    return original_tf.load(tf_prefix, complete)
  directory = storage.path(path)  # orbax reads absolute paths only: `--checkpoint=workdirs/tiny`
  if not directory.is_dir():
    raise CheckpointError(
      f"{path} is not a directory; pass an albert_jax checkpoint directory, a training workdir, "
      "a Hugging Face ALBERT directory or a TensorFlow ALBERT checkpoint prefix."
    )
  config_file = directory / "config.json"
  if not config_file.exists():
    raise CheckpointError(f"{path} has no config.json, so it is not an ALBERT checkpoint directory.")
  meta = hf.read_json(config_file)
  if meta.get("format") == FORMAT:
    return native.load(directory, meta)
  return hf.load_hf(directory, complete)


def task_head(params: dict[str, Any]) -> tuple[str, ...]:
  """The fine-tuning head modules of a `{'params': ...}` tree (empty for pretraining parameters)."""
  return tuple(sorted(set(params["params"]) - {"albert", "predictions", "sop_classifier"}))


@dataclasses.dataclass(frozen=True)
class HeadInfo:
  """What a fine-tuned model's head answers with, as its checkpoint records it.

  Attributes:
    head: the task head (`tasks.TaskSpec.head`: 'classification', 'regression', 'span', ...).
    labels: the label names in id order (classification, tagging); None where the head has none.
    max_seq_length: the tokens per input it was fine-tuned with; None where not recorded (Hugging Face).
    task: the fine-tuning task's name; None where not recorded.
    settings: the fine-tuning's `config.task` fields (experiment.json), e.g. SQuAD's doc_stride; {} where unknown.
  """

  head: str
  labels: tuple[str, ...] | None = None
  max_seq_length: int | None = None
  task: str | None = None
  settings: dict = dataclasses.field(default_factory=dict)


def _labels(id2label) -> tuple[str, ...] | None:
  """id2label as a list or as {id: name} (keys as strings in JSON) → names in id order."""
  if not id2label:
    return None
  if isinstance(id2label, dict):
    return tuple(id2label[k] for k in sorted(id2label, key=int))
  return tuple(id2label)


def head_info(path) -> HeadInfo | None:
  """The head of a fine-tuning workdir or a Hugging Face directory of a head's class; None for any other model.

  A fine-tuning workdir's config.json names the head, its labels and max_seq_length; a Hugging Face config.json
  its class (`hf.HEADS`), `id2label` and `problem_type`.
  """
  if original_tf.find_prefix(path) is not None:
    return None
  config_file = storage.path(path) / "config.json"
  if not config_file.exists():
    return None
  meta = hf.read_json(config_file)
  if meta.get("format") == FORMAT:
    if not meta.get("head"):
      return None
    experiment = storage.path(path) / "experiment.json"
    settings = hf.read_json(experiment).get("task", {}) if experiment.exists() else {}
    labels = _labels(meta.get("id2label"))
    return HeadInfo(meta["head"], labels, meta.get("max_seq_length"), meta.get("task"), settings)
  head = hf.head_of_hf_config(meta)
  if head is None:
    return None
  labels = _labels(meta.get("id2label")) if head not in ("span", "multiple_choice") else None
  return HeadInfo(head, labels)


def find_vocab(source) -> epath.Path | None:
  """The SentencePiece model shipped with a checkpoint source, or None.

  `spiece.model` (albert_jax, Hugging Face) or `30k-clean.model` (the original
  TF releases; `assets/` in a TF-Hub module, whose weights are in `variables/`).
  """
  path = storage.path(source)
  directory = path if path.is_dir() else path.parent
  places = [directory, directory.parent] if directory.name == "variables" else [directory]
  for place in places:
    for name in ("spiece.model", "30k-clean.model", "assets/30k-clean.model"):
      if (place / name).is_file():
        return place / name
  return None


def convert(source, output, overwrite: bool = False) -> epath.Path:
  """Any checkpoint source → an albert_jax checkpoint directory (with the source's vocabulary, if it has one)."""
  output = storage.path(output)
  if output.exists() and any(output.iterdir()) and not overwrite:
    raise CheckpointError(f"{output} exists and is not empty; choose another --output or pass --overwrite.")
  config, params = load(source)
  return save(output, config, params, spiece_model=find_vocab(source))

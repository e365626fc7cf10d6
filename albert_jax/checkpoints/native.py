"""The albert_jax checkpoint format: a directory of config.json, params/ (orbax) and spiece.model, a pretraining
workdir (its newest complete checkpoint), or a fine-tuning workdir (its best checkpoint: the task model)."""

import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from albert_jax import model as model_lib
from albert_jax import storage
from albert_jax.checkpoints.errors import CheckpointError

FORMAT = "albert_jax"
FORMAT_VERSION = 1


def save(directory, cfg: model_lib.AlbertConfig, params, spiece_model=None) -> epath.Path:
  """Write an albert_jax checkpoint directory: config.json, params/ (orbax) and optionally spiece.model."""
  directory = storage.make_dirs(directory)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / "params", params, force=True)
  storage.write_text_atomic(
    directory / "config.json",
    json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, "model": cfg.to_dict()}, indent=2, sort_keys=True),
  )
  if spiece_model is not None:
    storage.copy(spiece_model, directory / "spiece.model")
  return directory


def load(directory: epath.Path, meta: dict[str, Any]):
  version = meta.get("format_version", 0)
  if version > FORMAT_VERSION:
    raise CheckpointError(
      f"{directory} was written by a newer albert_jax (format {version}; this one reads up to "
      f"{FORMAT_VERSION}). Upgrade albert_jax."
    )
  cfg = model_lib.AlbertConfig.from_dict(meta["model"])
  if meta.get("task"):
    return cfg, _load_finetuned_params(directory, meta["task"])
  abstract = jax.eval_shape(
    lambda: nn.unbox(model_lib.AlbertForPreTraining(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32)))
  )
  if (directory / "checkpoints").is_dir():
    return cfg, _load_workdir_params(directory, abstract)
  with ocp.StandardCheckpointer() as checkpointer:
    # Shapes first: a restore that fails part-way leaves tensorstore reads running after the error.
    differ = _shape_mismatches(checkpointer, directory / "params", abstract)
    if differ:
      raise CheckpointError(f"The parameters in {directory} cannot be read with its config.json: {differ}")
    try:
      params = checkpointer.restore(directory / "params", abstract)
    except (ValueError, FileNotFoundError) as e:
      raise CheckpointError(f"The parameters in {directory} cannot be read with its config.json: {e}") from e
  return cfg, params


def _shape_mismatches(checkpointer, path: epath.Path, abstract) -> str:
  """'name: stored (a, b), config.json (c, d); ...' for the stored arrays whose shape the config does not give."""
  try:
    stored = dict(jax.tree_util.tree_flatten_with_path(checkpointer.metadata(path).item_metadata)[0])
  except Exception:  # pylint: disable=broad-except  (unreadable metadata: the caller reports the restore error)
    return ""
  wanted = dict(jax.tree_util.tree_flatten_with_path(abstract)[0])
  differ = [
    f"{jax.tree_util.keystr(k, simple=True, separator='/')}: stored {tuple(v.shape)}, config.json "
    f"{tuple(wanted[k].shape)}"
    for k, v in stored.items()
    if k in wanted and v.shape != wanted[k].shape
  ]
  if not differ:
    return ""
  return (
    f"{'; '.join(differ[:4])}. The weights belong to another model (vocab_size and hidden sizes must match "
    "config.json); fix config.json or use the matching weights."
  )


def complete_steps(folder, item: str) -> list[int]:
  """Steps of the complete checkpoints holding `item` in an orbax manager's folder (a workdir's checkpoints/, best/).

  On a disk orbax renames a step folder only once it is whole; on a bucket it writes the folder in place and
  `commit_success.txt` last, so there a step counts only with that file.
  """
  folder = storage.path(folder)
  if not folder.is_dir():
    return []
  committed = (lambda p: (p / "commit_success.txt").exists()) if storage.is_remote(folder) else (lambda p: True)
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / item).is_dir() and committed(p))


def training_steps(workdir) -> list[int]:
  """Steps of the complete checkpoints in a training workdir."""
  return complete_steps(storage.path(workdir) / "checkpoints", "state")


def _load_workdir_params(workdir: epath.Path, abstract):
  """The parameters of the newest checkpoint of a training workdir (an absolute path: see `load`) that can be read."""
  steps = training_steps(workdir)
  if not steps:
    raise CheckpointError(f"The training workdir {workdir} has no complete checkpoint yet.")
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = {
    "params": jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract["params"])
  }
  errors = []
  for step in reversed(steps):
    with ocp.PyTreeCheckpointer() as checkpointer:
      try:
        state = checkpointer.restore(
          workdir / "checkpoints" / str(step) / "state",
          args=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
          ),
        )
        return {"params": state["params"]}
      except Exception as e:  # pylint: disable=broad-except
        logging.error("Checkpoint %s/checkpoints/%d cannot be read (%s); trying an older one.", workdir, step, e)
        errors.append(f"step {step}: {e}")
  raise CheckpointError(f"No checkpoint in {workdir} could be read: {errors}")


def _load_finetuned_params(workdir: epath.Path, task: str):
  """The parameters of a fine-tuning workdir's best checkpoint: the task model's `albert` backbone and its head."""
  folder = workdir / "best"
  steps = complete_steps(folder, "params")
  if not steps:
    raise CheckpointError(
      f"The {task} fine-tuning workdir {workdir} has no best checkpoint yet (it is written at the first evaluation)."
    )
  path = folder / str(steps[-1]) / "params"
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  # The item's handler itself: a Checkpointer looks for step-level metadata here and logs that it is missing.
  handler = ocp.PyTreeCheckpointHandler()
  try:
    target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), handler.metadata(path).tree
    )
    args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))
    params = handler.restore(path, args=args)
  finally:
    handler.close()
  return {"params": jax.tree.map(np.asarray, params)}

"""Metrics to metrics.jsonl and TensorBoard event files, and files replaced whole (atomic writes)."""

import json
import os
import pathlib
import sys

import jax
from absl import logging


def write_text_atomic(path: pathlib.Path, text: str):
  """Replaces `path` whole: a reader (another process resuming) or a kill mid-write never sees half a file."""
  partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
  try:
    partial.write_text(text)
    os.replace(partial, path)
  finally:
    partial.unlink(missing_ok=True)


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch.

  tensorboardX imports torch when it is installed, only to accept torch tensors (3-4 s of every start on 2
  cores). Scalars need none of it, so while tensorboardX loads, `import torch` fails as on a machine without
  it; a later `import torch` elsewhere works as usual.
  """
  if "torch" in sys.modules or "tensorboardX" in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

    return SummaryWriter
  sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules["torch"]
  return SummaryWriter


class MetricWriter:
  """Metrics to metrics.jsonl and TensorBoard event files (tensorboardX: no TensorFlow needed), process 0 only."""

  def __init__(self, workdir: pathlib.Path):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    self._jsonl = open(workdir / "metrics.jsonl", "a")
    try:
      self._tb = _summary_writer_class()(str(workdir / "tensorboard"))
    except ImportError:
      logging.warning("tensorboardX is not installed; TensorBoard event files are not written.")
      self._tb = None

  def write(self, step: int, prefix: str, values: dict[str, float]):
    if not self._active:
      return
    self._jsonl.write(json.dumps({"step": step, **{f"{prefix}/{k}": float(v) for k, v in values.items()}}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(f"{prefix}/{k}", float(v), step)
      self._tb.flush()

  def close(self):
    if self._active:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()

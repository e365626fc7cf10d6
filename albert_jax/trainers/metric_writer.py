"""Metrics to metrics.jsonl and TensorBoard event files, in a local workdir or a bucket (`gs://`)."""

import json
import math
import sys

import jax
from absl import logging
from etils import epath

from albert_jax import storage


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
  """Metrics to metrics.jsonl and TensorBoard event files (tensorboardX: no TensorFlow needed), process 0 only.

  Every line is flushed when written, in a bucket too (`storage.AppendedText`). TensorBoard's event files are
  written locally and uploaded at each flush (`storage.LocalMirror`): tensorboardX's own bucket writer would
  upload them again at interpreter exit, and wait minutes there if the bucket has become unreachable.
  """

  def __init__(self, workdir: epath.Path):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    self._jsonl = storage.AppendedText(workdir / "metrics.jsonl")
    self._tb_dir = storage.LocalMirror(workdir / "tensorboard")
    try:
      self._tb = _summary_writer_class()(str(self._tb_dir.local))
    except ImportError:
      logging.warning("tensorboardX is not installed; TensorBoard event files are not written.")
      self._tb = None

  def write(self, step: int, prefix: str, values: dict[str, float]):
    if not self._active:
      return
    # Strict JSON: a value that is not finite (a Pearson correlation of constant predictions) is null.
    row = {f"{prefix}/{k}": float(v) if math.isfinite(v) else None for k, v in values.items()}
    self._jsonl.write(json.dumps({"step": step, **row}, allow_nan=False) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(f"{prefix}/{k}", float(v), step)
      self._tb.flush()
      self._tb_dir.sync()

  def close(self):
    if self._active:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()
      self._tb_dir.close()

"""Tiny fine-tuned models of every head, written as a fine-tuning workdir is, for the export and predict tests.

Their parameters are random with std 1 (not 0.02), so that the heads' answers vary from input to input and
are not decided by rounding; the vocabulary is the shared 30k one, so that real texts tokenise as ALBERT's do.
"""

import json
import shutil

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp

from albert_jax import checkpoints
from albert_jax import model as model_lib
from albert_jax import tokenizer as tokenizer_lib

CONFIG = dict(
  embedding_size=8,
  hidden_size=16,
  num_hidden_layers=2,
  num_attention_heads=2,
  intermediate_size=24,
  max_position_embeddings=512,
)


def random_params(head: str, config: model_lib.AlbertConfig, num_labels: int, seed: int):
  """Random parameters of the head's task model (drawn in the shapes of its tree: no compilation)."""
  shape = (1, 4, 8) if head == "multiple_choice" else (1, 8)
  model = model_lib.for_head(head, config, num_labels)
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.PRNGKey(0), np.zeros(shape, np.int32))))
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes["params"])


def model_config(vocab) -> model_lib.AlbertConfig:
  return model_lib.AlbertConfig(vocab_size=tokenizer_lib.Tokenizer(vocab).vocab_size, **CONFIG)


def write_workdir(directory, vocab, config, head: str, params, labels=None, task=None, max_seq_length=64):
  """A fine-tuning workdir's config.json (as `finetuning.task_metadata` writes it), best checkpoint and spiece.model."""
  directory.mkdir(parents=True)
  meta = {
    "format": checkpoints.FORMAT,
    "format_version": checkpoints.FORMAT_VERSION,
    "task": task or head,
    "head": head,
    "num_labels": len(labels) if labels else 1,
    "id2label": list(labels) if labels else None,
    "max_seq_length": max_seq_length,
    "model": config.to_dict(),
  }
  (directory / "config.json").write_text(json.dumps(meta, indent=2))
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(directory / "best" / "1" / "params", params)
  shutil.copyfile(vocab, directory / "spiece.model")
  return directory

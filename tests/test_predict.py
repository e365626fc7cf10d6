"""Fill-mask: top-k tokens and probabilities against a NumPy softmax of the model's logits; bad input."""

import dataclasses
import os
import pathlib
import re
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
import transformers

from albert_jax import checkpoints
from albert_jax import model as model_lib
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.tasks import fill_mask

# A tiny model (its vocab_size is the generated vocabulary's). Its random parameters are drawn with std 1 (not 0.02),
# so that the probabilities are far from uniform and the top-k order is not decided by rounding.
CONFIG = model_lib.AlbertConfig(
  embedding_size=8,
  hidden_size=16,
  num_hidden_layers=2,
  num_attention_heads=2,
  intermediate_size=24,
  max_position_embeddings=64,
)
TEXTS = ["The capital of [MASK] is Delhi.", "[MASK] was born in 1879, and [MASK] [MASK] physics.", "a [MASK]"]
PAIR = re.compile(r"(\S+) \((\S+)\)")
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, generated_vocab):
  """An albert_jax checkpoint directory of a random model, with the generated spiece.model inside."""
  config = dataclasses.replace(CONFIG, vocab_size=tokenizer_lib.Tokenizer(generated_vocab).vocab_size)
  # Random values in the shapes of the parameter tree (cheaper than compiling the model's init).
  shapes = jax.eval_shape(
    lambda: nn.unbox(model_lib.AlbertForPreTraining(config).init(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32)))
  )
  rng = np.random.RandomState(0)
  params = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
  directory = tmp_path_factory.mktemp("predict") / "model"
  return checkpoints.save(directory, config, params, spiece_model=generated_vocab)


@pytest.fixture(scope="module")
def reference(checkpoint):
  """Per text, per mask: the softmax over the vocabulary in float64, from the full-sequence logits.

  All texts go through the model in one batch padded to a length that none of fill_mask's buckets has.
  """
  config, params = checkpoints.load(checkpoint)
  tokenizer = tokenizer_lib.Tokenizer(checkpoint / "spiece.model")
  encoded = [[tokenizer.cls_id, *tokenizer.encode(text), tokenizer.sep_id] for text in TEXTS]
  padded = 48  # not a power of two
  assert max(map(len, encoded)) <= padded
  ids, mask = np.zeros((len(TEXTS), padded), np.int32), np.zeros((len(TEXTS), padded), np.int32)
  for row, text_ids in enumerate(encoded):
    ids[row, : len(text_ids)], mask[row, : len(text_ids)] = text_ids, 1
  logits = np.asarray(model_lib.AlbertForPreTraining(config).apply(params, ids, mask)["mlm_logits"], np.float64)
  out = []
  for row, text_ids in enumerate(encoded):
    at_masks = logits[row, np.flatnonzero(np.array(text_ids) == tokenizer.mask_id)]
    probabilities = np.exp(at_masks - at_masks.max(-1, keepdims=True))
    out.append(probabilities / probabilities.sum(-1, keepdims=True))
  return out, tokenizer


def _top_k(probabilities, k):
  top = np.argsort(-probabilities)[:k]
  return top, probabilities[top]


def test_fill_mask_gives_the_softmax_top_k_for_every_mask_of_every_text(checkpoint, reference):
  config, params = checkpoints.load(checkpoint)
  tokenizer = fill_mask.load_tokenizer(checkpoint)
  # batch_size=2: two model calls with different length buckets, one text padded alone.
  results = fill_mask.fill_mask(config, params, tokenizer, TEXTS, top_k=4, batch_size=2)
  assert [len(masks) for masks in results] == [1, 3, 1]
  for got_masks, want_masks in zip(results, reference[0]):
    for candidates, want in zip(got_masks, want_masks):
      ids, probabilities = _top_k(want, 4)
      assert [c.token_id for c in candidates] == list(ids)
      np.testing.assert_allclose([c.probability for c in candidates], probabilities, rtol=1e-4, atol=1e-7)
      assert [c.token for c in candidates] == [tokenizer.decode([i]) or tokenizer.id_to_piece(i) for i in ids]


def test_one_compilation_serves_texts_of_different_lengths_within_a_bucket(checkpoint):
  config, params = checkpoints.load(checkpoint)
  tokenizer = fill_mask.load_tokenizer(checkpoint)
  texts = ["a [MASK] b", "The capital of [MASK] is Delhi, a city in Asia."]
  lengths = [len(tokenizer.encode(text)) + 2 for text in texts]
  assert lengths[0] < lengths[1] <= 16  # the smallest bucket
  for text in texts:
    fill_mask.fill_mask(config, params, tokenizer, [text], top_k=2)
  assert fill_mask._top_k_fn(config, 2)._cache_size() == 1  # pylint: disable=protected-access


def test_cli_prints_a_block_per_text_and_a_line_per_mask(checkpoint, reference, tmp_path):
  texts_file = tmp_path / "texts.txt"
  texts_file.write_text(f"{TEXTS[1]}\n\n{TEXTS[2]}\n", encoding="utf-8")
  # A relative --checkpoint, as the README's quickstart passes it (orbax itself reads absolute paths only).
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "albert_jax.predict",
      f"--checkpoint={checkpoint.name}",
      f"--text={TEXTS[0]}",
      f"--input_file={texts_file}",
      "--top_k=3",
    ],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=checkpoint.parent,
    env=dict(os.environ, PYTHONPATH=str(REPO)),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  expected, tokenizer = reference
  blocks = result.stdout.strip().split("\n\n")
  assert len(blocks) == len(TEXTS)
  for block, text, masks in zip(blocks, TEXTS, expected):
    title, *lines = block.split("\n")
    assert title == text
    assert len(lines) == len(masks)
    for number, (line, want) in enumerate(zip(lines, masks), start=1):
      ids, probabilities = _top_k(want, 3)
      assert line.startswith(f"  [MASK] {number}: ")
      pairs = PAIR.findall(line.split(": ", 1)[1])
      assert [token for token, _ in pairs] == [tokenizer.decode([i]) or tokenizer.id_to_piece(i) for i in ids]
      np.testing.assert_allclose([float(p) for _, p in pairs], probabilities, rtol=1e-3)


def _cli_error(*args):
  result = subprocess.run(
    [sys.executable, "-m", "albert_jax.predict", *args], capture_output=True, text=True, timeout=300
  )
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
  return result.stderr


def test_text_without_mask_is_refused_by_number(checkpoint):
  message = _cli_error(f"--checkpoint={checkpoint}", f"--text={TEXTS[0]}", "--text=Nothing to fill here.")
  assert "error: Text 2 has no [MASK]" in message


def test_text_longer_than_the_model_reads_says_both_lengths(checkpoint):
  config, params = checkpoints.load(checkpoint)
  tokenizer = fill_mask.load_tokenizer(checkpoint)
  text = "[MASK] " + "word " * 70
  length = len(tokenizer.encode(text)) + 2  # with [CLS] and [SEP]
  assert length > 64
  with pytest.raises(fill_mask.InputError, match=rf"Text 1 is {length} tokens long .*at most 64"):
    fill_mask.fill_mask(config, params, tokenizer, [text])


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
  config = transformers.BertConfig(
    vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
  )
  transformers.BertForMaskedLM(config).save_pretrained(tmp_path / "bert")
  message = _cli_error(f"--checkpoint={tmp_path / 'bert'}", "--text=The capital of [MASK] is Delhi.")
  assert "error: config.json says model_type='bert'" in message


def test_missing_vocabulary_and_bad_top_k_are_explained(checkpoint, tmp_path):
  with pytest.raises(fill_mask.InputError, match="no spiece.model.*--vocab"):
    fill_mask.load_tokenizer(tmp_path)
  config, params = checkpoints.load(checkpoint)
  with pytest.raises(fill_mask.InputError, match="top_k=0"):
    fill_mask.fill_mask(config, params, fill_mask.load_tokenizer(checkpoint), TEXTS, top_k=0)

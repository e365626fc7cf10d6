"""Fill-mask: the most likely tokens, with probabilities, for each `[MASK]` in a text (`python -m albert_jax.predict`).

Each text may hold several `[MASK]`s. It is read as `[CLS] text [SEP]`, as
the model saw sentences in pretraining, and the MLM head is evaluated at the
mask positions only. `fill_mask` compiles the model once per (batch, length,
masks) bucket, each a power of two, so that texts of many lengths reuse a
handful of compiled programs.
"""

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from albert_jax import checkpoints
from albert_jax import model as model_lib
from albert_jax import tokenizer as tokenizer_lib

_MIN_LENGTH_BUCKET = 16


class InputError(ValueError):
  """A text or option that fill-mask cannot use; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One prediction for a mask: the token as text, its id and its probability under the model."""

  token: str
  token_id: int
  probability: float


def bucket(n: int, minimum: int, maximum: int) -> int:
  """The smallest power of two ≥ n (and ≥ minimum), capped at maximum."""
  size = minimum
  while size < n:
    size *= 2
  return min(size, maximum)


@functools.lru_cache(maxsize=16)
def _top_k_fn(config: model_lib.AlbertConfig, top_k: int):
  """The jitted model → softmax → top-k at the mask positions; one per config and k, reused across calls."""
  model = model_lib.AlbertForPreTraining(config)

  @jax.jit
  def top_k_fn(params, input_ids, attention_mask, masked_positions):
    logits = model.apply(params, input_ids, attention_mask, masked_positions=masked_positions)["mlm_logits"]
    return jax.lax.top_k(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), top_k)

  return top_k_fn


def encode(tokenizer: tokenizer_lib.Tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
  """`[CLS] text [SEP]` ids of each text, after checking that it has a `[MASK]` and fits the model."""
  encoded = []
  for number, (text, ids) in enumerate(zip(texts, tokenizer.encode_batch(list(texts))), start=1):
    ids = [tokenizer.cls_id, *ids, tokenizer.sep_id]
    if tokenizer.mask_id not in ids:
      raise InputError(f"Text {number} has no [MASK] to fill: {text!r}. Write [MASK] where a word is missing.")
    if len(ids) > max_length:
      raise InputError(
        f"Text {number} is {len(ids)} tokens long with [CLS] and [SEP]; the model reads at most "
        f"{max_length}. Shorten it: {text[:60]!r}..."
      )
    encoded.append(ids)
  return encoded


def fill_mask(
  config: model_lib.AlbertConfig,
  params,
  tokenizer: tokenizer_lib.Tokenizer,
  texts: Sequence[str],
  top_k: int = 5,
  batch_size: int = 8,
) -> list[list[list[Candidate]]]:
  """The `top_k` most likely tokens for every `[MASK]` of every text.

  Args:
    config: the model's config.
    params: its `{'params': ...}` tree (as `checkpoints.load` returns it).
    tokenizer: the model's tokenizer.
    texts: texts with one or more `[MASK]` each.
    top_k: candidates per mask.
    batch_size: texts per model call.

  Returns:
    For each text, for each of its masks (left to right), `top_k` candidates, most probable first.

  Raises:
    InputError: a text without `[MASK]` or longer than the model's maximum length, or an unusable option.
  """
  if "predictions" not in params["params"]:
    raise InputError(
      "These parameters have no masked-LM head (a fine-tuned task model); fill-mask needs a pretrained checkpoint."
    )
  if not 1 <= top_k <= config.vocab_size:
    raise InputError(f"top_k={top_k}; choose between 1 and the vocabulary size {config.vocab_size}.")
  if tokenizer.vocab_size > config.vocab_size:
    raise InputError(
      f"The tokenizer has {tokenizer.vocab_size} pieces but the model embeds only "
      f"{config.vocab_size}; it is not this model's vocabulary."
    )
  encoded = encode(tokenizer, texts, config.max_position_embeddings)
  predict = _top_k_fn(config, top_k)
  results = []
  for start in range(0, len(encoded), batch_size):
    chunk = encoded[start : start + batch_size]
    masks = [[i for i, t in enumerate(ids) if t == tokenizer.mask_id] for ids in chunk]
    length = bucket(max(map(len, chunk)), _MIN_LENGTH_BUCKET, config.max_position_embeddings)
    num_masks = bucket(max(map(len, masks)), 1, length)
    batch = bucket(len(chunk), 1, batch_size)
    input_ids = np.full((batch, length), tokenizer.pad_id, np.int32)
    attention_mask = np.zeros((batch, length), np.int32)
    positions = np.zeros((batch, num_masks), np.int32)  # padding slots look at [CLS]; their output is dropped
    for row, (ids, where) in enumerate(zip(chunk, masks)):
      input_ids[row, : len(ids)] = ids
      attention_mask[row, : len(ids)] = 1
      positions[row, : len(where)] = where
    probabilities, token_ids = jax.device_get(predict(params, input_ids, attention_mask, positions))
    for row, where in enumerate(masks):
      results.append(
        [
          [
            Candidate(_token_text(tokenizer, int(i)), int(i), float(p))
            for p, i in zip(probabilities[row, m], token_ids[row, m])
          ]
          for m in range(len(where))
        ]
      )
  return results


def _token_text(tokenizer: tokenizer_lib.Tokenizer, token_id: int) -> str:
  return tokenizer.decode([token_id]) or tokenizer.id_to_piece(token_id)


def format_predictions(texts: Sequence[str], results: list[list[list[Candidate]]]) -> str:
  """One block per text: the text, then a line per mask with `token (probability)` pairs."""
  blocks = []
  for text, masks in zip(texts, results):
    lines = [text]
    for number, candidates in enumerate(masks, start=1):
      pairs = ", ".join(f"{c.token} ({c.probability:.4g})" for c in candidates)
      lines.append(f"  [MASK] {number}: {pairs}")
    blocks.append("\n".join(lines))
  return "\n\n".join(blocks)


def load_tokenizer(source, vocab=None) -> tokenizer_lib.Tokenizer:
  """`vocab` if given, else the SentencePiece model that comes with the checkpoint `source`."""
  path = vocab or checkpoints.find_vocab(source)
  if path is None:
    raise InputError(f"{source} holds no spiece.model; pass the model's vocabulary with --vocab=PATH.")
  try:
    return tokenizer_lib.Tokenizer(path)
  except (OSError, ValueError) as e:
    raise InputError(str(e)) from None

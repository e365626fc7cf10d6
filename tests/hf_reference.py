"""Hugging Face transformers (PyTorch) as the independent reference for ALBERT numerics."""

import numpy as np
import torch
import transformers


def random_hf_model(directory, seed=0, cls=transformers.AlbertForPreTraining, **config):
  """A randomly initialised Hugging Face ALBERT saved with `save_pretrained`; returns the model (eval mode)."""
  torch.manual_seed(seed)
  hf_config = transformers.AlbertConfig(**config)
  model = cls(hf_config).eval()
  # Non-zero biases and LayerNorm parameters, so a mix-up of any two tensors shows in the outputs.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(directory)
  return model


def random_inputs(vocab_size, batch=3, length=12, seed=0):
  """Token ids with padding in one row and both token types."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(5, vocab_size, (batch, length)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, length // 2 :] = 0
  types = np.zeros_like(ids)
  types[:, length // 3 :] = 1
  return ids, mask, types


def hf_pretraining_logits(model, ids, mask, types):
  with torch.no_grad():
    out = model(
      input_ids=torch.tensor(ids, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
      token_type_ids=torch.tensor(types, dtype=torch.long),
    )
  return out.prediction_logits.numpy(), out.sop_logits.numpy()

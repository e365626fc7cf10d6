"""Export to Hugging Face: a random HF model → convert → export comes back tensor for tensor, and transformers
loads it (weights and tokenizer) with the logits and ids of albert_jax."""

import contextlib
import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from albert_jax import checkpoints
from albert_jax import model as model_lib
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.checkpoints import export
from tests import hf_reference
from tests.test_tokenizer import DIGIT_COMMA_TEXTS, MASK_TEXTS

# Tiny everything, the generated vocabulary's size (tests/test_export_tokenizer.py exports the official one).
SMALL = dict(embedding_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24)
TEXTS = [
  "The capital of [MASK] is Delhi.",
  "I was born in 92000, and this is falsé.",
  "  Hello [MASK][MASK] world ``quoted'' 1,000,000 a9,b",
  "ÀLBERT Ünïcödé naïve café—[SEP] x [CLS]",
]
HEADS_ONLY_IN_PRETRAINING = {
  "albert.pooler.weight",
  "albert.pooler.bias",
  "sop_classifier.classifier.weight",
  "sop_classifier.classifier.bias",
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, generated_vocab):
  """(Hugging Face original, albert_jax conversion of it, its export); the generated vocab rides along."""
  root = tmp_path_factory.mktemp("export")
  hf_reference.random_hf_model(root / "hf", vocab_size=tokenizer_lib.Tokenizer(generated_vocab).vocab_size, **SMALL)
  shutil.copyfile(generated_vocab, root / "hf" / "spiece.model")
  converted = checkpoints.convert(root / "hf", root / "converted")
  return root / "hf", converted, export.export(converted, root / "exported")


@contextlib.contextmanager
def _transformers_warnings():
  """Collects what transformers logs at WARNING and above (its logger does not propagate to pytest's)."""
  records = []
  handler = logging.Handler(logging.WARNING)
  handler.emit = records.append
  logger = logging.getLogger("transformers")
  logger.addHandler(handler)
  try:
    yield records
  finally:
    logger.removeHandler(handler)


def _albert_jax_mlm_logits(directory, ids, mask):
  config, params = checkpoints.load(directory)
  return np.asarray(model_lib.AlbertForPreTraining(config).apply(params, ids, mask)["mlm_logits"])


def _torch_logits(model, ids, mask):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long))
  return (out.logits if hasattr(out, "logits") else out.prediction_logits).numpy()


def test_every_tensor_equals_the_original(exported):
  original, _, out = exported
  want, got = load_file(str(original / "model.safetensors")), load_file(str(out / "model.safetensors"))
  for key, value in want.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)
  # The tied decoder is written as copies, so that transformers 4 (which reads them) loads the file as well.
  assert set(got) - set(want) <= {"predictions.decoder.weight", "predictions.decoder.bias"}
  np.testing.assert_array_equal(got["predictions.decoder.weight"], want["albert.embeddings.word_embeddings.weight"])
  np.testing.assert_array_equal(got["predictions.decoder.bias"], want["predictions.bias"])
  config = json.loads((out / "config.json").read_text())
  assert config["tie_word_embeddings"] is True and config["architectures"] == ["AlbertForPreTraining"]


def test_transformers_loads_the_export_with_the_logits_of_albert_jax(exported):
  original, converted, out = exported
  ids, mask, _ = hf_reference.random_inputs(transformers.AlbertConfig.from_pretrained(original).vocab_size, length=10)
  want = _albert_jax_mlm_logits(converted, ids, mask)
  with _transformers_warnings() as records:
    pretraining, info = transformers.AlbertForPreTraining.from_pretrained(out, output_loading_info=True)
  assert not any(info.values()), info
  assert not records, [r.getMessage() for r in records]
  masked_lm, info = transformers.AlbertForMaskedLM.from_pretrained(out, output_loading_info=True)
  # All of AlbertForMaskedLM comes from the file; only the heads it lacks are left over.
  assert not info["missing_keys"] and not info["mismatched_keys"] and not info["error_msgs"], info
  assert set(info["unexpected_keys"]) == HEADS_ONLY_IN_PRETRAINING
  for model in (pretraining, masked_lm):
    np.testing.assert_allclose(_torch_logits(model.eval(), ids, mask), want, atol=1e-4, rtol=0)


def test_masked_lm_export_loads_without_any_report(exported, tmp_path):
  _, converted, _ = exported
  out = export.export(converted, tmp_path / "mlm", architecture="AlbertForMaskedLM")
  with _transformers_warnings() as records:
    _, info = transformers.AlbertForMaskedLM.from_pretrained(out, output_loading_info=True)
  assert not any(info.values()), info
  assert not records, [r.getMessage() for r in records]


def test_auto_tokenizer_gives_the_ids_of_albert_jax_tokenizer(exported):
  _, _, out = exported
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  ours = tokenizer_lib.Tokenizer(out / "spiece.model")
  for text in TEXTS + MASK_TEXTS + DIGIT_COMMA_TEXTS:
    assert hf_tokenizer(text)["input_ids"] == [ours.cls_id, *ours.encode(text), ours.sep_id], text
  pair = hf_tokenizer(TEXTS[0], TEXTS[1])
  assert [pair["input_ids"], pair["token_type_ids"]] == list(
    ours.encode_pair(ours.encode(TEXTS[0]), ours.encode(TEXTS[1]))
  )
  assert hf_tokenizer.mask_token_id == ours.mask_id and hf_tokenizer.pad_token_id == ours.pad_id


def test_cli_exports_and_refuses_a_non_empty_output(exported, generated_vocab, tmp_path):
  _, converted, out = exported
  target = tmp_path / "cli"
  command = [
    sys.executable,
    "-m",
    "albert_jax.export",
    f"--checkpoint={converted}",
    f"--output={target}",
    f"--vocab={generated_vocab}",
  ]
  result = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  for name in (
    "model.safetensors",
    "spiece.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
  ):
    assert (target / name).read_bytes() == (out / name).read_bytes(), name
  result = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "not empty" in result.stderr and "--overwrite" in result.stderr and "Traceback" not in result.stderr


def test_non_empty_output_is_kept_unless_overwrite(exported, tmp_path):
  _, converted, _ = exported
  target = tmp_path / "busy"
  target.mkdir()
  (target / "notes.txt").write_text("precious")
  with pytest.raises(checkpoints.CheckpointError, match="not empty.*--overwrite"):
    export.export(converted, target)
  assert (target / "notes.txt").read_text() == "precious"
  # A failed export leaves the old directory as it was, and no half-written directory beside it.
  with pytest.raises(checkpoints.CheckpointError):
    export.export(converted, target, overwrite=True, vocab=tmp_path / "missing.model")
  assert (target / "notes.txt").read_text() == "precious"
  export.export(converted, target, overwrite=True)
  assert sorted(p.name for p in target.iterdir()) == [
    "config.json",
    "model.safetensors",
    "special_tokens_map.json",
    "spiece.model",
    "tokenizer.json",
    "tokenizer_config.json",
  ]
  assert [p.name for p in tmp_path.iterdir()] == ["busy"]


def test_another_architecture_is_refused(tmp_path):
  config = transformers.BertConfig(
    vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
  )
  transformers.BertForMaskedLM(config).save_pretrained(tmp_path / "bert")
  with pytest.raises(checkpoints.CheckpointError, match="model_type='bert'.*ALBERT"):
    export.export(tmp_path / "bert", tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_source_without_vocabulary_asks_for_one(exported, tmp_path):
  original, _, _ = exported
  bare = tmp_path / "bare"
  bare.mkdir()
  for name in ("config.json", "model.safetensors"):
    shutil.copyfile(original / name, bare / name)
  with pytest.raises(checkpoints.CheckpointError, match="no spiece.model.*--vocab"):
    export.export(bare, tmp_path / "out")

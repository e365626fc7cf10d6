"""Reading Hugging Face directories (safetensors, PyTorch, legacy names) and albert_jax checkpoint directories."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from albert_jax import checkpoints
from albert_jax import model as model_lib
from albert_jax.checkpoints import hf
from tests import hf_reference

SMALL = dict(
  vocab_size=64, embedding_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24
)


def _logits(config, params):
  ids, mask, types = hf_reference.random_inputs(SMALL["vocab_size"], length=8)
  out = model_lib.AlbertForPreTraining(config).apply(params, ids, mask, types)
  return np.asarray(out["mlm_logits"]), np.asarray(out["sop_logits"])


@pytest.fixture
def hf_dir(tmp_path):
  directory = tmp_path / "hf"
  model = hf_reference.random_hf_model(directory, **SMALL)
  return directory, model


def test_pytorch_bin_with_legacy_names_loads_like_safetensors(hf_dir, tmp_path):
  directory, model = hf_dir
  reference = checkpoints.load(directory)
  legacy = tmp_path / "legacy"
  legacy.mkdir()
  (legacy / "config.json").write_text((directory / "config.json").read_text())
  state = {
    k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
    for k, v in model.state_dict().items()
  }
  state["albert.embeddings.position_ids"] = torch.arange(512)[None]
  torch.save(state, legacy / "pytorch_model.bin")
  config, params = checkpoints.load(legacy)
  assert config == reference[0]
  for a, b in zip(_logits(*reference), _logits(config, params)):
    np.testing.assert_array_equal(a, b)


def test_round_trip_through_hf_layout_is_exact(hf_dir):
  directory, _ = hf_dir
  config, params = checkpoints.load(directory)
  original = load_file(str(directory / "model.safetensors"))
  exported = hf.params_to_hf(params, config)
  for key, value in original.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_convert_cli_writes_a_directory_that_load_reads_back(hf_dir, tmp_path):
  directory, _ = hf_dir
  out = tmp_path / "converted"
  result = subprocess.run(
    [sys.executable, "-m", "albert_jax.convert", f"--input={directory}", f"--output={out}"],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr
  assert json.loads((out / "config.json").read_text())["format"] == "albert_jax"
  for a, b in zip(_logits(*checkpoints.load(directory)), _logits(*checkpoints.load(out))):
    np.testing.assert_array_equal(a, b)


def test_missing_sop_head_is_initialised_like_released_checkpoints(hf_dir, tmp_path):
  """albert-base-v2 and friends ship no SOP classifier; loading still works."""
  directory, model = hf_dir
  from safetensors.torch import save_file

  trimmed = tmp_path / "no_sop"
  trimmed.mkdir()
  (trimmed / "config.json").write_text((directory / "config.json").read_text())
  save_file(
    {
      k: v.clone().contiguous()
      for k, v in model.state_dict().items()
      if not k.startswith(("sop_classifier", "predictions.decoder"))
    },
    str(trimmed / "model.safetensors"),
  )
  config, params = checkpoints.load(trimmed)
  np.testing.assert_array_equal(_logits(config, params)[0], _logits(*checkpoints.load(directory))[0])


def test_not_a_directory(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match="is not a directory"):
    checkpoints.load(tmp_path / "nothing")


def test_directory_without_config(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match="no config.json"):
    checkpoints.load(tmp_path)


def test_another_model_type(hf_dir):
  directory, _ = hf_dir
  config = json.loads((directory / "config.json").read_text())
  (directory / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
  with pytest.raises(checkpoints.CheckpointError, match="model_type='bert'.*ALBERT"):
    checkpoints.load(directory)


def test_missing_weights(hf_dir):
  directory, _ = hf_dir
  (directory / "model.safetensors").unlink()
  with pytest.raises(checkpoints.CheckpointError, match="no model.safetensors or pytorch_model.bin"):
    checkpoints.load(directory)


def test_shape_disagreeing_with_config_names_the_tensor(hf_dir):
  directory, _ = hf_dir
  config = json.loads((directory / "config.json").read_text())
  (directory / "config.json").write_text(json.dumps({**config, "intermediate_size": 32}))
  with pytest.raises(checkpoints.CheckpointError, match=r"'albert.encoder.albert_layer_groups.0.albert_layers.0.ffn"):
    checkpoints.load(directory)


def test_newer_format_is_refused(hf_dir, tmp_path):
  directory, _ = hf_dir
  out = checkpoints.convert(directory, tmp_path / "c")
  meta = json.loads((out / "config.json").read_text())
  (out / "config.json").write_text(json.dumps({**meta, "format_version": 99}))
  with pytest.raises(checkpoints.CheckpointError, match="newer albert_jax"):
    checkpoints.load(out)


def test_convert_refuses_a_non_empty_output(hf_dir, tmp_path):
  directory, _ = hf_dir
  out = tmp_path / "busy"
  out.mkdir()
  (out / "keep.txt").write_text("precious")
  with pytest.raises(checkpoints.CheckpointError, match="not empty.*--overwrite"):
    checkpoints.convert(directory, out)
  assert (out / "keep.txt").read_text() == "precious"


def test_fine_tuning_workdir_before_its_first_evaluation(tmp_path):
  meta = {"format": checkpoints.FORMAT, "format_version": checkpoints.FORMAT_VERSION, "task": "squad_v2"}
  (tmp_path / "config.json").write_text(json.dumps({**meta, "model": model_lib.AlbertConfig(**SMALL).to_dict()}))
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(checkpoints.CheckpointError, match="squad_v2 fine-tuning workdir .* has no best checkpoint yet"):
    checkpoints.load(tmp_path)

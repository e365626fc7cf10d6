"""The Colab notebook runs end to end on CPU (TINY settings, SST-2 from the shared TSVs), so it cannot rot."""

import json
import pathlib

import nbclient
import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "albert_colab_tpu.ipynb"

# Appended after the notebook's last cell, in the same kernel: what the run produced, as one JSON line.
REPORT = """
import json
hf_top = [hf_fill_mask(text, top_k=1)[0] for text in TEXTS]
import albert_jax
print(json.dumps({
    "albert_jax_file": albert_jax.__file__,
    "tiny": TINY,
    "mesh_devices": int(mesh.size),
    "pretrain_loss": pretrain_metrics["loss"],
    "sst2_results": sst2_results,
    "jax_top": [[masks[0][0].token_id, masks[0][0].probability] for masks in predictions],
    "hf_top": [[top["token"], top["score"]] for top in hf_top],
}))
"""


def with_parameters(notebook, tag="parameters", **values):
  """The notebook with a cell setting `values` after its cell tagged `tag` (papermill's convention)."""
  index = next(i for i, cell in enumerate(notebook.cells) if tag in cell.metadata.get("tags", ()))
  source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
  notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
  return notebook


def test_the_notebook_source_is_valid_and_clean():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert all(not cell.outputs and cell.execution_count is None for cell in code), "commit the notebook without outputs"
  assert sum("parameters" in cell.metadata.get("tags", ()) for cell in code) == 1
  # The code's source is the first setting a reader meets: the first code cell, empty until the reader sets it.
  assert code[0].metadata.get("tags") == ["source"] and 'ALBERT_JAX_SOURCE = ""' in code[0].source
  assert notebook.metadata["accelerator"] == "TPU"


@pytest.mark.slow
def test_the_notebook_runs_end_to_end_on_cpu(shared_data, tmp_path):
  notebook = with_parameters(
    nbformat.read(NOTEBOOK, as_version=4),
    TINY=True,
    SST2_DIR=str(shared_data / "glue" / "SST-2"),
    WORKDIR=str(tmp_path / "workdir"),
  )
  notebook = with_parameters(notebook, "source", ALBERT_JAX_SOURCE=str(REPO))  # this checkout, as a Colab user's
  notebook.cells.append(nbformat.v4.new_code_cell(REPORT))
  # The kernel starts outside the checkout: albert_jax is found only through ALBERT_JAX_SOURCE.
  client = nbclient.NotebookClient(
    notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
  )
  client.execute()

  report = json.loads(notebook.cells[-1].outputs[-1]["text"].strip().splitlines()[-1])
  assert report["albert_jax_file"] == str(REPO / "albert_jax" / "__init__.py") and report["tiny"]
  assert report["mesh_devices"] >= 1
  assert report["pretrain_loss"] == pytest.approx(report["pretrain_loss"])  # finite
  assert 0.0 <= report["sst2_results"]["dev"]["accuracy"] <= 1.0
  # transformers, loading the export, predicts what albert_jax predicts.
  for (jax_id, jax_probability), (hf_id, hf_probability) in zip(report["jax_top"], report["hf_top"]):
    assert hf_id == jax_id
    assert hf_probability == pytest.approx(jax_probability, rel=1e-3)

  workdir = tmp_path / "workdir"
  assert (workdir / "pretrain" / "curves.png").stat().st_size > 0
  assert (workdir / "sst2" / "eval_results.json").exists()
  assert {"config.json", "model.safetensors", "spiece.model"} <= {p.name for p in (workdir / "hf").iterdir()}

"""The fine-tuning recipes against the original release's values (albert_jax/tools/recipes_table.py holds them,
with their sources): every difference is marked and explained, and the README's table is the generator's output."""

import importlib.util
import re

import pytest

from albert_jax import config_lib
from albert_jax.tools import recipes_table
from tests.conftest import REPO


def test_every_difference_from_the_release_is_marked_and_explained():
  assert set(recipes_table.RELEASE) == set(config_lib.RECIPES)  # every GLUE task, SQuAD v1.1 and 2.0, RACE
  assert recipes_table.unexplained() == []
  assert recipes_table.stale() == []
  assert set(recipes_table.differences()) == {("squad_v2", "max_seq_length")}


def test_a_difference_without_a_note_fails(monkeypatch):
  recipes = dict(config_lib.RECIPES)
  recipes["mrpc"] = config_lib.Recipe(3e-5, 32, 800, 200, dropout=0.0)
  recipes["squad_v2"] = config_lib.Recipe(3e-5, 48, 8144, 814, dropout=0.0, splits=("train", "dev"))  # seq 512
  monkeypatch.setattr(config_lib, "RECIPES", recipes)
  assert recipes_table.unexplained() == [("mrpc", "learning_rate")]
  assert recipes_table.stale() == [("squad_v2", "max_seq_length")]
  assert "| MRPC | **3e-5** (release 2e-5) [?] |" in recipes_table.render()


def test_race_uses_the_readme_setting_for_v2_models():
  values = recipes_table.configured("race")
  assert (values["learning_rate"], values["dropout"], values["classifier_dropout"]) == (1e-5, 0.0, 0.1)


def _experiment(name, arg):
  spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize(
  "task, experiment, arg",
  [*((t, "glue.py", t) for t in config_lib.GLUE_TASKS), ("squad_v1", "squad.py", "v1"), ("squad_v2", "squad.py", "v2")]
  + [("race", "race.py", "")],
)
def test_experiment_files_run_the_tabled_values(task, experiment, arg):
  config = _experiment(experiment, arg)
  tabled = recipes_table.configured(task)
  assert (config.learning_rate, config.batch_size, config.num_train_steps, config.warmup_steps) == (
    tabled["learning_rate"],
    tabled["batch_size"],
    tabled["num_train_steps"],
    tabled["warmup_steps"],
  )
  assert config.model.hidden_dropout_prob == config.model.attention_probs_dropout_prob == tabled["dropout"]
  assert (config.model.classifier_dropout_prob, config.task.max_seq_length) == (
    tabled["classifier_dropout"],
    tabled["max_seq_length"],
  )


def test_readme_holds_the_generated_table():
  readme = (REPO / "README.md").read_text(encoding="utf-8")
  found = re.search(r"<!-- recipes table: .*? -->\n(.*?)<!-- end recipes table -->", readme, re.DOTALL)
  assert found, "README.md lost its recipes-table markers"
  assert found.group(1) == recipes_table.render(), "regenerate it: python -m albert_jax.tools.recipes_table"

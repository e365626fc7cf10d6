"""Every task's fine-tuning recipe next to the original release's: `python -m albert_jax.tools.recipes_table`.

It prints the README's table (markdown), built from the configs (`config_lib.finetuning`) and `RELEASE`, with
every cell where albert_jax differs marked and explained (`DIFFERENCES`); tests/test_recipes_table.py fails on a
difference without an explanation, on an explanation without a difference, and on a README whose table is not
this output.

Where the release's values come from. google-research/albert's README has no table of fine-tuning
hyperparameters: they are Table 14 of the ALBERT paper (Lan et al., arXiv:1909.11942 v6, appendix A.4), which the
release's run_glue.sh repeats for GLUE (learning rate, batch size, steps, warmup; no dropout there). For RACE the
README's note on the v2 models replaces Table 14's row: "for RACE ... we use a learning rate of 1e-5 and 0 ALBERT
DR (dropout rate for ALBERT in finetuning). The original (v1) RACE hyperparameter will cause model divergence for
v2 models"; its run_race command and run_race.py's flags agree (lr 1e-5, head dropout 0.1).
"""

import dataclasses

from albert_jax import config_lib

# (config value, column title); "ALBERT DR" is the backbone's hidden and attention dropout, "classifier DR" the
# head's, as Table 14 names them.
COLUMNS = {
  "learning_rate": "LR",
  "batch_size": "batch",
  "dropout": "ALBERT DR",
  "classifier_dropout": "classifier DR",
  "num_train_steps": "steps",
  "warmup_steps": "warmup",
  "max_seq_length": "max seq",
}
TASK_TITLES = {
  "cola": "CoLA",
  "sst2": "SST-2",
  "mrpc": "MRPC",
  "stsb": "STS-B",
  "qqp": "QQP",
  "mnli": "MNLI",
  "qnli": "QNLI",
  "rte": "RTE",
  "wnli": "WNLI",
  "squad_v1": "SQuAD v1.1",
  "squad_v2": "SQuAD 2.0",
  "race": "RACE",
}


@dataclasses.dataclass(frozen=True)
class Release:
  """One task's values in the original release, and where they are written."""

  learning_rate: float
  batch_size: int
  dropout: float
  classifier_dropout: float
  num_train_steps: int
  warmup_steps: int
  max_seq_length: int
  source: str


_TABLE_14 = "Table 14"
_GLUE = "Table 14; run_glue.sh"
RELEASE = {
  "cola": Release(1e-5, 16, 0.0, 0.1, 5336, 320, 512, _GLUE),
  "sst2": Release(1e-5, 32, 0.0, 0.1, 20935, 1256, 512, _GLUE),
  "mrpc": Release(2e-5, 32, 0.0, 0.1, 800, 200, 512, _GLUE),
  "stsb": Release(2e-5, 16, 0.0, 0.1, 3598, 214, 512, _GLUE),
  "qqp": Release(5e-5, 128, 0.1, 0.1, 14000, 1000, 512, _GLUE),
  "mnli": Release(3e-5, 128, 0.0, 0.1, 10000, 1000, 512, _GLUE),
  "qnli": Release(1e-5, 32, 0.0, 0.1, 33112, 1986, 512, _GLUE),
  "rte": Release(3e-5, 32, 0.1, 0.1, 800, 200, 512, _GLUE),
  "wnli": Release(2e-5, 16, 0.1, 0.1, 2000, 250, 512, _TABLE_14 + " (run_glue.sh has no WNLI)"),
  "squad_v1": Release(5e-5, 48, 0.0, 0.1, 3649, 365, 384, _TABLE_14),
  "squad_v2": Release(3e-5, 48, 0.0, 0.1, 8144, 814, 512, _TABLE_14),
  "race": Release(1e-5, 32, 0.0, 0.1, 12000, 1000, 512, "Table 14; LR and ALBERT DR: the README's v2 note"),
}

# (task, column) -> why albert_jax's value differs from RELEASE's.
DIFFERENCES = {
  ("squad_v2", "max_seq_length"): (
    "Table 14 gives 512 for SQuAD 2.0; the release README's run_squad_v2 command and run_squad_v2.py's default "
    "use 384, as for v1.1, and so does albert_jax (`--config.task.max_seq_length=512` gives Table 14's)."
  ),
}

# What the table's columns do not show, each a line under it.
NOTES = (
  "The release README's run_squad_v2 command trains SQuAD 2.0 with lr 5e-5 for 2 epochs; albert_jax follows "
  "Table 14 (3e-5, 8,144 steps: 3 epochs of 130,319 questions at batch 48).",
  "SQuAD v1.1's warmup is Table 14's 365; the README's `--warmup_proportion=.1` gives int(0.1 × 3,649) = 364.",
  "Classifier DR is the dropout of the task head: GLUE's and RACE's classifiers and, for SQuAD 2.0, the release's "
  "answerability classifier (`config.task.head='xlnet'`); the BERT-style span head (SQuAD v1.1) has none, in the "
  "original either.",
  "RACE with a v1 checkpoint: Table 14's v1 row is lr 2e-5 with ALBERT DR 0.1.",
)


def configured(task: str) -> dict[str, float]:
  """The COLUMNS values of `config_lib.finetuning(task)`, as the fine-tuning trainer reads them."""
  c = config_lib.finetuning(task, data_dir="")
  if c.model.hidden_dropout_prob != c.model.attention_probs_dropout_prob:
    raise ValueError(f"{task}: hidden and attention dropout differ; the table has one ALBERT DR column.")
  return {
    "learning_rate": c.learning_rate,
    "batch_size": c.batch_size,
    "dropout": c.model.hidden_dropout_prob,
    "classifier_dropout": c.model.classifier_dropout_prob,
    "num_train_steps": c.num_train_steps,
    "warmup_steps": c.warmup_steps,
    "max_seq_length": c.task.max_seq_length,
  }


def differences() -> dict[tuple[str, str], tuple[float, float]]:
  """(task, column) -> (albert_jax's value, the release's) wherever they differ."""
  out = {}
  for task, release in RELEASE.items():
    for column, value in configured(task).items():
      if value != getattr(release, column):
        out[(task, column)] = (value, getattr(release, column))
  return out


def unexplained() -> list[tuple[str, str]]:
  """Differences without an entry in DIFFERENCES."""
  return sorted(set(differences()) - set(DIFFERENCES))


def stale() -> list[tuple[str, str]]:
  """Entries of DIFFERENCES where albert_jax agrees with the release."""
  return sorted(set(DIFFERENCES) - set(differences()))


def _format(column: str, value: float) -> str:
  if column == "learning_rate":
    return f"{value:.0e}".replace("e-0", "e-")
  return f"{value:g}"


def render() -> str:
  """The README's table: albert_jax's value per cell, the release's beside it where they differ."""
  marks = {key: n for n, key in enumerate(DIFFERENCES, start=1)}
  found = differences()
  lines = [
    "| task | " + " | ".join(COLUMNS.values()) + " | release source |",
    "|---" * (len(COLUMNS) + 2) + "|",
  ]
  for task, release in RELEASE.items():
    cells = []
    for column, value in configured(task).items():
      cell = _format(column, value)
      if (task, column) in found:
        mark = marks.get((task, column), "?")
        cell = f"**{cell}** (release {_format(column, getattr(release, column))}) [{mark}]"
      cells.append(cell)
    lines.append(f"| {TASK_TITLES[task]} | " + " | ".join(cells) + f" | {release.source} |")
  lines.append("")
  lines += [f"[{marks[key]}] {TASK_TITLES[key[0]]}, {COLUMNS[key[1]]}: {why}" for key, why in DIFFERENCES.items()]
  lines += ["", *(f"- {note}" for note in NOTES)]
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  print(render(), end="")

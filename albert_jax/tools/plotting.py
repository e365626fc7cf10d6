"""Training curves from a workdir's metrics.jsonl, as a PNG (matplotlib, imported only here)."""

import json
import pathlib

CURVES = (
  ("loss", "MLM and SOP loss", ("mlm_loss", "sop_loss")),
  ("accuracy", "MLM and SOP accuracy", ("mlm_accuracy", "sop_accuracy")),
)


def read_metrics(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist; train first (python -m albert_jax.train ... --workdir=DIR).")
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training_curves(workdir, output=None) -> pathlib.Path:
  """Train and eval curves of MLM/SOP loss and accuracy; returns the PNG's path (default WORKDIR/curves.png)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = read_metrics(workdir)
  fig, axes = plt.subplots(1, len(CURVES), figsize=(11, 4))
  for ax, (_, title, names) in zip(axes, CURVES):
    for split, style in (("train", "-"), ("eval", "o--")):
      for name in names:
        points = [(r["step"], r[f"{split}/{name}"]) for r in rows if f"{split}/{name}" in r]
        if points:
          ax.plot(*zip(*points), style, label=f"{split} {name}")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.legend()
    ax.grid(alpha=0.3)
  fig.tight_layout()
  output = pathlib.Path(output or pathlib.Path(workdir) / "curves.png")
  fig.savefig(output, dpi=100)
  plt.close(fig)
  return output


if __name__ == "__main__":
  import sys

  print(plot_training_curves(*sys.argv[1:3]))

"""Corpus preparation alone: `python -m albert_jax.prepare --config=experiments/base.py --config.data.data_dir=DIR`.

Tokenises the configured corpus once into DIR (local or gs://): in this process, in N local processes
(`--config.data.prepare_workers=N`), or on any Apache Beam runner (`--config.data.beam_options="--runner=..."`;
BUILD.md gives Dataflow's). Training runs with the same `--config.data` flags then find it prepared, on any
number of hosts (`albert_jax.data.pipeline.prepare`).
"""

from absl import flags
from ml_collections import config_flags

from albert_jax import cli
from albert_jax.data import pipeline

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Experiment config; its data section says what to prepare, e.g. experiments/base.py.",
  lock_config=True,
)


def main():
  documents = pipeline.prepare(_CONFIG.value.data)
  print(f"Prepared in {_CONFIG.value.data.data_dir}: {len(documents)} training documents.")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  cli.run(main)

"""A run whose every path is in a bucket (the Cloud Storage emulator) loses nothing and computes what it does on disk.

Pretraining with `--workdir=gs://...` (its vocabulary and prepared data in the bucket too) is killed mid-run and
resumed; its final parameters must be bitwise equal to the uninterrupted run on local disk (`straight_run`,
tests/conftest.py), and every loss it logged equal. It is then fine-tuned from the bucket into the bucket, and
exported from the bucket, each compared with the same step from the local run.
"""

import json
import re
import signal
import sys
import time

import numpy as np
import pytest

from albert_jax import checkpoints, config_lib, storage
from albert_jax.checkpoints import export, native
from albert_jax.trainers import finetuning
from tests import cli_helpers as cli
from tests import gcs_emulator

CHECKPOINT_EVERY = 10


def _train_command(workdir: str, vocab: str) -> list[str]:
  """cli_helpers' tiny training command, every path in the bucket (its data in WORKDIR/data, the default)."""
  command = cli.train_command(
    workdir, storage.path("/unused"), cli.STEPS, f"--config.checkpoint_every_steps={CHECKPOINT_EVERY}"
  )
  return [a for a in command if not a.startswith(("--config.data.data_dir=", "--config.data.vocab="))] + [
    f"--config.data.vocab={vocab}"
  ]


def _loss_rows(workdir: str) -> list[tuple[int, float]]:
  path = storage.path(workdir) / "metrics.jsonl"
  rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
  return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


def _kill_after_a_checkpoint(workdir: str, command: list[str], log) -> list[int]:
  """Starts the run and SIGKILLs it once its second checkpoint is committed; returns the complete steps then."""
  proc = cli.spawn(command, log)
  marker = storage.path(f"{workdir}/checkpoints/{2 * CHECKPOINT_EVERY}/commit_success.txt")
  # One request a poll: the emulator answers one request at a time, and the run writes many.
  cli.wait_for(marker.exists, proc, poll=0.2)
  proc.send_signal(signal.SIGKILL)
  assert cli.finish([proc], timeout=60) == [-signal.SIGKILL]
  return native.training_steps(workdir)


def _tiny_sst2(init_checkpoint, data_dir):
  config = config_lib.tiny_finetuning(config_lib.finetuning("sst2", str(data_dir / "SST-2")), vocab="")
  config.update(init_checkpoint=str(init_checkpoint), num_train_steps=4, eval_every_steps=2, checkpoint_every_steps=2)
  config.task.max_examples = 32
  return config


def _listing(folder: str) -> list[str]:
  """'path (bytes)' of every object under `folder`, relative to it."""
  root = storage.path(folder)
  return sorted(f"{str(p)[len(folder) + 1 :]} ({p.stat().length} B)" for p in storage._files(root))  # pylint: disable=protected-access


def test_a_run_in_a_bucket_is_killed_resumed_fine_tuned_and_exported_bitwise_as_on_disk(
  straight_run, shared_data_dir, generated_glue, gcs, tmp_path, capsys
):
  vocab, workdir = f"{gcs}/vocab/spiece.model", f"{gcs}/run"
  storage.copy(shared_data_dir / "spiece.model", vocab)
  command = _train_command(workdir, vocab)
  killed_at = _kill_after_a_checkpoint(workdir, command, tmp_path / "killed.log")
  resumed = cli.run(command)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resumed from checkpoint at step {killed_at[-1]}." in resumed.stderr, resumed.stderr[-3000:]
  assert "google_auth_provider" not in resumed.stderr, resumed.stderr[-3000:]  # TensorStore's credentials line

  cli.assert_same_params(cli.final_params(workdir), cli.final_params(straight_run))
  straight, logged = cli.losses(straight_run), _loss_rows(workdir)
  assert {step for step, _ in logged} == set(range(1, cli.STEPS + 1))  # nothing lost by the kill
  assert all(straight[step] == loss for step, loss in logged)

  # Fine-tuning from the bucket into the bucket, and from the local run into a local folder.
  in_bucket = finetuning.finetune(_tiny_sst2(workdir, generated_glue), f"{gcs}/finetune")
  on_disk = finetuning.finetune(_tiny_sst2(straight_run, generated_glue), str(tmp_path / "finetune"))
  assert in_bucket == on_disk and in_bucket["best_step"] in (2, 4)
  # checkpoints.load of a fine-tuning workdir: its best checkpoint's parameters, the task head included.
  cli.assert_same_params(checkpoints.load(f"{gcs}/finetune")[1], checkpoints.load(tmp_path / "finetune")[1])
  assert json.loads(storage.path(f"{gcs}/finetune/eval_results.json").read_text()) == in_bucket
  assert (
    storage.path(f"{gcs}/finetune/sst2_dev.tsv").read_text() == (tmp_path / "finetune" / "sst2_dev.tsv").read_text()
  )

  # Export from the bucket (the command line) and from disk: the same Hugging Face directory.
  result = cli.run(
    [
      sys.executable,
      "-m",
      "albert_jax.export",
      f"--checkpoint={workdir}",
      f"--output={tmp_path / 'hf'}",
      "--verbosity=1",  # which brings back TensorStore's line
    ]
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "google_auth_provider.cc:136] Using GOOGLE_AUTH_TOKEN_FOR_TESTING" in result.stderr, result.stderr[-3000:]
  local = export.export(straight_run, tmp_path / "hf_local")
  _assert_same_export(tmp_path / "hf", local)

  listing = _listing(gcs)
  _assert_bucket_holds(listing, killed_at)
  with capsys.disabled():
    print(f"\nkilled once checkpoints {killed_at} were committed; at the end {gcs} held {len(listing)} objects:")
    print("\n".join(f"  {line}" for line in _summarised(listing)))


def _assert_same_export(a, b):
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  weights_a, weights_b = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
  assert sorted(weights_a) == sorted(weights_b)
  for name, value in weights_a.items():
    np.testing.assert_array_equal(value, weights_b[name])
  for name in ("config.json", "spiece.model", "tokenizer.json", "tokenizer_config.json"):
    assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _assert_bucket_holds(listing: list[str], killed_at: list[int]):
  names = [line.rsplit(" (", 1)[0] for line in listing]
  for name in ("run/config.json", "run/experiment.json", "run/spiece.model", "run/metrics.jsonl", "vocab/spiece.model"):
    assert name in names, names
  steps = sorted({int(m.group(1)) for n in names if (m := re.match(r"run/checkpoints/(\d+)/commit_success.txt$", n))})
  assert steps[-1] == cli.STEPS and killed_at[-1] <= steps[0] + 2 * CHECKPOINT_EVERY, steps
  assert len([n for n in names if n.startswith("run/tensorboard/events.out.tfevents.")]) == 2  # one per start
  assert any(n.endswith(f"1.0.0/{'albert_jax_prepared.json'}") for n in names if n.startswith("run/data/"))
  assert any(n.startswith("finetune/best/") for n in names) and "finetune/eval_results.json" in names
  assert not [n for n in names if ".write-check-" in n or ".partial-" in n or "incomplete." in n]


def _summarised(listing: list[str]) -> list[str]:
  """The listing with each checkpoint step and each prepared dataset folded into one line."""
  folded, seen = [], {}
  for line in listing:
    name = line.rsplit(" (", 1)[0]
    group = re.match(r"((?:run|finetune)/(?:checkpoints|best)/[^/]+|run/data/tokenized_documents/[^/]+/[^/]+)/", name)
    if group:
      seen[group.group(1)] = seen.get(group.group(1), 0) + 1
    else:
      folded.append(line)
  folded.extend(f"{key}/ ({count} objects)" for key, count in seen.items())
  return sorted(folded)


@pytest.mark.parametrize(
  "flag, message",
  [
    ("--workdir=gs://no-such-bucket/run", "the bucket gs://no-such-bucket does not exist. Create it"),
    (f"--workdir=gs://{gcs_emulator.READ_ONLY_BUCKET}/run", "permission denied (tester@test-project.iam"),
  ],
)
def test_a_workdir_in_a_bucket_that_cannot_be_written_ends_the_run_at_once(flag, message, shared_data_dir, gcs_server):
  command = [a if not a.startswith("--workdir=") else flag for a in cli.train_command("W", shared_data_dir, 5)]
  started = time.monotonic()
  result = cli.run(command)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: Cannot write to {flag.split('=', 1)[1]} (--workdir): ") and message in last, last
  assert time.monotonic() - started < 60

"""Local disks and Cloud Storage buckets (`gs://`, here a local emulator) keep the same guarantees.

A bucket has no rename and no append; one upload is atomic. Each test runs on a local folder and in the
emulator's bucket, or checks what is particular to a bucket.
"""

import contextlib
import json
import struct

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from albert_jax import checkpoints, storage
from albert_jax import model as model_lib
from albert_jax.trainers import checkpointing, core, metric_writer
from tests import cli_helpers as cli
from tests import fixtures, gcs_emulator


@pytest.fixture(params=["disk", "bucket"])
def folder(request, tmp_path) -> str:
  """A local folder, or a folder in the emulator's bucket."""
  return str(tmp_path / "folder") if request.param == "disk" else request.getfixturevalue("gcs")


def _names(folder) -> list[str]:
  return sorted(p.name for p in storage.path(folder).iterdir())


def test_files_are_replaced_and_copied_whole(folder):
  storage.make_dirs(folder)
  target = f"{folder}/config.json"
  storage.write_text_atomic(target, '{"version": 1}')
  storage.write_text_atomic(target, '{"version": 2}')
  storage.copy(target, f"{folder}/copy.json")
  assert json.loads(storage.path(f"{folder}/copy.json").read_text()) == {"version": 2}
  assert _names(folder) == ["config.json", "copy.json"]  # no partial file left behind


def test_appended_lines_survive_a_restart(folder):
  """metrics.jsonl: a bucket object cannot be appended to (gcsfs turns append into overwrite); no line is lost."""
  storage.make_dirs(folder)
  lines = storage.AppendedText(f"{folder}/metrics.jsonl")
  lines.write("1\n")
  lines.write("2\n")
  lines.flush()
  assert storage.path(f"{folder}/metrics.jsonl").read_text() == "1\n2\n"  # flushed, before any close
  del lines  # a killed run closes nothing
  resumed = storage.AppendedText(f"{folder}/metrics.jsonl")
  resumed.write("3\n")
  resumed.close()
  assert storage.path(f"{folder}/metrics.jsonl").read_text() == "1\n2\n3\n"


@pytest.mark.parametrize(
  "where, message",
  [
    ("gs://no-such-bucket/run", "the bucket gs://no-such-bucket does not exist. Create it (gcloud storage buckets"),
    (f"gs://{gcs_emulator.READ_ONLY_BUCKET}/run", "permission denied (tester@test-project.iam.gserviceaccount.com"),
    ("read-only disk", "Read-only file system. Make it writable or choose another --workdir."),
  ],
)
def test_a_place_that_cannot_be_written_is_one_line_saying_what_to_do(where, message, tmp_path, request):
  if where.startswith("gs://"):
    request.getfixturevalue("gcs_server")
    context = contextlib.nullcontext(where)
  else:
    context = fixtures.read_only_folder(tmp_path / "ro")
  with context as place:
    target = f"{place}/run" if where == "read-only disk" else place
    with pytest.raises(storage.StorageError) as error:
      storage.check_writable(target, "--workdir")
  text = str(error.value)
  assert text.startswith(f"Cannot write to {target} (--workdir): ") and message in text, text
  assert "\n" not in text


def test_globs_match_objects_in_a_bucket(gcs):
  for name in ("a.txt", "b.txt", "c.md", "sub/d.txt"):
    storage.path(f"{gcs}/{name}").write_text(name)
  assert storage.glob(f"{gcs}/*.txt") == [f"{gcs}/a.txt", f"{gcs}/b.txt"]
  assert storage.glob(f"{gcs}/s*/d.txt") == [f"{gcs}/sub/d.txt"]
  assert storage.glob(f"{gcs}/c.md") == [f"{gcs}/c.md"] and storage.glob(f"{gcs}/none.md") == []
  with pytest.raises(storage.StorageError, match="the bucket gs://no-such-bucket does not exist"):
    storage.glob("gs://no-such-bucket/*.txt")


def _save(manager, step: int):
  state = {"w": jnp.arange(4.0) * step}
  manager.save(step, args=checkpointing.composite({"state": ocp.args.StandardSave(state)}), force=True)
  manager.wait_until_finished()


def test_a_checkpoint_step_written_by_another_run_is_reported_as_such(tmp_path):
  other_run = checkpointing.checkpoint_manager(tmp_path / "checkpoints", ("state",), 5)
  _save(other_run, 2)
  this_run = checkpointing.checkpoint_manager(tmp_path / "checkpoints", ("state",), 5)  # started in the same workdir
  with pytest.raises(core.CheckpointWriteError) as error:
    _save(this_run, 2)
  text = str(error.value)
  assert text.startswith(
    f"Writing a checkpoint to {tmp_path / 'checkpoints'} failed: StepAlreadyExistsError: Checkpoint for step 2 "
    "already exists. Another run is writing checkpoints into this --workdir, or an earlier start left step 2 there"
  ), text
  assert f"move {tmp_path / 'checkpoints' / '2'} aside" in text and "full or read-only" not in text, text


def test_a_checkpoint_folder_on_a_read_only_disk_is_told_to_be_made_writable(tmp_path):
  with fixtures.read_only_folder(tmp_path / "ro") as place:
    with pytest.raises(core.CheckpointWriteError) as error:
      checkpointing.checkpoint_manager(place, ("state",), 5)
  text = str(error.value)
  assert "Read-only file system" in text and "That place cannot be written: make it writable; then run again" in text
  assert "(no checkpoint was complete yet)" in text and "make room" not in text, text


def _restore_newest(manager):
  target = {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}
  restored = checkpointing.restore_newest(manager, checkpointing.composite({"state": ocp.args.StandardRestore(target)}))
  return int(restored["state"]["w"][1])  # the step it was saved at


def _truncate_largest_file(step_dir: epath.Path):
  files = [p for p in storage._files(step_dir / "state")]  # pylint: disable=protected-access
  victim = max(files, key=lambda p: p.stat().length)
  victim.write_bytes(victim.read_bytes()[: victim.stat().length // 2])


def test_a_damaged_checkpoint_in_a_bucket_is_moved_aside_even_if_the_move_is_cut_short(gcs, monkeypatch):
  folder = storage.path(gcs) / "checkpoints"
  manager = checkpointing.checkpoint_manager(folder, ("state",), 5)
  _save(manager, 1)
  _save(manager, 2)
  assert _names(folder / "2")[:2] == ["_CHECKPOINT_METADATA", checkpointing.COMMIT_MARKER]  # marks it complete

  _truncate_largest_file(folder / "2")
  assert _restore_newest(manager) == 1
  assert _names(folder)[0] == "1" and _names(folder)[1].startswith("2.damaged-") and len(_names(folder)) == 2
  _save(manager, 2)  # the run saves that step again when it reaches it
  assert manager.all_steps() == [1, 2] and _restore_newest(manager) == 2

  # A kill during the move, right after the commit marker went: the step no longer counts, and is saved again.
  _truncate_largest_file(folder / "2")
  unlink = type(folder).unlink

  def killed_after_the_marker(path, *args, **kwargs):
    if path.name != checkpointing.COMMIT_MARKER:
      raise KeyboardInterrupt("killed")
    return unlink(path, *args, **kwargs)

  monkeypatch.setattr(type(folder), "unlink", killed_after_the_marker)
  with pytest.raises(KeyboardInterrupt):
    _restore_newest(manager)
  monkeypatch.undo()
  restarted = checkpointing.checkpoint_manager(folder, ("state",), 5)
  assert restarted.all_steps() == [1]
  _save(restarted, 2)
  assert _restore_newest(restarted) == 2


def _events(data: bytes):
  """(step, tag, value) of a TensorBoard event file (TFRecord framing: length, its CRC, the Event, its CRC)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  pos, out = 0, []
  while pos < len(data):
    (length,) = struct.unpack_from("<Q", data, pos)
    event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
    out.extend((event.step, v.tag, v.simple_value) for v in event.summary.value)
    pos += 12 + length + 4
  return out


def test_metrics_and_tensorboard_events_reach_a_bucket_as_they_are_written(gcs):
  workdir = storage.path(gcs)
  writer = metric_writer.MetricWriter(workdir)
  writer.write(1, "train", {"loss": 7.5})
  writer.write(2, "train", {"loss": 3.75})
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert rows == [{"step": 1, "train/loss": 7.5}, {"step": 2, "train/loss": 3.75}]  # before close: a kill keeps them
  (events,) = (workdir / "tensorboard").iterdir()  # tensorboardX writes its events to the file every 2 minutes
  writer.close()
  assert _events(events.read_bytes()) == [(1, "train/loss", 7.5), (2, "train/loss", 3.75)]


def test_checkpoints_save_and_load_in_a_bucket(gcs, generated_vocab, tmp_path):
  """albert_jax's own format and a Hugging Face directory, each read from the bucket with its vocabulary."""
  cfg = model_lib.AlbertConfig(
    vocab_size=500,
    embedding_size=8,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
  )
  params = flax.linen.unbox(
    jax.jit(model_lib.AlbertForPreTraining(cfg).init)(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))
  )
  native = checkpoints.save(f"{gcs}/native", cfg, params, spiece_model=generated_vocab)
  assert checkpoints.find_vocab(native) == native / "spiece.model"
  loaded_cfg, loaded = checkpoints.load(f"{gcs}/native")
  assert loaded_cfg == cfg
  cli.assert_same_params(loaded, params)

  from albert_jax.checkpoints import export  # pylint: disable=g-import-not-at-top

  hf_dir = export.export(f"{gcs}/native", tmp_path / "hf")
  for name in ("config.json", "model.safetensors", "spiece.model"):
    storage.copy(hf_dir / name, f"{gcs}/hf/{name}")
  _, from_hf = checkpoints.load(f"{gcs}/hf")
  cli.assert_same_params(from_hf, params)
  with pytest.raises(checkpoints.CheckpointError, match="--output=gs://.*local directory"):
    export.export(f"{gcs}/native", f"{gcs}/hf_out")

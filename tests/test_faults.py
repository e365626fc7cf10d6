"""Reliability: faults injected into real training runs lose nothing; bad input ends in a clear message.

The runs are `albert_jax.train` and `albert_jax.finetune` subprocesses on the tiny test configs (see
tests/cli_helpers.py). Every resumed run must end with parameters bitwise
equal to the uninterrupted run's, and every wait is bounded: a run that hangs
is killed and fails its test.
"""

import collections
import contextlib
import gc
import hashlib
import json
import logging
import os
import pathlib
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import flax.linen
import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from albert_jax import checkpoints, config_lib
from albert_jax import model as model_lib
from albert_jax import tokenizer as tokenizer_lib
from albert_jax.checkpoints import native
from albert_jax.data import corpus, pipeline
from albert_jax.trainers import checkpointing, pretraining
from tests import cli_helpers as cli

SEED = 9  # draws the moments of the faults
EVERY = 3  # checkpoint interval of the faulty run
RUN_FLAGS = (f"--config.checkpoint_every_steps={EVERY}", "--config.keep_checkpoints=3")
TMP = ".orbax-checkpoint-tmp"


# ---------------------------------------------------------------------------
# Helpers: what is on disk, damage, small disks.


def _complete(workdir) -> list[int]:
  return native.training_steps(workdir) if (workdir / "checkpoints").is_dir() else []


def _writing(workdir) -> bool:
  """Whether an asynchronous checkpoint write is under way (orbax renames its folder when complete)."""
  folder = workdir / "checkpoints"
  return folder.is_dir() and any(TMP in p.name for p in folder.iterdir())


def _fingerprint(workdir, newest: int) -> dict[str, str]:
  """The hash of every file of every checkpoint up to step `newest`."""
  folder = workdir / "checkpoints"
  return {
    str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
    for step in _complete(workdir)
    if step <= newest
    for f in (folder / str(step)).rglob("*")
    if f.is_file()
  }


def _params_at(workdir, step):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  with ocp.PyTreeCheckpointer() as checkpointer:
    return checkpointer.restore(workdir / "checkpoints" / str(step) / "state")["params"]


def _largest_array_file(step_dir: pathlib.Path) -> pathlib.Path:
  return max(
    (f for f in (step_dir / "state").rglob("*") if f.is_file() and f.parent.name == "d"), key=lambda f: f.stat().st_size
  )


def _truncate_a_file(step_dir) -> int:
  victim = _largest_array_file(step_dir)
  victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
  return int(step_dir.name)


def _delete_a_file(step_dir) -> int:
  _largest_array_file(step_dir).unlink()
  return int(step_dir.name)


def _half_written_next(step_dir) -> int:
  """The folder of the next save, as an interrupted copy leaves it: the layout complete, every other file missing."""
  step = int(step_dir.name) // EVERY * EVERY + EVERY
  copy = step_dir.parent / str(step)
  shutil.copytree(step_dir, copy)
  for f in sorted(p for p in copy.rglob("*") if p.is_file())[::2]:
    f.unlink()
  return step


def _logged_since(workdir, rows: int) -> int:
  """The newest step in metrics.jsonl after its first `rows` rows (0: none yet)."""
  return max((step for step, _ in cli.loss_rows(workdir)[rows:]), default=0)


def _resumed_from(log: str) -> int:
  """The step the run's log says it resumed from (0: a fresh start)."""
  lines = [line for line in log.splitlines() if "Resumed from checkpoint at step" in line]
  return int(lines[0].rsplit(" ", 1)[1].rstrip(".")) if lines else 0


@contextlib.contextmanager
def _small_disk(path: pathlib.Path, size="16m"):
  """A tmpfs of `size` mounted at `path`, or None where mounting is not allowed (not root)."""
  path.mkdir(parents=True)
  mounted = (
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode
    == 0
  )
  try:
    yield path if mounted else None
  finally:
    if mounted:
      subprocess.run(["umount", "-l", str(path)], check=True)


@contextlib.contextmanager
def _full(disk: pathlib.Path, room=1 << 16):
  """`disk` filled up to its last `room` bytes (less than a checkpoint), for the time of the block."""
  filler = disk / "filler"
  with open(filler, "wb", buffering=0) as f:  # unbuffered: a write the disk refused is not retried at close
    with contextlib.suppress(OSError):
      while True:
        f.write(b"\0" * room)
        f.flush()
    f.truncate(max(f.tell() - room, 0))
  try:
    yield
  finally:
    filler.unlink()


@contextlib.contextmanager
def _read_only(disk: pathlib.Path):
  subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
  try:
    yield
  finally:
    subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)


# ---------------------------------------------------------------------------
# One run, stopped again and again: every resume picks the newest intact checkpoint, nothing is lost.

# (fault, signal, damage done next to the newest checkpoint: it returns the step it damaged)
STOPS = (
  ("SIGKILL at a random step", signal.SIGKILL, _truncate_a_file),
  ("SIGKILL during an asynchronous checkpoint write", signal.SIGKILL, _delete_a_file),
  ("SIGTERM at a random step", signal.SIGTERM, _half_written_next),
)


def test_kills_preemption_damage_and_a_full_or_read_only_disk_lose_nothing(
  straight_run, shared_data_dir, tmp_path, capsys
):
  rng = random.Random(SEED)
  workdir = tmp_path / "faulty"
  cmd = cli.train_command(workdir, shared_data_dir, cli.STEPS, *RUN_FLAGS)
  survived = []

  def start():
    return cli.spawn(cmd, tmp_path / f"start{len(survived)}.log")

  def check_resume(log):
    assert _resumed_from(log) == expected, log[-3000:]
    assert ("cannot be restored" in log) == damaged, log[-3000:]

  with _small_disk(workdir / "checkpoints") as disk:
    expected, damaged = 0, False  # the step the next start must resume from; whether it must skip a damaged one
    for fault, sig, damage in STOPS:
      proc, rows = start(), len(cli.loss_rows(workdir))
      target, mid_write = expected + rng.randint(EVERY + 1, 3 * EVERY), "write" in fault
      cli.wait_for(
        lambda rows=rows, target=target, mid_write=mid_write: (
          _logged_since(workdir, rows) >= target
          and len(_complete(workdir)) >= 2
          and (_writing(workdir) or not mid_write)
        ),
        proc,
        poll=0.005 if mid_write else 0.02,
      )
      proc.send_signal(sig)
      code = cli.finish([proc], timeout=120)[0]
      check_resume(proc.log.read_text())
      assert not mid_write or _writing(workdir), "the kill came after the write it was meant to interrupt"
      newest = _complete(workdir)[-1]
      if sig == signal.SIGTERM:  # a checkpoint at the step reached, a clean exit
        assert code == 0 and newest == _logged_since(workdir, rows), cli.tail(proc)
      else:
        assert code == -signal.SIGKILL
      damaged_step = damage(workdir / "checkpoints" / str(newest))
      expected, damaged = max(s for s in _complete(workdir) if s != damaged_step), True
      survived.append(fault)

    if disk is not None:
      for fault, condition, reason in (
        ("disk full", _full, "No space left on device"),  # found at the first save
        ("read-only disk", _read_only, "Read-only file system"),
      ):  # at the start
        before = _fingerprint(workdir, expected)
        with condition(disk):
          proc = start()
          assert cli.finish([proc], timeout=300) == [1], cli.tail(proc)
        log = proc.log.read_text()
        if condition is _full:
          check_resume(log)
        message = log.strip().splitlines()[-1]
        assert message.startswith("error: Writing a checkpoint to") and reason in message, message
        assert "run again with the same --workdir" in message
        assert _fingerprint(workdir, expected) == before, "a checkpoint written before the disk fault changed"
        damaged = False
        survived.append(fault)

    proc = start()
    assert cli.finish([proc], timeout=300) == [0], cli.tail(proc)
    check_resume(proc.log.read_text())
    cli.assert_same_params(cli.final_params(workdir), cli.final_params(straight_run))
  straight = cli.losses(straight_run)
  assert all(straight[step] == loss for step, loss in cli.loss_rows(workdir))
  with capsys.disabled():
    print(f"\nsurvived, final parameters bitwise equal: {survived}")


def _bucketed_finetune_command(workdir, vocab, glue_dir, cache):
  """A tiny SST-2 fine-tuning run over two epochs, its batches in several length buckets."""
  return [
    sys.executable,
    "-m",
    "albert_jax.finetune",
    "--config=experiments/glue.py:sst2,tiny",
    f"--workdir={workdir}",
    f"--config.task.vocab={vocab}",
    f"--config.task.data_dir={glue_dir}",
    "--config.task.max_examples=80",  # 10 batches of 8 per epoch
    "--config.task.length_buckets=(16,64)",  # the rows have 7 to 23 tokens: batches of both lengths
    "--config.num_train_steps=16",
    "--config.checkpoint_every_steps=2",
    "--config.log_every_steps=1",
    "--config.eval_every_steps=0",
    f"--config.compilation_cache_dir={cache}",
  ]


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_bucketed_finetuning_killed_mid_epoch_resumes_bitwise(generated_vocab, generated_glue, tmp_path):
  straight, faulty = tmp_path / "straight", tmp_path / "faulty"
  cmd = lambda workdir: _bucketed_finetune_command(workdir, generated_vocab, generated_glue, tmp_path / "xla_cache")
  runs = [cli.spawn(cmd(straight), tmp_path / "straight.log"), cli.spawn(cmd(faulty), tmp_path / "faulty.log")]
  cli.wait_for(lambda: _logged_since(faulty, 0) >= 5 and _complete(faulty), runs[1])  # inside the first epoch
  runs[1].send_signal(signal.SIGKILL)
  assert cli.finish(runs, timeout=300) == [0, -signal.SIGKILL], cli.tail(runs[0])
  resumed_from = _complete(faulty)[-1]
  assert 2 <= resumed_from < 10
  resume = cli.spawn(cmd(faulty), tmp_path / "resume.log")
  assert cli.finish([resume], timeout=300) == [0], cli.tail(resume)
  assert _resumed_from(resume.log.read_text()) == resumed_from
  cli.assert_same_params(_params_at(faulty, 16), _params_at(straight, 16))
  assert cli.loss_rows(faulty)[-1][0] == 16
  assert all(cli.losses(straight)[step] == loss for step, loss in cli.loss_rows(faulty))
  assert "% padding" in runs[0].log.read_text()


# ---------------------------------------------------------------------------
# A checkpoint that cannot be read for a while is read again, and never called damaged.


@contextlib.contextmanager
def _file_table_full():
  """Every file this process opens fails with EMFILE ('Too many open files') until the block ends or `lift()`."""
  lowest_free = os.open(os.devnull, os.O_RDONLY)  # a new descriptor takes the lowest free number
  os.close(lowest_free)
  limits = resource.getrlimit(resource.RLIMIT_NOFILE)
  resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, limits[1]))
  try:
    yield lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limits)
  finally:
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)
    gc.collect()  # the event loops orbax could not finish making go now, inside the test that made them


class _OnRetry(logging.Handler):
  """Calls `action` when the restore says it reads a step again: the operator who fixes the storage meanwhile."""

  def __init__(self, action):
    super().__init__()
    self.action = action

  def emit(self, record):
    if "reading it again" in record.getMessage():
      self.action()


# An event loop orbax starts while the file table is full is left half made; its finaliser complains.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_an_unreadable_checkpoint_is_read_again_then_stops_the_run_and_only_damage_is_moved_aside(
  tmp_path, caplog, monkeypatch
):
  monkeypatch.setattr(checkpointing, "RETRY_SECONDS", 0.05)
  manager = checkpointing.checkpoint_manager(tmp_path, ("state",), 5)
  for step in (1, 2):
    manager.save(
      step, args=checkpointing.composite(dict(state=ocp.args.StandardSave({"w": np.full(4096, float(step))})))
    )
  manager.wait_until_finished()
  restore = lambda: checkpointing.restore_newest(
    manager, checkpointing.composite(dict(state=ocp.args.StandardRestore()))
  )["state"]["w"]
  absl_logger = logging.getLogger("absl")

  # The file table is full at the first attempt and freed before the second: step 2 is read.
  with _file_table_full() as lift:
    handler = _OnRetry(lift)
    absl_logger.addHandler(handler)
    try:
      w = restore()
    finally:
      absl_logger.removeHandler(handler)
  np.testing.assert_array_equal(w, np.full(4096, 2.0))
  assert "Too many open files" in caplog.text

  # Full at every attempt: the run stops with the error, and step 2 stays where it is.
  with _file_table_full(), pytest.raises(checkpointing.TrainingError) as stopped:
    restore()
  assert re.search(
    r"step 2 .* could not be read \(OSError: \[Errno 24\] Too many open files.*left in place", str(stopped.value)
  )
  assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["1", "2"]

  # A truncated file proves the step damaged: it is moved aside at once, and step 1 restores.
  _truncate_a_file(tmp_path / "2")
  np.testing.assert_array_equal(restore(), np.full(4096, 1.0))
  assert [p.name.split(".")[1][:7] for p in tmp_path.iterdir() if p.name.startswith("2.")] == ["damaged"]


# ---------------------------------------------------------------------------
# Fine-tuning, stopped while it evaluates or writes its final predictions.

FINETUNE_STEPS = 4


@pytest.fixture(scope="module")
def slow_dev_glue(generated_glue, tmp_path_factory):
  """SST-2 with a dev set of 6,000 rows: an evaluation (and the final predictions) long enough to stop in."""
  folder = tmp_path_factory.mktemp("slow_dev") / "SST-2"
  folder.mkdir()
  shutil.copy(generated_glue / "SST-2" / "train.tsv", folder / "train.tsv")
  header, *rows = (generated_glue / "SST-2" / "dev.tsv").read_text().splitlines()
  (folder / "dev.tsv").write_text("\n".join([header, *rows * 150]) + "\n")
  return folder


@pytest.fixture
def compile_once(tmp_path_factory, monkeypatch):
  """The fine-tuning runs below share one XLA compilation cache: compiling dominates these tiny runs."""
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "finetune_xla_cache"))
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def _finetune_command(workdir, vocab, glue, *extra):
  return [
    sys.executable,
    "-m",
    "albert_jax.finetune",
    "--config=experiments/glue.py:sst2,tiny",
    f"--workdir={workdir}",
    f"--config.task.vocab={vocab}",
    f"--config.task.data_dir={glue}",
    "--config.task.max_examples=0",
    "--config.task.max_seq_length=32",
    f"--config.num_train_steps={FINETUNE_STEPS}",
    "--config.log_every_steps=1",
    "--config.eval_batch_size=4",  # many small batches: a few seconds
    *extra,
  ]


def _rows(workdir, key) -> list[int]:
  """The steps of metrics.jsonl's rows that hold `key`."""
  return [step for step, row in ((r["step"], r) for r in _metrics_rows(workdir)) if key in row]


def _metrics_rows(workdir) -> list[dict]:
  path = workdir / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")] if path.exists() else []


def test_a_kill_during_the_evaluation_of_a_checkpoint_step_is_evaluated_on_resume(
  generated_vocab, slow_dev_glue, compile_once, tmp_path
):
  # The last step both evaluates and checkpoints (as every evaluation step does with the fine-tuning defaults).
  # A SIGKILL while it evaluates, after its checkpoint could have been written, must not lose that evaluation or
  # the best checkpoint it may make.
  workdir = tmp_path / "work"
  cmd = _finetune_command(
    workdir, generated_vocab, slow_dev_glue, "--config.eval_every_steps=4", "--config.checkpoint_every_steps=2"
  )
  proc = cli.spawn(cmd, tmp_path / "killed.log")
  cli.wait_for(lambda: FINETUNE_STEPS in _rows(workdir, "train/loss"), proc, poll=0.01)
  # Logged; now it evaluates (for 2.5 s or more). Wait for the step's checkpoint (written before the evaluation,
  # as it was), or 1 s.
  evaluating = time.time()
  cli.wait_for(lambda: FINETUNE_STEPS in _complete(workdir) or time.time() > evaluating + 1, proc)
  proc.send_signal(signal.SIGKILL)
  assert cli.finish([proc], timeout=60) == [-signal.SIGKILL]
  assert FINETUNE_STEPS not in _rows(workdir, "dev/accuracy"), "the kill came after the evaluation"

  proc = cli.spawn(cmd, tmp_path / "resumed.log")
  assert cli.finish([proc], timeout=300) == [0], cli.tail(proc)
  assert _rows(workdir, "dev/accuracy") == [FINETUNE_STEPS], cli.tail(proc)
  assert json.loads((workdir / "eval_results.json").read_text())["best_step"] == FINETUNE_STEPS
  assert [p.name for p in (workdir / "best").iterdir() if p.name.isdigit()] == [str(FINETUNE_STEPS)]


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_sigterm_during_the_final_predictions_exits_at_once_with_the_checkpoints_intact(
  generated_vocab, slow_dev_glue, compile_once, tmp_path
):
  workdir = tmp_path / "work"
  proc = cli.spawn(
    _finetune_command(workdir, generated_vocab, slow_dev_glue, "--config.eval_every_steps=0"), tmp_path / "run.log"
  )
  cli.wait_for(lambda: "Finished at step" in proc.log.read_text(), proc, poll=0.01)  # the loop is over
  proc.send_signal(signal.SIGTERM)
  sent = time.time()
  assert cli.finish([proc], timeout=60) == [-signal.SIGTERM], cli.tail(proc)
  assert time.time() - sent < 10, "SIGTERM after the loop was not acted on at once"
  assert not (workdir / "eval_results.json").exists(), "the final predictions had finished before the signal"
  assert _complete(workdir) == [FINETUNE_STEPS]
  restored = _params_at(workdir, FINETUNE_STEPS)
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(restored))


# ---------------------------------------------------------------------------
# Non-finite losses, bad configs.


@pytest.mark.parametrize(
  "flag, message",
  [
    ("--config.batch_size=eight", "config.batch_size"),
    ("--config.checkpoint_every_steps=0", "error: config.checkpoint_every_steps=0: must be at least 1."),
    ("--config.nan_policy=explode", "error: config.nan_policy='explode': use 'stop' or 'skip'."),
  ],
)
def test_a_bad_config_value_is_one_clear_line(flag, message, shared_data_dir, tmp_path):
  result = cli.run(cli.train_command(tmp_path, shared_data_dir, 5, flag))
  assert result.returncode != 0
  assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]


# ---------------------------------------------------------------------------
# Data accounting: one epoch over two processes uses every document once.


def test_two_processes_use_every_document_of_an_epoch_once(shared_data_dir, tmp_path, monkeypatch):
  corpus_file = tmp_path / "corpus.txt"
  rng = random.Random(SEED)
  words = "alpha beta gamma delta river mountain city ocean forest desert".split()
  corpus_file.write_text(
    "\n\n".join(
      "\n".join(" ".join(rng.choices(words, k=rng.randint(1, 40))).capitalize() + "." for _ in range(rng.randint(1, 6)))
      for _ in range(37)
    )
    + "\n"
  )
  config = config_lib.pretraining().data
  config.update(
    dict(
      source="files",
      files=str(corpus_file),
      format="lines",
      max_seq_length=32,
      max_predictions_per_seq=5,
      validation_percent=0.0,
      shuffle_window=4,
      read_threads=1,
      data_dir=str(tmp_path / "tfds"),
    )
  )
  tokenizer = tokenizer_lib.Tokenizer(shared_data_dir / "spiece.model")
  source = pipeline.document_source(config, tokenizer, "train")
  monkeypatch.setattr(pipeline, "_drop_provenance", lambda example: example)  # batches keep `document`
  num_shards, batch_size = 4, 8
  seen = collections.defaultdict(list)  # document -> [(shard, input_ids)] of epoch 0
  for process in range(2):
    batches = pipeline.make_process_iterator(
      config, tokenizer, batch_size, SEED, num_shards=num_shards, process_index=process, process_count=2
    )
    later = collections.Counter()  # examples of epoch 1 per shard: once past the shuffle window, epoch 0 is over
    while min(later[s] for s in range(2 * process, 2 * process + 2)) < 2 * config.shuffle_window:
      batch = next(batches)
      for row in range(batch_size // 2):
        shard = 2 * process + row // (batch_size // num_shards)
        document, epoch = int(batch["document"][row]), int(batch["epoch"][row])
        assert document % num_shards == shard
        if epoch == 0:
          seen[document].append(batch["input_ids"][row].tobytes())
        later[shard] += epoch > 0
  assert sorted(seen) == list(range(len(source)))
  maker = pipeline.ExampleMaker(pipeline.PairingOptions.from_config(config), pipeline.Vocab.from_tokenizer(tokenizer))
  for document, examples in seen.items():  # exactly the examples of one pass over the document
    once = maker(
      source[document]["tokens"],
      source[document]["sentence_lengths"],
      np.random.default_rng([SEED, 0, document]),
      collections.Counter(),
    )
    assert sorted(examples) == sorted(e["input_ids"].tobytes() for e in once)


def test_dropped_and_truncated_inputs_are_counted_and_logged(shared_data_dir, caplog):
  tokenizer = tokenizer_lib.Tokenizer(shared_data_dir / "spiece.model")
  documents = [
    {"tokens": np.full(n, 7, np.int32), "sentence_lengths": np.array(lengths, np.int32)}
    for n, lengths in ((1, [1]), (200, [200]), (6, [3, 3]))
  ]  # one token; too long; fine
  stats = pipeline.PipelineStats(log_every=1)
  options = pipeline.PairingOptions(max_seq_length=32, max_predictions_per_seq=5, short_seq_prob=0.0)
  with caplog.at_level(logging.INFO):
    examples = list(
      pipeline.example_dataset(
        documents,
        options,
        pipeline.Vocab.from_tokenizer(tokenizer),
        seed=0,
        num_epochs=1,
        shuffle_window=1,
        read_threads=1,
        stats=stats,
      )
    )
  counts = stats.snapshot()
  assert counts["documents"] == 3 and counts["sequences"] == len(examples) == 2
  assert counts["skipped_one_token_chunks"] == 1
  assert counts["truncated_pairs"] == 1 and counts["truncated_tokens"] == 200 - (32 - 3)
  assert "Pretraining data so far" in caplog.text and "'truncated_tokens': 171" in caplog.text


# ---------------------------------------------------------------------------
# Input hardening: any text, empty or huge, is read, tokenised and paired without a crash.


@pytest.fixture(scope="module")
def tokenizer(shared_data_dir):
  return tokenizer_lib.Tokenizer(shared_data_dir / "spiece.model")


FEW = hypothesis.settings(max_examples=25, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow])
ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=300)  # any Unicode a UTF-8 file can hold


@FEW
@hypothesis.given(text=ANY_TEXT | st.sampled_from(["", " ", "[MASK]", "<unk>[SEP]", "9,9,9", "\u0301" * 50]))
def test_tokenizer_takes_any_text(tokenizer, text):
  ids = tokenizer.encode(text)
  assert all(0 <= i < tokenizer.vocab_size for i in ids)
  assert tokenizer.encode_batch([text, text], num_threads=1) == [ids, ids]
  assert isinstance(tokenizer.decode(ids), str)
  assert ids or not re.search("[A-Za-z0-9]", text)


def test_tokenizer_takes_huge_text(tokenizer):
  rng = random.Random(SEED)
  text = "".join(chr(rng.choice([rng.randrange(32, 0x2FF), rng.randrange(0x4E00, 0x9FFF)])) for _ in range(200_000))
  ids = tokenizer.encode(text + " word" * 100_000)
  assert len(ids) > 100_000 and max(ids) < tokenizer.vocab_size


@FEW
@hypothesis.given(text=ANY_TEXT)
def test_sentence_splitting_keeps_every_word(text):
  sentences = corpus.split_sentences(text)
  assert all(s and s == s.strip() for s in sentences)
  assert " ".join(sentences) == " ".join(text.split())


@FEW
@hypothesis.given(
  content=st.binary(max_size=2000) | ANY_TEXT.map(lambda t: t.encode("utf-8")),
  fmt=st.sampled_from([None, *corpus.FORMATS]),
)
def test_corpus_readers_take_any_file(content, fmt):
  with tempfile.TemporaryDirectory() as folder:
    path = pathlib.Path(folder) / "corpus.txt"
    path.write_bytes(content)
    try:
      documents = list(corpus.read_documents(path, fmt))
    except ValueError as e:  # empty, not text, or no document: said, naming the file
      assert str(path) in str(e)
      return
  assert documents and all(doc and all(isinstance(s, str) and s for s in doc) for doc in documents)


@FEW
@hypothesis.given(
  lengths=st.lists(st.integers(1, 80), max_size=30),
  seed=st.integers(0, 2**32 - 1),
  max_seq_length=st.integers(5, 64),
  short_seq_prob=st.sampled_from([0.0, 0.1, 1.0]),
)
def test_example_maker_keeps_its_invariants_on_any_document(tokenizer, lengths, seed, max_seq_length, short_seq_prob):
  rng = np.random.default_rng(seed)
  vocab = pipeline.Vocab.from_tokenizer(tokenizer)
  tokens = rng.choice(vocab.random_ids, sum(lengths)).astype(np.int32)
  options = pipeline.PairingOptions(max_seq_length, max_predictions_per_seq=5, short_seq_prob=short_seq_prob)
  counts = collections.Counter()
  examples = pipeline.ExampleMaker(options, vocab)(tokens, np.array(lengths, np.int32), rng, counts)
  assert counts["sequences"] == len(examples) and counts["documents"] == 1
  for e in examples:
    n = int(e["input_mask"].sum())
    assert e["input_ids"].shape == (max_seq_length,) and 5 <= n <= max_seq_length
    assert (e["input_mask"][:n] == 1).all() and (e["input_ids"][n:] == 0).all()
    assert e["input_ids"].min() >= 0 and e["input_ids"].max() < tokenizer.vocab_size
    assert e["input_ids"][0] == tokenizer.cls_id and e["input_ids"][n - 1] == tokenizer.sep_id
    assert (e["input_ids"][:n] == tokenizer.sep_id).sum() == 2
    k = int(e["masked_lm_weights"].sum())
    assert 1 <= k <= 5 and (e["masked_lm_positions"][:k] < n - 1).all() and (e["masked_lm_positions"][:k] > 0).all()
    assert e["sentence_order_label"] in (0, 1)


def test_example_maker_takes_empty_and_huge_documents(tokenizer):
  vocab = pipeline.Vocab.from_tokenizer(tokenizer)
  maker = pipeline.ExampleMaker(pipeline.PairingOptions(32, 5), vocab)
  assert maker(np.zeros(0, np.int32), np.zeros(0, np.int32), np.random.default_rng(0), collections.Counter()) == []
  huge = np.full(200_000, vocab.random_ids[0], np.int32)
  for lengths in ([200_000], [10] * 20_000):
    counts = collections.Counter()
    examples = maker(huge, np.array(lengths, np.int32), np.random.default_rng(0), counts)
    assert examples and all(int(e["input_mask"].sum()) <= 32 for e in examples)


# ---------------------------------------------------------------------------
# Checkpoints of another model, vocabulary or format are refused, naming the mismatch.


def test_checkpoint_of_another_vocabulary_size_names_it(tmp_path):
  cfg = model_lib.AlbertConfig(
    vocab_size=100,
    embedding_size=8,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=16,
  )
  init = jax.jit(model_lib.AlbertForPreTraining(cfg).init)  # one compilation, not one per operation
  params = flax.linen.unbox(init(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32)))
  checkpoints.save(tmp_path, cfg, params)
  meta = json.loads((tmp_path / "config.json").read_text())
  meta["model"]["vocab_size"] = 120
  (tmp_path / "config.json").write_text(json.dumps(meta))
  with pytest.raises(
    checkpoints.CheckpointError,
    match=r"word_embeddings/embedding: stored \(100, 8\), config.json "
    r"\(120, 8\).*another model \(vocab_size",
  ):
    checkpoints.load(tmp_path)
  meta["format_version"] = checkpoints.FORMAT_VERSION + 1
  (tmp_path / "config.json").write_text(json.dumps(meta))
  with pytest.raises(checkpoints.CheckpointError, match="written by a newer albert_jax.*Upgrade albert_jax"):
    checkpoints.load(tmp_path)


def test_workdir_of_another_vocabulary_names_the_field(tmp_path):
  (tmp_path / "checkpoints").mkdir()
  saved = model_lib.AlbertConfig(vocab_size=30000)
  (tmp_path / "config.json").write_text(json.dumps({"format": "albert_jax", "model": saved.to_dict()}))
  with pytest.raises(pretraining.TrainingError, match="vocab_size: checkpoint 30000 vs config 683"):
    pretraining._check_workdir_model(tmp_path, saved.replace(vocab_size=683))  # pylint: disable=protected-access

"""What every command line shares: a mistake ends as one `error:` line, and the log shows only what a user needs.

Each entry point ends with `cli.run(main)`. Flags are parsed here, so a
config file that does not exist, a config that refuses its argument (an
unknown task in `glue.py:TASK`), an unknown `--config.` field or a value of
the wrong type ends as one line that says what to change, instead of absl's
"FATAL Flags parsing error" and a traceback. Errors a user can fix (bad
input, a full disk, a checkpoint of another model) end the same way; the
traceback is logged at DEBUG, shown with `--verbosity=1`.

The log keeps albert_jax's own progress lines and every library's warnings;
libraries' INFO chatter (orbax, TFDS, JAX, optax: dozens of lines per
checkpoint; Beam's local workers; TensorStore's C++ line naming the
credentials of a bucket) appears only with `--verbosity=1`.
"""

import contextlib
import errno
import logging as logging_std
import os
import re
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import jax
from absl import app, flags, logging

from albert_jax.trainers import core

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# Library lines that say nothing a user can act on, whatever their level.
_NOISE = (
  "Using custom data configuration",  # TFDS, for every corpus albert_jax prepares (its name is a hash)
  "apitools not found",  # Beam, at import, without its optional BigQuery client
  "direct_running_mode should be",  # Beam, of beam_preparation.local_runner: its workers do run in parallel
)


class UsageError(ValueError):
  """A command line that cannot run as given; the message says what to change."""


# Exceptions that end a command as one `error:` line: mistakes in its input or its environment, not bugs
# (CheckpointError, InputError and CompileCheckError are ValueErrors).
USER_ERRORS = (ValueError, OSError)


def _one_line(text: str) -> str:
  return " ".join(text.split())


def _check_config_files(argv: list[str]):
  """`--config=PATH[:ARG]` names a file that exists (ml_collections would defer the error to its first use)."""
  config_flags = {name for name in flags.FLAGS if flags.FLAGS[name].flag_type() == "config object"}
  for arg in argv[1:]:
    name, _, value = arg.lstrip("-").partition("=")
    path = value.split(":", 1)[0]
    if name in config_flags and not os.path.isfile(path):
      raise UsageError(
        f"--{name}={value}: there is no config file {path!r} here ({os.getcwd()}); name an "
        "experiment file such as experiments/tiny.py, relative to this directory."
      )


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every mistake turned into one `error:` line (exit status 2, a usage error)."""
  try:
    _check_config_files(argv)
    return flags.FLAGS(argv)
  except UsageError as e:
    message = str(e)
  except flags.Error as e:
    message = _flag_error(str(e))
  except (AttributeError, KeyError) as e:  # ml_collections: an override of a config field that does not exist
    message = _unknown_field(argv, str(e))
  sys.stderr.write(f"error: {_one_line(message)}\n")
  sys.exit(2)


def _flag_error(message: str) -> str:
  """absl's message for a flag it refused, without its 'flag ' prefix and ml_collections' embedded traceback."""
  message = message.strip()
  required = re.match(r"^flag --(\w+)=None: Flag --\1 must have a value other than None", message)
  if required:
    return f"--{required.group(1)} is required; see --helpshort."
  config_error = re.match(r"^flag (--\S+=.*?): Error whilst parsing config file:", message)
  if config_error:
    cause = [line.strip() for line in message.splitlines() if re.match(r"^\s*\w+(Error|Exception): ", line)]
    reason = cause[-1].split(": ", 1)[1] if cause else message
    if re.match(r"get_config\(\) takes 0 positional arguments", reason):
      reason = "this config file takes no argument after ':'"
    return f"{config_error.group(1)}: {reason}"
  return re.sub(r"^flag ", "", message)


def _unknown_field(argv: list[str], error: str) -> str:
  """'--config.batch_sizee: the config has no field 'batch_sizee'; did you mean batch_size?'"""
  field = (re.findall(r"\w+", error) or ["?"])[0]
  overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
  override = next((o for o in overrides if o.endswith(f".{field}") or f".{field}." in o), f"--config...{field}")
  suggestion = re.search(r'Did you mean "(\w+)"', error)
  hint = f"; did you mean {suggestion.group(1)}?" if suggestion else " (the config file lists its fields)."
  return f"{override}: the config has no field {field!r}{hint}"


class _LibraryInfoFilter(logging_std.Filter):
  """Passes warnings and albert_jax's own INFO lines; libraries' INFO only at --verbosity=1 or more.

  Libraries' errors pass without the traceback of their background thread:
  the command reports the failure itself, with what to do.
  """

  def filter(self, record: logging_std.LogRecord) -> bool:
    verbose = logging.get_verbosity() >= logging.DEBUG
    ours = record.pathname.startswith(_PACKAGE_DIR) or record.pathname == "<stdin>" or "ipython" in record.pathname
    if verbose:
      return True
    if not ours:
      record.exc_info = record.exc_text = None
      if any(noise in str(record.msg) for noise in _NOISE):
        return False
    return ours or record.levelno >= logging_std.WARNING


def quiet_library_logs():
  """Installs the filter above on absl's handler (idempotent); the notebook calls it too."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(_LibraryInfoFilter())
  sys.unraisablehook = _quiet_closed_loop
  _quiet_tfds_progress()


def _quiet_tfds_progress():
  """TFDS draws progress bars while it prepares a corpus; albert_jax logs its own progress lines instead."""
  if logging.get_verbosity() < logging.DEBUG and "tensorflow_datasets" in sys.modules:
    sys.modules["tensorflow_datasets"].disable_progress_bar()


def _quiet_closed_loop(unraisable):
  """Keeps tensorstore's late callbacks into an event loop orbax has closed (after a failed write) out of the log.

  They arrive from C++ threads as "Exception ignored" tracebacks, dozens at a
  time, and would bury the one `error:` line that says what went wrong.
  """
  if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value):
    logging.debug("Ignored a callback into a closed event loop (%s)", unraisable.object)
  else:
    sys.__unraisablehook__(unraisable)


def _buckets_named() -> list[str]:
  """The buckets of every gs:// path in the command's flags, its config's fields included, in order."""
  found = []

  def visit(value):
    if isinstance(value, str):
      found.extend(b for b in re.findall(r"gs://([^/,\s]+)", value) if b not in found)
    elif hasattr(value, "values"):  # a ConfigDict or a dict
      for v in value.values():
        visit(v)
    elif isinstance(value, (list, tuple)):
      for v in value:
        visit(v)

  for name in flags.FLAGS:
    visit(flags.FLAGS[name].value)
  return found


def _quiet_tensorstore_credentials(bucket: str):
  """Makes TensorStore's first request to Cloud Storage here, with the line it logs from C++ left out.

  TensorStore (orbax's checkpoints in a bucket) logs which Google credentials it uses at INFO
  ("google_auth_provider.cc:136] Using ...") once per process, at its first request, from C++ logging that
  no Python setting or environment variable reaches. So the command makes that first request itself, a read
  of an object that does not exist, before anything else runs and with stderr held. The read's outcome does
  not matter here: a bucket the command cannot use is reported by the command.
  """
  import tensorstore as ts  # pylint: disable=g-import-not-at-top  (only for a command that names a bucket)

  context = ts.Context({"gcs_request_retries": {"max_retries": 1}})  # a network fault is for the command to meet
  with _stderr_without(rb"I\d{4} [\d:.]+ +\d+ \w+_auth_provider\.cc:\d+\] "), contextlib.suppress(Exception):
    ts.KvStore.open({"driver": "gcs", "bucket": bucket}, context=context).result().read(".albert_jax").result(60)


@contextlib.contextmanager
def _stderr_without(noise: bytes):
  """Holds what the process writes to stderr (its file descriptor: C++ too), then passes on the lines not matching
  the regular expression `noise`."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      held.seek(0)
      os.write(2, b"".join(line for line in held.read().splitlines(keepends=True) if not re.match(noise, line)))


def run(main: Callable[[], Any]):
  """Runs `main()` as the program: flags parsed by `parse_flags`, user errors as one `error:` line (exit 1).

  Args:
    main: the command, reading its flags; what it returns is ignored.
  """

  def body(argv):
    if len(argv) > 1:
      raise SystemExit(f"error: unexpected arguments {argv[1:]}; every option is a --flag=value (see --helpshort).")
    quiet_library_logs()
    buckets = _buckets_named()
    if buckets and logging.get_verbosity() < logging.DEBUG:
      _quiet_tensorstore_credentials(buckets[0])
    try:
      main()
    except (*USER_ERRORS, core.TrainingError) as e:
      logging.debug("Stopped by", exc_info=True)
      raise SystemExit(f"error: {explain(e)}") from None

  app.run(body, flags_parser=parse_flags)


def explain(e: BaseException) -> str:
  """An exception as the one line a user reads: its message, or its type when it has none."""
  text = str(e).strip()
  if isinstance(e, KeyError) and text.startswith("'"):
    text = text.strip("'")
  return text or type(e).__name__


def run_trainer(train: Callable[[], Any]):
  """Runs a trainer inside `run`: a failure that is the user's to fix becomes one `TrainingError` line.

  A process of a multi-process run that fails exits at once, skipping JAX's
  shutdown barrier (which would wait for the others while they wait for it
  in a collective): the others then fail their next collective and exit too.
  So does a process whose checkpoint write failed: orbax's background threads
  may wait forever on a read-only disk.
  """
  try:
    train()
  except Exception as e:  # pylint: disable=broad-except
    expected = isinstance(e, (*USER_ERRORS, core.TrainingError)) or core.peer_lost(e)
    if jax.distributed.is_initialized() or isinstance(e, core.CheckpointWriteError):
      if not expected:
        logging.exception("Stopped by")
      logging.flush()
      logging_std.disable(logging_std.CRITICAL)  # background threads' errors would come after the one that matters
      if expected:
        print(f"error: {_explain_training(e)}", file=sys.stderr, flush=True)
      os._exit(1)  # pylint: disable=protected-access
    if not expected:
      raise
    raise core.TrainingError(_explain_training(e)) from e


def _explain_training(e: BaseException) -> str:
  """The one-line message for an error that ends a run: what failed and what to do."""
  if core.peer_lost(e):
    return (
      f"lost contact with another process of this {jax.process_count()}-process run ({core.first_line(e)}). "
      "A process probably died or was stopped: see its log. Start all processes again with the same "
      "--workdir; training resumes from the newest complete checkpoint."
    )
  if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
    return f"{e}. Free space on that disk, make it writable, or choose another --workdir."
  return str(e)

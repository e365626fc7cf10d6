"""Paths on local disk or in a Cloud Storage bucket (`gs://`), and writes that a reader never sees half done.

Every path albert_jax reads or writes is an `etils.epath.Path`, the path type
TFDS and orbax use: a local path, or a `gs://bucket/...` URI (read and written
through gcsfs, or tf.io.gfile where TensorFlow is installed).

A bucket is not a disk. It has no folders, no rename and no append; what it
has is that one object upload is atomic: readers see the old object or the
new one, never part of it. So here:
  * `write_text_atomic` is a temporary file renamed over the target on a disk,
    and one upload on a bucket.
  * `AppendedText` (metrics.jsonl) appends to a local file; on a bucket it
    rewrites the whole object with every flush, so no line already flushed is
    lost (gcsfs would silently turn append mode into overwrite).
  * `move_aside` renames a local folder in one step; on a bucket it copies the
    objects, then deletes the folder's commit marker (one atomic delete: from
    then on the folder no longer counts as complete), then the rest.
  * `LocalMirror` gives writers that need a local file (TensorBoard's event
    writer, prediction files) a local folder that is uploaded to the bucket.
  * `make_dirs` creates local folders only: on a bucket folders are implicit,
    and a mkdir could create a bucket where the user named one by mistake.
  * gcsfs's cache of folder listings is off: it would hide from one process
    the checkpoints and datasets another process (or host) has written since.
"""

import contextlib
import glob as glob_lib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator

from etils import epath

_SCHEMES = ("gs://", "s3://")


def _fresh_listings():
  try:
    import fsspec  # pylint: disable=g-import-not-at-top
  except ImportError:  # no gcsfs: no gs:// paths either
    return
  fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)


_fresh_listings()


class StorageError(OSError):
  """A path that cannot be read or written as asked; the message says which and what to do."""


def is_remote(p) -> bool:
  """Whether `p` names object storage (`gs://...`) rather than a local path."""
  return os.fspath(p).startswith(_SCHEMES)


def path(p) -> epath.Path:
  """`p` as an epath.Path: a bucket URI as given; a local path with `~` expanded, made absolute (orbax needs it)."""
  if is_remote(p):
    return epath.Path(os.fspath(p))
  return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(p))))


def make_dirs(directory) -> epath.Path:
  """Creates a local folder and its parents; a bucket needs none (its folders are prefixes of object names)."""
  directory = path(directory)
  if not is_remote(directory):
    directory.mkdir(parents=True, exist_ok=True)
  return directory


def bucket_of(p) -> str:
  """'gs://bucket' of 'gs://bucket/a/b'."""
  scheme, rest = os.fspath(p).split("://", 1)
  return f"{scheme}://{rest.split('/', 1)[0]}"


def explain_write_error(directory, what: str, error: OSError) -> str:
  """One line saying why `directory` (named by the option `what`) cannot be written, and what to do."""
  reason = (str(error).strip().splitlines() or [type(error).__name__])[-1].rstrip(".")
  if is_remote(directory):
    bucket = bucket_of(directory)
    if isinstance(error, FileNotFoundError) and not _exists(bucket):
      return (
        f"Cannot write to {directory} ({what}): the bucket {bucket} does not exist. Create it "
        f"(gcloud storage buckets create {bucket}) or choose another {what}."
      )
    if isinstance(error, PermissionError) or "Forbidden" in str(error) or "403" in str(error):
      return (
        f"Cannot write to {directory} ({what}): permission denied ({reason}). Grant this account write access "
        f"to {bucket} (roles/storage.objectUser) or choose another {what}."
      )
  elif isinstance(error, PermissionError) or error.errno in (13, 30):  # EACCES, EROFS
    reason = error.strerror or reason
    return f"Cannot write to {directory} ({what}): {reason}. Make it writable or choose another {what}."
  return f"Cannot write to {directory} ({what}): {reason}. Check the path, or choose another {what}."


def _exists(p) -> bool:
  try:
    return epath.Path(p).exists()
  except OSError:
    return False


def check_writable(directory, what: str) -> epath.Path:
  """Creates `directory` (a local one) and writes a probe into it, or raises a `StorageError` saying what to do.

  Called before work that would otherwise fail late (a training run after
  its first steps, a corpus preparation after tokenising): a bucket that does
  not exist, a path without write permission, a read-only disk.
  """
  directory = path(directory)
  probe = directory / f".write-check-{socket.gethostname()}-{os.getpid()}"
  try:
    make_dirs(directory)
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise StorageError(explain_write_error(directory, what, e)) from e
  return directory


def write_text_atomic(target, text: str):
  """Replaces `target` whole: a reader (another process resuming) or a kill mid-write never sees half a file.

  On a disk: a temporary file beside it, renamed over it. On a bucket: one
  upload, which is atomic (the object appears only once complete).
  """
  write_bytes_atomic(target, text.encode("utf-8"))


def write_bytes_atomic(target, data: bytes):
  """`write_text_atomic` for bytes."""
  target = path(target)
  if is_remote(target):
    target.write_bytes(data)
    return
  partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
  try:
    partial.write_bytes(data)
    os.replace(partial, target)
  finally:
    partial.unlink(missing_ok=True)


def copy(source, target):
  """Copies one file between any two places (local or bucket); the target appears whole."""
  write_bytes_atomic(target, path(source).read_bytes())


def glob(pattern: str) -> list[str]:
  """Sorted paths matching `pattern` (`*`, `?`, `[...]`; on a bucket not `**`), local or `gs://`.

  Raises:
    StorageError: the pattern names a bucket that does not exist.
  """
  if not is_remote(pattern):
    return sorted(glob_lib.glob(os.path.expanduser(pattern)))
  parts = pattern.split("/")
  first = next((i for i, part in enumerate(parts) if glob_lib.has_magic(part)), len(parts))
  base = "/".join(parts[:first])
  try:
    if first == len(parts):
      return [pattern] if epath.Path(pattern).is_file() else []
    return sorted(os.fspath(p) for p in epath.Path(base).glob("/".join(parts[first:])))
  except FileNotFoundError:
    if not _exists(bucket_of(pattern)):
      raise StorageError(f"the bucket {bucket_of(pattern)} does not exist") from None
    return []


def move_aside(folder, target, commit_marker: str):
  """Moves `folder` to `target` so that nothing counts it as complete any longer, whatever moment a kill comes.

  On a disk, one rename. On a bucket (no rename): copy every object, then
  delete `folder/commit_marker` (one atomic delete; orbax counts a step folder
  on a bucket as complete only while its marker is there), then the rest. A
  kill before the marker is gone leaves the folder complete (it is found and
  moved again); a kill after leaves it incomplete (ignored, written again).
  """
  folder, target = path(folder), path(target)
  if not is_remote(folder):
    folder.rename(target)
    return
  objects = list(_files(folder))
  prefix = len(os.fspath(folder)) + 1
  for p in objects:
    (target / os.fspath(p)[prefix:]).write_bytes(p.read_bytes())
  marker = folder / commit_marker
  if marker.exists():
    marker.unlink()
  for p in objects:
    if p != marker:
      p.unlink(missing_ok=True)


def _files(folder: epath.Path) -> Iterator[epath.Path]:
  """Every file under `folder` (epath refuses `**` on a bucket: one listing per folder instead)."""
  for p in folder.iterdir():
    if p.is_dir():
      yield from _files(p)
    else:
      yield p


class AppendedText:
  """A text file lines are appended to (metrics.jsonl): a local file, or a bucket object rewritten at each flush.

  A bucket object cannot be appended to, so the lines are kept (the object's
  earlier content first, when it exists) and the whole object is uploaded
  again by `flush`, an atomic upload: a kill loses at most the lines written
  since the last flush, as with a local file.
  """

  def __init__(self, target):
    self.path = path(target)
    self._remote = is_remote(self.path)
    if self._remote:
      self._lines = [self.path.read_text()] if self.path.exists() else []
      self._dirty = False
    else:
      self._file = open(self.path, "a")

  def write(self, text: str):
    if self._remote:
      self._lines.append(text)
      self._dirty = True
    else:
      self._file.write(text)

  def flush(self):
    if not self._remote:
      self._file.flush()
    elif self._dirty:
      self.path.write_text("".join(self._lines))
      self._dirty = False

  def close(self):
    self.flush()
    if not self._remote:
      self._file.close()


class LocalMirror:
  """A local folder for writers that need one (TensorBoard's event files, prediction files), kept in `target`.

  For a local `target` it is `target` itself. For a bucket it is a temporary
  folder whose files `sync` uploads (each one whole, as it is then) and
  `close` uploads a last time before deleting it.
  """

  def __init__(self, target):
    self.target = path(target)
    self._remote = is_remote(self.target)
    self.local = epath.Path(tempfile.mkdtemp(prefix="albert_jax-mirror-")) if self._remote else make_dirs(target)
    self._uploaded: dict[str, tuple[int, int]] = {}

  def target_of(self, local_path) -> epath.Path:
    """Where the local file `local_path` is kept."""
    return self.target / os.path.relpath(os.fspath(local_path), os.fspath(self.local))

  def sync(self):
    if not self._remote:
      return
    for root, _, names in os.walk(self.local):
      for name in names:
        local = os.path.join(root, name)
        stat = os.stat(local)
        if self._uploaded.get(local) != (stat.st_size, stat.st_mtime_ns):
          self.target_of(local).write_bytes(epath.Path(local).read_bytes())
          self._uploaded[local] = (stat.st_size, stat.st_mtime_ns)

  def close(self):
    if self._remote:
      self.sync()
      shutil.rmtree(self.local, ignore_errors=True)


@contextlib.contextmanager
def local_mirror(target) -> Iterator[LocalMirror]:
  """`LocalMirror(target)`, closed (its files uploaded) when the block ends without an error."""
  mirror = LocalMirror(target)
  yield mirror
  mirror.close()

"""A local Cloud Storage server for tests: gcp-storage-emulator (PyPI), run in a subprocess, with what it lacks.

`running()` starts it on a free port with two buckets, `BUCKET` and `READ_ONLY_BUCKET`, and points every client
albert_jax uses at it through its emulator setting (`client_env`): etils.epath (gcsfs) and google-cloud-storage
through STORAGE_EMULATOR_HOST, TensorStore (orbax) through TENSORSTORE_GCS_HTTP_URL, array_record's C++ reader
through CLOUD_STORAGE_EMULATOR_ENDPOINT. Subprocesses inherit the environment.

Run as a script, it is the server, with three additions to gcp-storage-emulator 2026.7.19:
  1. objects.move (`POST .../o/SRC/moveTo/o/DST`), which gcsfs uses for every rename. Without it each rename
     gets 501, which gcsfs retries with backoff for about 16 s before it copies and deletes instead.
  2. Downloads as Cloud Storage answers them: suffix byte ranges (`Range: bytes=-N`, the last N bytes), which
     array_record's reader uses to find a shard's footer (the emulator would send the whole object, and shards
     over 1 MiB would not read), and the object's generation in `x-goog-generation`, without which TensorStore
     fails to read back an OCDBT manifest it wrote ("Malformed StorageGeneration").
  3. Writes into READ_ONLY_BUCKET are refused with 403 and the message Cloud Storage gives an account without
     `storage.objects.create` (the emulator has no permissions of its own).
It still accepts uploads that set preconditions (`ifGenerationMatch`) it does not check.
"""

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

BUCKET = "test-bucket"
READ_ONLY_BUCKET = "read-only-bucket"


def client_env(url: str) -> dict[str, str]:
  """The environment that points every Cloud Storage client albert_jax uses at `url`, with no credential lookup."""
  return {
    "STORAGE_EMULATOR_HOST": url,  # google-cloud-storage, gcsfs (etils.epath's gs:// without TensorFlow)
    "FSSPEC_GCS_TOKEN": "anon",  # gcsfs: no search for credentials
    # gcsfs >= 2025 asks the Storage Control gRPC API (TLS) for the bucket type: 60 s of retries per bucket here.
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    "EPATH_USE_TF": "false",  # with TensorFlow installed, epath would use tf.io.gfile, which has no emulator setting
    "TENSORSTORE_GCS_HTTP_URL": url,  # TensorStore (orbax's checkpoints)
    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",  # TensorStore's credentials
    "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,  # array_record's reader (google-cloud-cpp); anonymous with it
    "NO_GCE_CHECK": "True",  # google-auth: never probe the metadata server
    "GOOGLE_CLOUD_PROJECT": "test-project",
  }


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def running(timeout: float = 30.0):
  """The server on a free port, with the environment set for its clients; yields its URL."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  proc = subprocess.Popen(
    [sys.executable, os.path.abspath(__file__), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  saved = {k: os.environ.get(k) for k in client_env(url)}
  os.environ.update(client_env(url))
  try:
    deadline = time.time() + timeout
    while True:
      try:
        urllib.request.urlopen(url + "/", timeout=1).read()
        break
      except OSError:
        if time.time() > deadline or proc.poll() is not None:
          raise RuntimeError(f"The Cloud Storage emulator did not start on port {port}.") from None
        time.sleep(0.1)
    yield url
  finally:
    proc.terminate()
    proc.wait(10)
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


# ---------------------------------------------------------------------------
# The server (run as a script).


def _patch_server():
  """The three additions of the module docstring."""
  from http import HTTPStatus  # pylint: disable=g-import-not-at-top

  from gcp_storage_emulator import server, settings  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import objects  # pylint: disable=g-import-not-at-top

  def move(request, response, storage, *args, **kwargs):
    p = request.params
    try:
      moved = objects._copy(  # pylint: disable=protected-access
        request.base_url, storage, p["bucket_name"], p["object_id"], p["bucket_name"], p["dest_object_id"]
      )
      storage.delete_file(p["bucket_name"], p["object_id"])
      response.json(moved)
    except NotFound:
      response.status = HTTPStatus.NOT_FOUND

  plain_download = objects.download

  def download(request, response, storage, *args, **kwargs):
    suffix = re.fullmatch(r"\s*bytes=-(\d+)\s*", request.get_header("range", "") or "")
    if suffix:
      try:
        size = int(storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])["size"])
      except NotFound:
        response.status = HTTPStatus.NOT_FOUND
        return
      start, get_header = max(0, size - int(suffix.group(1))), request.get_header
      request.get_header = lambda key, default=None: (
        f"bytes={start}-" if key.lower() == "range" else get_header(key, default)
      )
    plain_download(request, response, storage, *args, **kwargs)
    if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
      stored = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(stored["generation"])
      response["x-goog-metageneration"] = str(stored.get("metageneration", "1"))

  objects.download = download  # objects.get(alt=media) calls the module's name
  route = (
    rf"^{settings.API_ENDPOINT}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)"
    r"/moveTo/o/(?P<dest_object_id>.*[^/]+)$"
  )
  server.HANDLERS = ((route, {"POST": move}),) + tuple(
    (regex, {m: download if fn is plain_download else fn for m, fn in handlers.items()})
    for regex, handlers in server.HANDLERS
  )

  handle = server.Router.handle

  def refuse_writes_to_the_read_only_bucket(self, method):
    path = self._request_handler.path.split("?")[0]
    if method != "GET" and (f"/b/{READ_ONLY_BUCKET}/" in path or path.startswith(f"/{READ_ONLY_BUCKET}/")):
      response = server.Response(self._request_handler)
      response.status = HTTPStatus.FORBIDDEN
      message = (
        "tester@test-project.iam.gserviceaccount.com does not have storage.objects.create access to the Google "
        "Cloud Storage object. Permission 'storage.objects.create' denied on resource (or it may not exist)."
      )
      response.json({"error": {"code": 403, "message": message, "errors": [{"message": message}]}})
      response.close()
      return
    handle(self, method)

  server.Router.handle = refuse_writes_to_the_read_only_bucket


def _serve(port: int):
  _patch_server()
  from gcp_storage_emulator import server  # pylint: disable=g-import-not-at-top
  from gcp_storage_emulator.handlers import buckets  # pylint: disable=g-import-not-at-top

  emulator = server.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
  buckets.create_bucket(READ_ONLY_BUCKET, emulator._storage)  # pylint: disable=protected-access
  emulator.run()


if __name__ == "__main__":
  _serve(int(sys.argv[1]))

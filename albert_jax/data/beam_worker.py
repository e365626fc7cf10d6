"""One worker process of Beam's local runner (`beam_preparation.local_runner`): Beam's SDK harness, quiet.

Run as `python -m albert_jax.data.beam_worker` by the runner. Beam's harness writes a dozen lines per worker
to stderr (its channels opening and closing, no session directory, no BigQuery client) and sends its log
records to the runner in the main process too, where the command's log shows them at `--verbosity=1`. So
here stderr gets the worker's errors only, and the harness's own start-up warning (about a session directory
the local runner never has) is not sent at all, unless the main process runs verbose (`VERBOSE_ENV`, set by
`beam_preparation.local_worker_environment`): then Beam logs as it always does.
"""

import logging
import os
import sys

VERBOSE_ENV = "ALBERT_JAX_BEAM_WORKERS_VERBOSE"

if __name__ == "__main__":
  if not os.environ.get(VERBOSE_ENV):
    errors_only = logging.StreamHandler()
    errors_only.setLevel(logging.ERROR)
    logging.getLogger().addHandler(errors_only)  # before Beam's first log call would give the root a handler
    logging.getLogger("apache_beam.runners.worker.sdk_worker_main").setLevel(logging.ERROR)
  from apache_beam.runners.worker import sdk_worker_main

  sdk_worker_main.main(sys.argv)

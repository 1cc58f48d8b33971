"""End a finished CLI process at once, without the interpreter's slow teardown.

After a train or eval command has finished its work (checkpoints committed and their
manifests written, results.json written, the MODEL_DIR lock released: all inside
``main``), a normal exit still spends seconds — tens of seconds on a busy 2-core
machine — joining TensorFlow's tf.data and JAX's runtime threads and freeing thousands
of modules. A pipeline runs ~20 such processes. ``exit_now`` flushes what is buffered
(stdout, stderr, every logging handler) and leaves through ``os._exit`` with the same
status.

Only the ``python -m flan_moe.cli.X`` entry points call it, through
``validation.run_cli_and_exit``: after ``main`` returned, and after an uncaught exception
(its traceback printed, status 1), where a normal exit would hang for ever in the tf.data
iterator destructors. In-process callers of ``main`` (the tests, ``in_process=True``
pipelines) never reach it. Set ``FLAN_MOE_NORMAL_EXIT=1`` to exit the ordinary way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import NoReturn

NORMAL_EXIT_VARIABLE = "FLAN_MOE_NORMAL_EXIT"


def exit_now(status: int | None) -> NoReturn:
    """Flush, then end the process with ``status`` (``sys.exit`` when asked not to)."""
    code = 0 if status is None else int(status)
    if os.environ.get(NORMAL_EXIT_VARIABLE, "") not in ("", "0"):
        sys.exit(code)
    logging.shutdown()  # flushes and closes every handler
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to flush
            stream.flush()
    os._exit(code)

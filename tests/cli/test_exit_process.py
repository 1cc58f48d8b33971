"""A command's process ends with its status at once, even when a thread would block exit.

TensorFlow's tf.data iterators block interpreter teardown (for ever after an exception
mid-iteration), so a failed training stage used to hang instead of failing. A non-daemon
thread that never finishes stands in for them here.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

_PROGRAM = textwrap.dedent(
    """
    import sys, threading, time
    from flan_moe.cli import validation

    threading.Thread(target=time.sleep, args=(600,)).start()  # would block a normal exit

    def main(argv):
        how = sys.argv[1]
        print("written before exit", flush=False)
        if how == "raise":
            raise ValueError("boom in the middle of a stage")
        if how == "usage":
            raise validation.InputError("bad flag; use --good")
        if how == "argparse":
            raise SystemExit(2)
        return int(how)

    validation.run_cli_and_exit(main)
    """
)


@pytest.mark.parametrize(
    ("how", "status", "stderr_has"),
    [
        ("0", 0, ""),
        ("75", 75, ""),
        ("raise", 1, "ValueError: boom in the middle of a stage"),
        ("usage", 2, "error: bad flag; use --good"),
        ("argparse", 2, ""),
    ],
)
def test_exits_with_status_without_waiting_for_threads(how, status, stderr_has):
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, how], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == status, done.stderr
    assert "written before exit" in done.stdout  # flushed before the hard exit
    assert stderr_has in done.stderr

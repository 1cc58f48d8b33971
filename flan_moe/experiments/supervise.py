"""Child processes that cannot outlive the pipeline that started them.

A stage's command runs in its own process group (so a terminal's Ctrl-C reaches only
the pipeline, which then stops the child in order) and, on Linux, with
``PR_SET_PDEATHSIG = SIGTERM``: if the pipeline dies in any way — even SIGKILL — the
kernel sends the child SIGTERM, and a trainer saves a checkpoint and exits with status
75. Elsewhere there is no such signal; the trainer's MODEL_DIR lock then makes a
re-run fail with an error naming the orphan's pid instead of training beside it.

``run_supervised`` streams the child's output line by line and, when the pipeline is
interrupted (KeyboardInterrupt, or SIGTERM turned into one by ``sigterm_as_interrupt``),
sends SIGTERM to the child's group, waits for it (``grace_seconds``, then SIGKILL) and
re-raises.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

_LIVE: set[subprocess.Popen] = set()  # children of run_supervised, from any thread
_LIVE_LOCK = threading.Lock()


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child between fork and exec
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def stop_child(process: subprocess.Popen, *, grace_seconds: float = 120.0) -> int:
    """SIGTERM to the child's process group, then SIGKILL after ``grace_seconds``."""
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 10.0)):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
    return process.wait()


def run_supervised(
    command: Sequence[str],
    *,
    env: dict[str, str],
    on_line: Callable[[str], None],
    grace_seconds: float = 120.0,
) -> int:
    """Run ``command``, passing each output line to ``on_line``; returns the exit status."""
    process = subprocess.Popen(
        list(command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        bufsize=1,
        start_new_session=True,  # its own process group
        preexec_fn=_die_with_parent(os.getpid()),
    )
    assert process.stdout is not None
    with _LIVE_LOCK:
        _LIVE.add(process)
    try:
        for line in process.stdout:
            on_line(line)
        return process.wait()
    except BaseException:
        stop_child(process, grace_seconds=grace_seconds)
        raise
    finally:
        process.stdout.close()
        with _LIVE_LOCK:
            _LIVE.discard(process)


def stop_all_children(*, grace_seconds: float = 120.0) -> None:
    """Stop every running child of ``run_supervised`` (the pipeline's parallel stages):
    SIGTERM to all their groups at once, then wait for each as ``stop_child`` does."""
    with _LIVE_LOCK:
        children = list(_LIVE)
    for process in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    for process in children:
        stop_child(process, grace_seconds=grace_seconds)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises KeyboardInterrupt (main thread only), so the
    pipeline stops its child in order and records the stage as interrupted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

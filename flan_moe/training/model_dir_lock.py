"""One writer per MODEL_DIR: an exclusive ``flock`` on ``MODEL_DIR/.lock``.

The lock file holds the writer's pid and host. The kernel releases a ``flock`` when
its process dies (even by SIGKILL), so a lock is never stale: if it is held, the
holder is alive — e.g. a trainer left running by a killed pipeline — and the error
names it. Multi-host runs share one MODEL_DIR: only process 0 takes the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket

LOCK_FILE = ".lock"


class ModelDirLockedError(RuntimeError):
    """Another process is writing to this MODEL_DIR."""


@contextlib.contextmanager
def model_dir_lock(model_dir: str, *, enabled: bool = True):
    """Hold the MODEL_DIR lock for the ``with`` block (a no-op when not ``enabled``)."""
    if not enabled:
        yield
        return
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise ModelDirLockedError(
                f"MODEL_DIR {model_dir} is in use by another trainer ({holder}). Wait for it "
                "to finish or stop it (kill that pid), then run again; two writers on one "
                "MODEL_DIR would corrupt its checkpoints."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

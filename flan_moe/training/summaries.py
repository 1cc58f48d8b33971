"""Training metrics: TensorBoard event files and a JSON-lines log under MODEL_DIR,
and the one-line progress report (steps/s, real tokens/s, ETA).

TensorBoard event files are written with the ``tensorboard`` package's record writer
and protos over a plain local file (its ``EventFileWriter`` would import TensorFlow
when installed); when that package is missing only ``metrics.jsonl`` is written and a
warning says so. Vector metrics (per-expert usage) become one scalar per
index (``name/0``, ``name/1``, ...).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Scalars as floats; arrays expanded to ``name/i`` (``name/i/j`` ...)."""
    out: dict[str, float] = {}
    for name, value in metrics.items():
        array = np.asarray(value, dtype=np.float64)
        if array.ndim == 0:
            out[name] = float(array)
        else:
            for index in np.ndindex(array.shape):
                out[name + "/" + "/".join(str(i) for i in index)] = float(array[index])
    return out


def _process_index() -> int:
    import jax  # here so that summaries.py stays importable without initialising JAX

    return jax.process_index()


def drop_metrics_after(path: str, step: int) -> int:
    """Remove the lines of a ``metrics.jsonl`` logged after ``step``; returns how many.

    On resume from the checkpoint at ``step`` the steps after it are trained again,
    so their old lines would otherwise appear twice. The file is rewritten atomically.
    """
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = f.read().splitlines()
    kept = [line for line in lines if not line.strip() or json.loads(line)["step"] <= step]
    dropped = len(lines) - len(kept)
    if dropped:
        with open(path + ".tmp", "w") as f:
            f.write("".join(line + "\n" for line in kept))
        os.replace(path + ".tmp", path)
        log.info("metrics.jsonl: dropped %d line(s) after step %d (trained again)", dropped, step)
    return dropped


class SummaryWriter:
    """Writes scalars to ``<model_dir>/<subdir>`` (TensorBoard) and ``metrics.jsonl``.

    ``resume_step``: the run resumes from this step, so logs of later steps are
    dropped from ``metrics.jsonl`` and TensorBoard is told to purge them (a
    ``SessionLog.START`` event at that step).
    """

    def __init__(
        self, model_dir: str, *, subdir: str = "train", resume_step: int | None = None
    ) -> None:
        self.directory = os.path.join(model_dir, subdir)
        self._events = None
        if _process_index() != 0:  # multi-host: the first host writes, the others discard
            self._jsonl = open(os.devnull, "a")  # noqa: SIM115
            return
        os.makedirs(self.directory, exist_ok=True)
        if resume_step is not None:
            drop_metrics_after(os.path.join(self.directory, "metrics.jsonl"), resume_step)
        self._jsonl = open(os.path.join(self.directory, "metrics.jsonl"), "a")  # noqa: SIM115
        try:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.summary.writer.record_writer import RecordWriter
        except ImportError:
            log.warning("tensorboard is not installed: metrics go to metrics.jsonl only")
        else:
            name = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}"
            self._events = RecordWriter(open(os.path.join(self.directory, name), "wb"))  # noqa: SIM115
            version = Event(wall_time=time.time(), step=0, file_version="brain.Event:2")
            self._events.write(version.SerializeToString())
            if resume_step is not None:
                from tensorboard.compat.proto.event_pb2 import SessionLog

                start = Event(wall_time=time.time(), step=resume_step,
                              session_log=SessionLog(status=SessionLog.START))  # fmt: skip
                self._events.write(start.SerializeToString())
            self._events.flush()

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()
        if self._events is not None:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary

            values = [Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()]
            event = Event(wall_time=time.time(), step=step, summary=Summary(value=values))
            self._events.write(event.SerializeToString())
            self._events.flush()

    def close(self) -> None:
        self._jsonl.close()
        if self._events is not None:
            self._events.close()


class MetricAverager:
    """Host-side mean of per-step metrics over a logging interval."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, float] = {}
        self._count = 0

    def add(self, scalars: Mapping[str, float]) -> None:
        for k, v in scalars.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._count += 1

    def mean(self) -> dict[str, float]:
        return {k: v / max(self._count, 1) for k, v in self._sums.items()}


def format_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    """Throughput over the last interval and the ETA to ``end_step``."""

    def __init__(self, *, start_step: int, end_step: int) -> None:
        self.end_step = end_step
        self._last_step = start_step
        self._last_time = time.perf_counter()
        self._tokens = 0

    def add_tokens(self, n: int) -> None:
        self._tokens += n

    def measure(self, step: int) -> dict[str, float]:
        """steps/s and real tokens/s since the previous call."""
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        steps = step - self._last_step
        out = {"steps_per_sec": steps / elapsed, "real_tokens_per_sec": self._tokens / elapsed}
        self._last_step, self._last_time, self._tokens = step, now, 0
        return out

    def line(self, step: int, scalars: Mapping[str, float]) -> str:
        rate = scalars.get("steps_per_sec", 0.0)
        eta = (self.end_step - step) / rate if rate > 0 else float("nan")
        parts = [f"step {step}/{self.end_step}"]
        for key, fmt in (
            ("loss", "loss {:.4f}"),
            ("accuracy", "acc {:.3f}"),
            ("learning_rate", "lr {:.2e}"),
            ("grad_norm", "gnorm {:.3f}"),
            ("steps_per_sec", "{:.2f} steps/s"),
            ("real_tokens_per_sec", "{:.0f} tok/s"),
        ):
            if key in scalars:
                parts.append(fmt.format(scalars[key]))
        parts.append("ETA " + (format_duration(eta) if eta == eta else "?"))
        return " | ".join(parts)

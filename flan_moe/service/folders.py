"""Stage states read from the experiment folders (the source of truth), and ``rebuild``.

A stage folder holds ``STAGE.json`` (written when an attempt starts), ``DONE.json`` (the
key it finished under) or ``FAILED.json``, and ``stage.log``. ``pipeline.plan_pipeline``
decides which finished stages are still current (their ``DONE.json`` key equals the key
of today's plan); the rest is read from the markers and their times.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path

from flan_moe.experiments import pipeline
from flan_moe.service import submission as submission_lib

FOLDER_STATUSES = ("done", "stale", "failed", "interrupted", "not_started")


@dataclasses.dataclass(frozen=True)
class FolderState:
    """``status``: done (DONE.json under today's key) | stale (DONE.json under another key)
    | failed (FAILED.json) | interrupted (STAGE.json only: an attempt that did not end)
    | not_started."""

    status: str
    key: str | None = None
    started_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    seconds: float | None = None
    attempts: int = 0
    error: str | None = None


def _mtime(path: Path) -> dt.datetime | None:
    try:
        return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).replace(tzinfo=None)
    except FileNotFoundError:
        return None


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def attempts_in_log(log: Path, *, done: bool) -> int:
    """Attempts a stage log shows: one ``$ command`` line per attempt of a command stage;
    for a Python stage, its ``STAGE FAILED`` lines plus the successful one."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return 0
    commands = sum(line.startswith("$ ") for line in lines)
    failures = sum(line.startswith("STAGE FAILED") for line in lines)
    return max(commands, failures + int(done))


def folder_states(planned: submission_lib.Planned) -> dict[str, FolderState]:
    """The state of every planned stage, from its folder."""
    states = {}
    for plan in pipeline.plan_pipeline(planned.stages, planned.root):
        folder = pipeline.stage_dir(planned.root, plan.stage.name)
        done, failed = _json(folder / pipeline.DONE), _json(folder / pipeline.FAILED)
        started = _mtime(folder / pipeline.ATTEMPT)
        if plan.action == "skip":
            status = "done"
        elif done is not None:
            status = "stale"
        elif failed is not None:
            status = "failed"
        elif started is not None:
            status = "interrupted"
        else:
            status = "not_started"
        ended = done or failed
        states[plan.stage.name] = FolderState(
            status=status,
            key=(done or {}).get("key"),
            started_at=started,
            ended_at=_mtime(folder / (pipeline.DONE if done else pipeline.FAILED)),
            seconds=ended.get("seconds") if ended else None,
            attempts=attempts_in_log(folder / pipeline.LOG, done=status == "done"),
            error=(failed or {}).get("error") if status == "failed" else None,
        )
    return states


def results_pointer(stage: pipeline.Stage) -> str | None:
    """Where a stage's results live: a train stage's MODEL_DIR, an eval / analysis stage's
    checkpoint directory (results.json, routing_analysis.json beside the checkpoint)."""
    if stage.train_target is not None:
        return stage.train_target.model_dir
    for arg in stage.command or ():
        for flag in ("--checkpoint_dir=", "--checkpoint="):
            if arg.startswith(flag):
                return arg[len(flag) :]
    return None


def rebuild(
    registry,
    output_dir: str | os.PathLike,
    *,
    planner: submission_lib.Planner | None = None,
    on_problem: Callable[[Path, str], None] | None = None,
) -> list[str]:
    """Reconstruct the registry from the folders under ``output_dir``; returns the roots.

    Every ``<experiment>/<scale>`` folder and every folder with a ``SERVICE.json`` is
    re-planned and its stages' states read from their markers. Unfinished stages of a
    submitted (not cancelled) experiment are queued again; a CLI run's stay ``pending``.
    A folder that cannot be planned (its experiment needs pretrained checkpoints the record
    does not name ...) raises, or with ``on_problem`` is reported there and left out.
    """
    from flan_moe.service import store

    planner = planner or submission_lib.plan
    roots = []
    for folder, submission, submitted in submission_lib.find_experiment_folders(output_dir):
        try:
            planned = planner(submission, Path(output_dir))
            if planned.root != folder:
                raise ValueError(
                    f"{folder}: its record plans to {planned.root}; was the folder moved? Move "
                    "it back or delete its SERVICE.json"
                )
        except (ValueError, KeyError) as e:
            if on_problem is None:
                raise
            on_problem(folder, str(e))
            continue
        record = submission_lib.read_record_raw(folder)
        with registry.session() as session:
            store.sync_experiment(
                session, planned, folder_states(planned), submitted=submitted,
                cancelled=bool(record.get("cancelled")), requeue=False,
            )  # fmt: skip
        roots.append(str(folder))
    return roots


def print_problem(folder: Path, message: str) -> None:
    """``rebuild``'s ``on_problem`` for the command lines: one line on stderr per folder."""
    import sys

    print(f"not rebuilt: {folder}: {message}", file=sys.stderr)

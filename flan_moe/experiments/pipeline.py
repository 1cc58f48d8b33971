"""Resumable pipelines of stages (instruction-tune -> evaluate -> finetune -> evaluate).

Each stage writes into its own folder under the experiment directory::

    <experiment_dir>/<stage name>/
        stage.log      everything the stage printed (its command's stdout + stderr)
        DONE.json      written last, atomically, when the stage succeeded
        FAILED.json    written when it failed: the error and the log's path

A stage with ``DONE.json`` is skipped on re-run, so re-running the same command
resumes from the first stage that has not finished (a failed stage is retried).
A stage whose dependency failed is not run and is reported as blocked.

A stage is a command (a subprocess, so a crash in one stage cannot take the pipeline
down and every stage has a complete log) or a Python callable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

DONE = "DONE.json"
FAILED = "FAILED.json"
LOG = "stage.log"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of an experiment.

    Exactly one of ``command`` (argv, run with the stage folder in ``$STAGE_DIR``) and
    ``function`` (called with the stage folder and an open log file) is given.
    """

    name: str
    command: tuple[str, ...] | None = None
    function: Callable[[Path, TextIO], None] | None = None
    depends_on: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if (self.command is None) == (self.function is None):
            raise ValueError(f"stage {self.name!r}: give exactly one of command or function")


@dataclasses.dataclass
class StageOutcome:
    name: str
    status: str  # "done" | "skipped" | "failed" | "blocked"
    seconds: float = 0.0
    log_path: str | None = None
    error: str | None = None


class PipelineError(RuntimeError):
    """Raised by ``run_pipeline(..., raise_on_failure=True)`` when a stage failed."""


def stage_dir(experiment_dir: str | os.PathLike, name: str) -> Path:
    return Path(experiment_dir) / name


def is_done(experiment_dir: str | os.PathLike, name: str) -> bool:
    return (stage_dir(experiment_dir, name) / DONE).exists()


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _run_command(stage: Stage, out: Path, log: TextIO, echo: Callable[[str], None]) -> None:
    env = dict(os.environ)
    env.update(dict(stage.env))
    env["STAGE_DIR"] = str(out)
    env.setdefault("PYTHONUNBUFFERED", "1")
    log.write(f"$ {' '.join(stage.command)}\n")
    log.flush()
    process = subprocess.Popen(
        list(stage.command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        bufsize=1,
    )
    assert process.stdout is not None
    for line in process.stdout:
        log.write(line)
        log.flush()
        echo(line.rstrip("\n"))
    code = process.wait()
    if code != 0:
        raise RuntimeError(f"command exited with status {code}")


def run_pipeline(
    stages: Sequence[Stage],
    experiment_dir: str | os.PathLike,
    *,
    force: Sequence[str] = (),
    verbose: bool = True,
    raise_on_failure: bool = False,
    out: TextIO = sys.stdout,
) -> list[StageOutcome]:
    """Run stages in order, skipping finished ones; report each outcome.

    ``force`` names stages to re-run even if finished. Returns one outcome per stage.
    """
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique: {names}")
    known = set()
    for s in stages:
        missing = [d for d in s.depends_on if d not in known]
        if missing:
            raise ValueError(f"stage {s.name!r} depends on {missing}, which do not come before it")
        known.add(s.name)

    root = Path(experiment_dir)
    root.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, StageOutcome] = {}
    start = time.perf_counter()
    todo = [s for s in stages if s.name in force or not is_done(root, s.name)]
    durations: list[float] = []

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    for index, stage in enumerate(stages, start=1):
        prefix = f"[{index}/{len(stages)}] {stage.name}"
        folder = stage_dir(root, stage.name)
        if stage.name not in force and is_done(root, stage.name):
            outcomes[stage.name] = StageOutcome(stage.name, "skipped", log_path=str(folder / LOG))
            say(f"{prefix}: already done, skipped")
            continue
        blocked = [d for d in stage.depends_on if outcomes[d].status in ("failed", "blocked")]
        if blocked:
            outcomes[stage.name] = StageOutcome(stage.name, "blocked", error=f"needs {blocked}")
            say(f"{prefix}: not run, its dependencies {blocked} did not finish")
            continue
        remaining = sum(1 for s in todo if s.name not in outcomes)
        eta = ""
        if durations:
            eta = f", ETA for the rest ~{sum(durations) / len(durations) * remaining:.0f}s"
        say(f"{prefix}: running (elapsed {time.perf_counter() - start:.0f}s{eta})")
        folder.mkdir(parents=True, exist_ok=True)
        for marker in (DONE, FAILED):
            (folder / marker).unlink(missing_ok=True)
        t0 = time.perf_counter()
        log_path = folder / LOG
        with open(log_path, "w") as log:
            try:
                if stage.command is not None:
                    echo = (lambda line: say(f"    {line}")) if verbose else (lambda line: None)
                    _run_command(stage, folder, log, echo)
                else:
                    assert stage.function is not None
                    stage.function(folder, log)
            except Exception as e:  # every failure is reported, then resumable
                seconds = time.perf_counter() - t0
                error = f"{type(e).__name__}: {e}"
                log.write(f"\nSTAGE FAILED: {error}\n")
                _write_json_atomic(
                    folder / FAILED,
                    {"stage": stage.name, "error": error, "log": str(log_path), "seconds": seconds},
                )
                outcomes[stage.name] = StageOutcome(
                    stage.name, "failed", seconds, str(log_path), error
                )
                say(f"{prefix}: FAILED after {seconds:.0f}s: {error}\n    log: {log_path}")
                continue
        seconds = time.perf_counter() - t0
        durations.append(seconds)
        _write_json_atomic(folder / DONE, {"stage": stage.name, "seconds": seconds})
        outcomes[stage.name] = StageOutcome(stage.name, "done", seconds, str(log_path))
        say(f"{prefix}: done in {seconds:.0f}s")

    failed = [o for o in outcomes.values() if o.status == "failed"]
    if failed:
        say(
            "Failed stages: "
            + ", ".join(f"{o.name} (log: {o.log_path})" for o in failed)
            + ". Fix the cause and run the same command again: finished stages are skipped."
        )
        if raise_on_failure:
            raise PipelineError(f"{len(failed)} stage(s) failed: {[o.name for o in failed]}")
    return [outcomes[s.name] for s in stages]

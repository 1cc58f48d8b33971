"""Resumable pipelines of stages (instruction-tune -> evaluate -> finetune -> evaluate).

Each stage writes into its own folder under the experiment directory::

    <experiment_dir>/<stage name>/
        stage.log      everything the stage printed (its command's stdout + stderr)
        DONE.json      written last, atomically, when the stage succeeded
        FAILED.json    written when it failed: the error and the log's path

A stage is done when its ``DONE.json`` records the same key as now: the key hashes
everything that determines the stage's output (``stage_keys``: its command and gin
files, and its dependencies' keys and outputs). Re-running the same command resumes
from the first stage that has not finished (a failed stage is retried); a stage whose
config changed is re-run from a clean folder, and so is every stage after it that
depends on it — or, with ``keep_stale=True``, kept and reported as ``stale``. A stage
whose dependency failed is not run and is reported as blocked. ``plan_pipeline`` says
what a run would do without running anything (``--dry_run``).

A train stage (``Stage.train_target``) is done only if its MODEL_DIR's latest good
checkpoint is at the planned absolute step; its output is that checkpoint's digest.

A stage is a command (a subprocess, supervised by ``supervise``: it cannot outlive the
pipeline, a crash in one stage cannot take the pipeline down and every stage has a
complete log) or a Python callable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from flan_moe.experiments import stage_keys, supervise

DONE = "DONE.json"
FAILED = "FAILED.json"
ATTEMPT = "STAGE.json"  # the key of the stage's latest attempt (written when it starts)
LOG = "stage.log"
EXIT_STOPPED = 75  # a trainer stopped before its target step (flan_moe.training.loop)


@dataclasses.dataclass(frozen=True)
class TrainTarget:
    """What a train stage must reach: ``model_dir``'s latest good checkpoint at ``step``.

    ``batch_size`` and ``tokens_per_example`` (input + target length) only feed the
    ``--dry_run`` estimate.
    """

    model_dir: str
    step: int
    batch_size: int = 0
    tokens_per_example: int = 0


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
    fingerprint: str = ""  # stage_keys.command_fingerprint of what determines its output
    train_target: TrainTarget | None = None

    def __post_init__(self) -> None:
        if (self.command is None) == (self.function is None):
            raise ValueError(f"stage {self.name!r}: give exactly one of command or function")


@dataclasses.dataclass
class StageOutcome:
    name: str
    status: str  # "done" | "skipped" | "stale" | "failed" | "blocked"
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

    def on_line(line: str) -> None:
        log.write(line)
        log.flush()
        echo(line.rstrip("\n"))

    code = supervise.run_supervised(stage.command, env=env, on_line=on_line)
    if code == EXIT_STOPPED:
        raise RuntimeError(
            f"command exited with status {code}: stopped before its planned end (a checkpoint "
            "was saved); run the same command again to continue"
        )
    if code != 0:
        raise RuntimeError(f"command exited with status {code}")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


def verify_train_target(target: TrainTarget) -> str:
    """Raise unless the latest good checkpoint is at the planned step; returns its digest."""
    from flan_moe.training.integrity import latest_good_checkpoint  # pure Python

    latest = latest_good_checkpoint(target.model_dir, level="sizes")
    if latest is None or latest[0] != target.step:
        at = "no checkpoint" if latest is None else f"step {latest[0]}"
        raise RuntimeError(
            f"training ended at {at} in {target.model_dir}, but the plan is step "
            f"{target.step}: the stage is not done (re-run to continue; a checkpoint past "
            "the plan means the MODEL_DIR holds another run: remove it)"
        )
    return stage_keys.checkpoint_digest(latest[1])


@dataclasses.dataclass(frozen=True)
class PlannedStage:
    """What ``run_pipeline`` would do with a stage: ``action`` run | skip | stale."""

    stage: Stage
    action: str
    reason: str
    key: str


def _decide(
    stage: Stage, root: Path, inputs: dict[str, dict], force: Sequence[str], keep_stale: bool
) -> PlannedStage:
    key = stage_keys.stage_key(stage.fingerprint, inputs)
    done = _read_json(stage_dir(root, stage.name) / DONE)
    stale_input = any(r.get("stale") for r in inputs.values())
    if stage.name in force:
        return PlannedStage(stage, "run", "forced", key)
    if done is None:
        attempt = _read_json(stage_dir(root, stage.name) / ATTEMPT)
        resumed = attempt is not None and attempt.get("key") == key
        return PlannedStage(stage, "run", "resume" if resumed else "not done", key)
    if done.get("key") == key:
        return PlannedStage(stage, "stale" if stale_input else "skip", "done", key)
    reason = "config changed" if done.get("fingerprint") != stage.fingerprint else "input changed"
    if keep_stale:
        return PlannedStage(stage, "stale", f"{reason}, kept (--keep-stale)", key)
    return PlannedStage(stage, "run", reason, key)


def _check_stages(stages: Sequence[Stage]) -> None:
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique: {names}")
    known = set()
    for s in stages:
        missing = [d for d in s.depends_on if d not in known]
        if missing:
            raise ValueError(f"stage {s.name!r} depends on {missing}, which do not come before it")
        known.add(s.name)


def plan_pipeline(
    stages: Sequence[Stage],
    experiment_dir: str | os.PathLike,
    *,
    force: Sequence[str] = (),
    keep_stale: bool = False,
) -> list[PlannedStage]:
    """What ``run_pipeline`` would do with each stage (nothing is run or written)."""
    _check_stages(stages)
    root = Path(experiment_dir)
    records: dict[str, dict] = {}
    planned = []
    for stage in stages:
        inputs = {d: records[d] for d in stage.depends_on}
        plan = _decide(stage, root, inputs, force, keep_stale)
        if plan.action == "run" and plan.reason == "input changed":
            plan = dataclasses.replace(plan, reason="an input re-runs")
        planned.append(plan)
        done = _read_json(stage_dir(root, stage.name) / DONE) or {}
        if plan.action == "run":  # its new output is unknown until it runs
            records[stage.name] = {"key": "pending", "output": "pending"}
        else:
            records[stage.name] = {**done, "stale": plan.action == "stale"}
    return planned


def _estimate(target: TrainTarget) -> tuple[str, int, int]:
    """(text, steps left, tokens left at most) of a train stage."""
    from flan_moe.training.integrity import latest_good_checkpoint

    latest = latest_good_checkpoint(target.model_dir, level="structure")
    at = 0 if latest is None else latest[0]
    steps = max(target.step - at, 0)
    tokens = steps * target.batch_size * target.tokens_per_example
    text = f"train to step {target.step} (at {at}): {steps} steps"
    if target.batch_size:
        text += f" x batch {target.batch_size}"
    if tokens:
        text += f", <= {tokens:,} tokens"
    return text, steps, tokens


def format_plan(planned: Sequence[PlannedStage]) -> str:
    """The ``--dry_run`` listing: one line per stage, then the totals."""
    lines = []
    total_steps = total_tokens = 0
    for index, p in enumerate(planned, start=1):
        what = {"run": "WOULD RUN", "skip": "skip", "stale": "keep (stale)"}[p.action]
        extra = ""
        if p.action == "run" and p.stage.train_target is not None:
            text, steps, tokens = _estimate(p.stage.train_target)
            extra, total_steps, total_tokens = (
                f" - {text}",
                total_steps + steps,
                total_tokens + tokens,
            )
        lines.append(f"[{index}/{len(planned)}] {p.stage.name}: {what} ({p.reason}){extra}")
    runs = sum(p.action == "run" for p in planned)
    stale = sum(p.action == "stale" for p in planned)
    lines.append(
        f"{runs} of {len(planned)} stage(s) would run ({total_steps} training steps, "
        f"<= {total_tokens:,} tokens), {stale} stale kept."
    )
    return "\n".join(lines)


def _start_attempt(folder: Path, plan: PlannedStage, say: Callable[[str], None]) -> None:
    """Clear the markers; a folder left by an attempt with another key is emptied first."""
    attempt = _read_json(folder / ATTEMPT)
    if folder.exists() and (attempt is None or attempt.get("key") != plan.key):
        if any(folder.iterdir()):
            say(f"    {plan.reason}: removing the outputs of the earlier attempt in {folder}")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for marker in (DONE, FAILED):
        (folder / marker).unlink(missing_ok=True)
    _write_json_atomic(folder / ATTEMPT, {"stage": plan.stage.name, "key": plan.key})


def _execute(stage: Stage, folder: Path, log: TextIO, echo: Callable[[str], None]) -> str | None:
    """Run one stage; returns its output digest (train stages) or None."""
    if stage.command is not None:
        _run_command(stage, folder, log, echo)
    else:
        assert stage.function is not None
        stage.function(folder, log)
    return verify_train_target(stage.train_target) if stage.train_target else None


def run_pipeline(
    stages: Sequence[Stage],
    experiment_dir: str | os.PathLike,
    *,
    force: Sequence[str] = (),
    verbose: bool = True,
    raise_on_failure: bool = False,
    out: TextIO = sys.stdout,
    keep_stale: bool = False,
) -> list[StageOutcome]:
    """Run stages in order, skipping finished ones; report each outcome.

    ``force`` names stages to re-run even if finished; ``keep_stale`` keeps finished
    stages whose key changed (status "stale") instead of re-running them. Returns one
    outcome per stage. A KeyboardInterrupt (or SIGTERM) stops the running stage's child
    in order, records the stage as failed and is re-raised.
    """
    _check_stages(stages)
    root = Path(experiment_dir)
    root.mkdir(parents=True, exist_ok=True)
    outcomes: dict[str, StageOutcome] = {}
    records: dict[str, dict] = {}
    start = time.perf_counter()
    todo = {p.stage.name for p in plan_pipeline(stages, root, force=force, keep_stale=keep_stale)
            if p.action == "run"}  # fmt: skip
    durations: list[float] = []

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    for index, stage in enumerate(stages, start=1):
        prefix = f"[{index}/{len(stages)}] {stage.name}"
        folder = stage_dir(root, stage.name)
        blocked = [d for d in stage.depends_on if outcomes[d].status in ("failed", "blocked")]
        if blocked:
            outcomes[stage.name] = StageOutcome(stage.name, "blocked", error=f"needs {blocked}")
            say(f"{prefix}: not run, its dependencies {blocked} did not finish")
            continue
        plan = _decide(stage, root, {d: records[d] for d in stage.depends_on}, force, keep_stale)
        if plan.action != "run":
            records[stage.name] = {
                **(_read_json(folder / DONE) or {}),
                "stale": plan.action == "stale",
            }
            status = "skipped" if plan.action == "skip" else "stale"
            outcomes[stage.name] = StageOutcome(stage.name, status, log_path=str(folder / LOG))
            say(f"{prefix}: already done, skipped" if status == "skipped"
                else f"{prefix}: STALE ({plan.reason}); its results are marked stale")  # fmt: skip
            continue
        remaining = sum(1 for name in todo if name not in outcomes)
        eta = ""
        if durations:
            eta = f", ETA for the rest ~{sum(durations) / len(durations) * remaining:.0f}s"
        say(f"{prefix}: running ({plan.reason}; elapsed {time.perf_counter() - start:.0f}s{eta})")
        _start_attempt(folder, plan, say)
        t0 = time.perf_counter()
        log_path = folder / LOG
        with open(log_path, "a") as log:
            echo = (lambda line: say(f"    {line}")) if verbose else (lambda line: None)
            try:
                with supervise.sigterm_as_interrupt():
                    output = _execute(stage, folder, log, echo)
            except (Exception, KeyboardInterrupt) as e:  # every failure is reported, then resumable
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
                if isinstance(e, KeyboardInterrupt):
                    say("Interrupted: run the same command again to resume.")
                    raise
                continue
        seconds = time.perf_counter() - t0
        durations.append(seconds)
        record = {"stage": stage.name, "seconds": seconds, "key": plan.key,
                  "fingerprint": stage.fingerprint, "output": output}  # fmt: skip
        _write_json_atomic(folder / DONE, record)
        records[stage.name] = record
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

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

import concurrent.futures
import dataclasses
import json
import os
import shutil
import sys
import threading
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


@dataclasses.dataclass
class _Attempt:
    """A stage that is running: where it logs, when it started, how it is reported."""

    stage: Stage
    plan: PlannedStage
    prefix: str
    folder: Path
    log: TextIO
    t0: float


class _Run:
    """One ``run_pipeline`` call's bookkeeping: outcomes, DONE records, messages."""

    def __init__(self, root: Path, out: TextIO, todo: set[str], jobs: int) -> None:
        self.root, self.out, self.todo, self.jobs = root, out, todo, jobs
        self.outcomes: dict[str, StageOutcome] = {}
        self.records: dict[str, dict] = {}
        self.durations: list[float] = []
        self.start = time.perf_counter()
        self.lock = threading.Lock()  # stage output lines come from worker threads

    def say(self, text: str) -> None:
        with self.lock:
            print(text, file=self.out, flush=True)

    def begin(self, stage: Stage, plan: PlannedStage, prefix: str) -> _Attempt:
        remaining = sum(1 for name in self.todo if name not in self.outcomes)
        eta = ""
        if self.durations:
            mean = sum(self.durations) / len(self.durations)
            eta = f", ETA for the rest ~{mean * remaining / self.jobs:.0f}s"
        elapsed = time.perf_counter() - self.start
        self.say(f"{prefix}: running ({plan.reason}; elapsed {elapsed:.0f}s{eta})")
        folder = stage_dir(self.root, stage.name)
        _start_attempt(folder, plan, self.say)
        return _Attempt(stage, plan, prefix, folder, open(folder / LOG, "a"), time.perf_counter())

    def echo_for(self, attempt: _Attempt, verbose: bool) -> Callable[[str], None]:
        if not verbose:
            return lambda line: None
        tag = f"[{attempt.stage.name}] " if self.jobs > 1 else ""
        return lambda line: self.say(f"    {tag}{line}")

    def failed(self, attempt: _Attempt, e: BaseException) -> None:
        seconds = time.perf_counter() - attempt.t0
        error = f"{type(e).__name__}: {e}"
        log_path = attempt.folder / LOG
        attempt.log.write(f"\nSTAGE FAILED: {error}\n")
        attempt.log.close()
        _write_json_atomic(
            attempt.folder / FAILED,
            {"stage": attempt.stage.name, "error": error, "log": str(log_path), "seconds": seconds},
        )
        name = attempt.stage.name
        self.outcomes[name] = StageOutcome(name, "failed", seconds, str(log_path), error)
        self.say(f"{attempt.prefix}: FAILED after {seconds:.0f}s: {error}\n    log: {log_path}")

    def done(self, attempt: _Attempt, output: str | None) -> None:
        attempt.log.close()
        seconds = time.perf_counter() - attempt.t0
        self.durations.append(seconds)
        name = attempt.stage.name
        record = {"stage": name, "seconds": seconds, "key": attempt.plan.key,
                  "fingerprint": attempt.stage.fingerprint, "output": output}  # fmt: skip
        _write_json_atomic(attempt.folder / DONE, record)
        self.records[name] = record
        self.outcomes[name] = StageOutcome(name, "done", seconds, str(attempt.folder / LOG))
        self.say(f"{attempt.prefix}: done in {seconds:.0f}s")

    def settle(self, stage: Stage, prefix: str, force, keep_stale: bool) -> PlannedStage | None:
        """Blocked, skipped or stale stages are recorded here; returns the plan to run."""
        blocked = [d for d in stage.depends_on if self.outcomes[d].status in ("failed", "blocked")]
        if blocked:
            self.outcomes[stage.name] = StageOutcome(
                stage.name, "blocked", error=f"needs {blocked}"
            )
            self.say(f"{prefix}: not run, its dependencies {blocked} did not finish")
            return None
        inputs = {d: self.records[d] for d in stage.depends_on}
        plan = _decide(stage, self.root, inputs, force, keep_stale)
        if plan.action == "run":
            return plan
        folder = stage_dir(self.root, stage.name)
        self.records[stage.name] = {
            **(_read_json(folder / DONE) or {}),
            "stale": plan.action == "stale",
        }
        status = "skipped" if plan.action == "skip" else "stale"
        self.outcomes[stage.name] = StageOutcome(stage.name, status, log_path=str(folder / LOG))
        self.say(f"{prefix}: already done, skipped" if status == "skipped"
                 else f"{prefix}: STALE ({plan.reason}); its results are marked stale")  # fmt: skip
        return None


def run_pipeline(
    stages: Sequence[Stage],
    experiment_dir: str | os.PathLike,
    *,
    force: Sequence[str] = (),
    verbose: bool = True,
    raise_on_failure: bool = False,
    out: TextIO = sys.stdout,
    keep_stale: bool = False,
    jobs: int = 1,
) -> list[StageOutcome]:
    """Run stages in order, skipping finished ones; report each outcome.

    ``force`` names stages to re-run even if finished; ``keep_stale`` keeps finished
    stages whose key changed (status "stale") instead of re-running them. ``jobs`` > 1
    runs up to that many command stages at once, each as soon as its dependencies are
    done (function stages run alone); their output lines are tagged with the stage name.
    Returns one outcome per stage. A KeyboardInterrupt (or SIGTERM) stops the running
    stages' children in order, records them as failed and is re-raised.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    _check_stages(stages)
    root = Path(experiment_dir)
    root.mkdir(parents=True, exist_ok=True)
    planned = plan_pipeline(stages, root, force=force, keep_stale=keep_stale)
    run = _Run(root, out, {p.stage.name for p in planned if p.action == "run"}, jobs)
    pending = [(f"[{i}/{len(stages)}] {s.name}", s) for i, s in enumerate(stages, start=1)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[concurrent.futures.Future, _Attempt] = {}
        with supervise.sigterm_as_interrupt():
            try:
                while pending or running:
                    _start_ready(run, pending, running, pool, force, keep_stale, verbose)
                    if running:
                        finished, _ = concurrent.futures.wait(
                            running, return_when=concurrent.futures.FIRST_COMPLETED
                        )
                        for future in finished:
                            _collect(run, running.pop(future), future)
            except KeyboardInterrupt:
                supervise.stop_all_children()
                for future, attempt in running.items():
                    concurrent.futures.wait([future])
                    run.failed(attempt, KeyboardInterrupt("interrupted"))
                run.say("Interrupted: run the same command again to resume.")
                raise
    failed = [o for o in run.outcomes.values() if o.status == "failed"]
    if failed:
        run.say(
            "Failed stages: "
            + ", ".join(f"{o.name} (log: {o.log_path})" for o in failed)
            + ". Fix the cause and run the same command again: finished stages are skipped."
        )
        if raise_on_failure:
            raise PipelineError(f"{len(failed)} stage(s) failed: {[o.name for o in failed]}")
    return [run.outcomes[s.name] for s in stages]


def _start_ready(run: _Run, pending: list, running: dict, pool, force, keep_stale, verbose):
    """Settle or start every pending stage whose dependencies are finished, in order.

    With one job the stages go strictly in order and each runs in this thread (so an
    interrupt reaches its child directly); function stages always run here, alone.
    """
    busy = {a.stage.name for a in running.values()}
    for item in list(pending):
        prefix, stage = item
        if any(d not in run.outcomes or d in busy for d in stage.depends_on):
            if run.jobs == 1:
                break
            continue
        inline = run.jobs == 1 or stage.command is None
        if (inline and running) or len(running) >= run.jobs:
            break
        pending.remove(item)
        plan = run.settle(stage, prefix, force, keep_stale)
        if plan is None:
            continue
        attempt = run.begin(stage, plan, prefix)
        echo = run.echo_for(attempt, verbose)
        if not inline:
            running[pool.submit(_execute, stage, attempt.folder, attempt.log, echo)] = attempt
            busy.add(stage.name)
            continue
        try:
            output = _execute(stage, attempt.folder, attempt.log, echo)
        except KeyboardInterrupt as e:  # run_pipeline says so and re-raises
            run.failed(attempt, e)
            raise
        except Exception as e:  # every failure is reported, then resumable
            run.failed(attempt, e)
        else:
            run.done(attempt, output)
        if run.jobs == 1:
            return  # back to the loop: strict order


def _collect(run: _Run, attempt: _Attempt, future: concurrent.futures.Future) -> None:
    try:
        output = future.result()
    except Exception as e:  # every failure is reported, then resumable
        run.failed(attempt, e)
    else:
        run.done(attempt, output)

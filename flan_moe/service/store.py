"""The registry: a database of experiments, runs and stages (SQLite by default).

``Registry(url)`` opens (and creates) the tables. The default URL is a SQLite file under
the output root (``default_url``); a lab's shared registry is a PostgreSQL URL
(``postgresql+psycopg://user:password@host/db``). Writes on SQLite take the database
lock at the start of each transaction (``BEGIN IMMEDIATE``), so workers in several
processes never lose an update; on PostgreSQL a stage is claimed with a conditional
``UPDATE ... WHERE status = 'queued'``, which both databases serialise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path

from sqlalchemy import create_engine, event, select, update
from sqlalchemy.orm import Session, sessionmaker

from flan_moe.experiments import pipeline
from flan_moe.service import folders
from flan_moe.service.models import Base, Experiment, Run, Stage, utcnow
from flan_moe.service.submission import Planned, Submission

DB_FILE = "registry.sqlite"


def default_url(output_dir: str | os.PathLike) -> str:
    return f"sqlite:///{Path(output_dir).resolve() / DB_FILE}"


class Registry:
    """An engine and a session factory over the registry's database."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(url, connect_args={"timeout": 60})
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed at the end of the block, rolled back on error."""
        with self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_connect(dbapi_connection, record) -> None:
    del record
    dbapi_connection.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN
    dbapi_connection.execute("PRAGMA journal_mode=WAL")
    dbapi_connection.execute("PRAGMA foreign_keys=ON")


# --- Registering a plan --------------------------------------------------------------------


def _status_from_folder(
    state: folders.FolderState, row: Stage, *, submitted: bool, cancelled: bool, requeue: bool
) -> str:
    if state.status == "done":
        return "done"
    if row.status == "running":  # a worker holds it; the worker records its end
        return "running"
    if cancelled:
        return "cancelled"
    if state.status == "failed" and not requeue:
        return "failed"
    if submitted:
        return "queued"
    return "stale" if state.status == "stale" else "pending"


def sync_experiment(
    session: Session,
    planned: Planned,
    states: Mapping[str, folders.FolderState],
    *,
    submitted: bool,
    cancelled: bool = False,
    requeue: bool = True,
) -> Experiment:
    """Create or update the rows of a planned experiment from its folder states.

    ``requeue``: a (re)submission, which queues every unfinished stage, failed ones too.
    """
    root = str(planned.root)
    exp = session.scalar(select(Experiment).where(Experiment.root == root))
    if exp is None:
        exp = Experiment(root=root, name=planned.experiment.name, scale=planned.scale.name)
        session.add(exp)
    exp.overrides = dict(planned.submission.overrides)
    exp.title = planned.experiment.title
    exp.cancelled = cancelled
    if submitted and not exp.submitted:
        exp.submitted, exp.submitted_at = True, utcnow()
    runs = {r.label: r for r in exp.runs}
    stages = {s.name: s for s in exp.stages}
    position = 0
    for index, plan in enumerate(planned.plans):
        run = runs.pop(plan.run.label, None)
        if run is None:
            run = Run(label=plan.run.label, experiment=exp)
            session.add(run)
        run.position, run.final_model_dir = index, str(plan.final_model_dir)
        for stage in plan.stages:
            row = stages.pop(stage.name, None)
            if row is None:
                row = Stage(name=stage.name, experiment=exp, attempts=0, status="pending")
                session.add(row)
            _fill_stage(row, stage, planned, run, position)
            state = states[stage.name]
            row.status = _status_from_folder(
                state, row, submitted=submitted, cancelled=cancelled, requeue=requeue
            )
            _copy_folder_state(row, state)
            position += 1
    for leftover in (*runs.values(), *stages.values()):  # no longer in the plan
        session.delete(leftover)
    if exp.report_path is None and (planned.root / "report" / "report.html").exists():
        exp.report_path = str(planned.root / "report" / "report.html")
    session.flush()
    return exp


def _fill_stage(row: Stage, stage: pipeline.Stage, planned: Planned, run: Run, pos: int) -> None:
    row.run, row.position, row.depends_on = run, pos, list(stage.depends_on)
    row.command = shlex.join(stage.command) if stage.command else f"<python: {stage.name}>"
    row.config_hash = stage.fingerprint
    row.log_path = str(pipeline.stage_dir(planned.root, stage.name) / pipeline.LOG)
    row.results_path = folders.results_pointer(stage)


def _copy_folder_state(row: Stage, state: folders.FolderState) -> None:
    if row.status == "running":
        return
    row.key = state.key
    row.attempts = max(row.attempts or 0, state.attempts)
    if state.started_at is not None:
        row.started_at, row.ended_at, row.seconds = state.started_at, state.ended_at, state.seconds
    row.error = state.error if row.status == "failed" else None


def submit(session: Session, planned: Planned) -> Experiment:
    """Register a submission and queue its unfinished stages (finished ones stay done)."""
    from flan_moe.service.submission import write_record

    write_record(planned.root, planned.submission, cancelled=False)
    return sync_experiment(session, planned, folders.folder_states(planned), submitted=True)


# --- Workers ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Claim:
    stage_id: int
    name: str
    submission: Submission
    attempt: int


def claim_next(session: Session, *, worker: str, host: str, pid: int, devices: str) -> Claim | None:
    """Take the first queued stage whose dependencies are done (oldest submission first)."""
    queued = session.scalars(
        select(Stage)
        .join(Experiment)
        .where(Stage.status == "queued", Experiment.cancelled.is_(False))
        .order_by(Experiment.submitted_at, Experiment.id, Stage.position)
    ).all()
    done: dict[int, set[str]] = {}
    for stage in queued:
        if stage.experiment_id not in done:
            done[stage.experiment_id] = set(session.scalars(
                select(Stage.name).where(Stage.experiment_id == stage.experiment_id,
                                         Stage.status == "done")
            ))  # fmt: skip
        if not set(stage.depends_on) <= done[stage.experiment_id]:
            continue
        now, attempt = utcnow(), stage.attempts + 1
        taken = session.execute(
            update(Stage)
            .where(Stage.id == stage.id, Stage.status == "queued")
            .values(status="running", worker=worker, host=host, pid=pid, devices=devices,
                    attempts=Stage.attempts + 1, started_at=now, heartbeat_at=now, ended_at=None,
                    seconds=None, error=None, cancel_requested=False)
        )  # fmt: skip
        if taken.rowcount == 1:
            exp = stage.experiment
            return Claim(stage.id, stage.name, Submission(exp.name, exp.scale, exp.overrides),
                         attempt)  # fmt: skip
    return None


def heartbeat(session: Session, stage_id: int, worker: str) -> bool:
    """Record that ``worker`` is alive on the stage; returns True when a cancel was asked."""
    stage = session.get(Stage, stage_id)
    if stage is None or stage.worker != worker:
        return False
    stage.heartbeat_at = utcnow()
    return bool(stage.cancel_requested)


def finish(
    session: Session, stage_id: int, state: folders.FolderState, *, cancelled: bool = False
) -> Stage:
    """Record a worker's end of a stage from its folder state."""
    stage = session.get(Stage, stage_id)
    assert stage is not None
    stage.status = "done" if state.status == "done" else ("cancelled" if cancelled else "failed")
    stage.key, stage.error = state.key, state.error if stage.status == "failed" else None
    stage.ended_at, stage.heartbeat_at = utcnow(), None
    stage.seconds = state.seconds
    if cancelled:
        stage.error = "cancelled"
    return stage


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def requeue_orphans(
    session: Session, *, host: str, stale_after: dt.timedelta, max_attempts: int = 3
) -> list[str]:
    """Stages left ``running`` by a dead worker go back to the queue (the stage resumes
    from its last checkpoint); after ``max_attempts`` they are marked failed.

    A worker is dead when it ran on this host and its pid is gone, or when its heartbeat
    is older than ``stale_after`` (another host).
    """
    now = utcnow()
    names = []
    for stage in session.scalars(select(Stage).where(Stage.status == "running")):
        local_dead = stage.host == host and stage.pid is not None and not _pid_alive(stage.pid)
        silent = stage.heartbeat_at is None or now - stage.heartbeat_at > stale_after
        if not (local_dead or silent):
            continue
        why = f"worker {stage.worker} (pid {stage.pid} on {stage.host}) stopped during attempt "
        why += f"{stage.attempts}"
        if stage.attempts >= max_attempts:
            stage.status, stage.error = "failed", why + f"; {max_attempts} attempts, not retried"
        else:
            stage.status, stage.error = "queued", why + "; queued again"
        stage.heartbeat_at = None
        names.append(stage.name)
    return names


# --- User actions ----------------------------------------------------------------------------


def cancel_experiment(session: Session, experiment_id: int) -> Experiment:
    """Queued stages are cancelled; running ones are asked to stop (their worker stops the
    stage's command, which saves a checkpoint, and records it cancelled)."""
    exp = session.get(Experiment, experiment_id)
    if exp is None:
        raise KeyError(f"no experiment {experiment_id}")
    exp.cancelled = True
    for stage in exp.stages:
        if stage.status in ("queued", "pending"):
            stage.status = "cancelled"
        elif stage.status == "running":
            stage.cancel_requested = True
    from flan_moe.service.submission import read_record, write_record

    if (record := read_record(Path(exp.root))) is not None:
        write_record(Path(exp.root), record[0], cancelled=True)
    return exp


def retry_stage(session: Session, stage_id: int) -> Stage:
    """Queue a failed or cancelled stage again (and un-cancel its experiment)."""
    stage = session.get(Stage, stage_id)
    if stage is None:
        raise KeyError(f"no stage {stage_id}")
    if stage.status not in ("failed", "cancelled"):
        raise ValueError(f"stage {stage.name!r} is {stage.status}: only a failed or cancelled "
                         "stage can be retried")  # fmt: skip
    exp = stage.experiment
    if exp.cancelled:
        exp.cancelled = False
        for other in exp.stages:
            if other.status == "cancelled" and other.id != stage.id:
                other.status = "queued"
    stage.status, stage.error = "queued", None
    return stage


# --- Views ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Progress:
    status: str
    done: int
    total: int
    eta_seconds: float | None


def progress(exp: Experiment) -> Progress:
    """Status, stages done of total, and an ETA (mean duration of the stages run so far
    times the stages left, minus the running ones' elapsed time)."""
    counts: dict[str, int] = {}
    for stage in exp.stages:
        counts[stage.status] = counts.get(stage.status, 0) + 1
    total, done = len(exp.stages), counts.get("done", 0)
    if counts.get("running"):
        status = "running"
    elif exp.cancelled:
        status = "cancelled"
    elif total and done == total:
        status = "done" if exp.report_path else "reporting"
    elif counts.get("failed"):
        status = "failed"
    elif counts.get("queued"):
        status = "queued"
    else:
        status = "registered"
    durations = [s.seconds for s in exp.stages if s.status == "done" and s.seconds]
    left = counts.get("queued", 0) + counts.get("running", 0)
    eta = None
    if durations and left:
        now = utcnow()
        running = sum((now - s.started_at).total_seconds() for s in exp.stages
                      if s.status == "running" and s.started_at)  # fmt: skip
        eta = max(sum(durations) / len(durations) * left - running, 0.0)
    return Progress(status, done, total, eta)


def adopt(session: Session, stage_id: int, *, worker: str, host: str, pid: int) -> None:
    """A job took over a stage its launcher claimed: it beats under its own name now."""
    stage = session.get(Stage, stage_id)
    assert stage is not None
    stage.worker, stage.host, stage.pid, stage.heartbeat_at = worker, host, pid, utcnow()


def claimable(session: Session) -> int:
    """Queued stages in experiments that are not cancelled (ready or waiting)."""
    return len(session.scalars(select(Stage.id).join(Experiment).where(
        Stage.status == "queued", Experiment.cancelled.is_(False))).all())  # fmt: skip

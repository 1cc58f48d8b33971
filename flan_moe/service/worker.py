"""A worker: takes queued stages from the registry and runs them on one device slice.

Each stage runs through ``pipeline.run_pipeline`` over the stage and its ancestors, the
code path of ``scripts/run_experiment.py``: finished ancestors are skipped, the stage's
folder gets its ``STAGE.json``, ``stage.log`` and ``DONE.json`` / ``FAILED.json`` as on
the CLI, and a stage interrupted earlier resumes from its last checkpoint. The command
runs as a supervised child (``supervise``): if the worker dies, even by SIGKILL, the
child gets SIGTERM, saves a checkpoint and exits; the row stays ``running`` until a
worker on the same host sees the dead pid (or any worker sees a silent heartbeat) and
queues it again (``store.requeue_orphans``).

Device slices: ``all`` (what the machine shows), ``cpu`` (no accelerator), or GPU ids
``0,1`` (``CUDA_VISIBLE_DEVICES`` of the stage's command). One stage at a time per worker;
run one worker per slice (``flan_moe.cli.worker --devices 0`` ... or ``serve --slice``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from flan_moe.experiments import pipeline, runner
from flan_moe.service import folders, store
from flan_moe.service import submission as submission_lib


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    output_dir: Path
    devices: str = "all"  # all | cpu | comma-separated GPU ids
    poll_seconds: float = 2.0
    heartbeat_seconds: float = 5.0
    stale_after_seconds: float = 120.0  # a silent worker on another host is dead after this
    max_attempts: int = 3  # attempts of a stage whose worker died, then it is failed

    def __post_init__(self) -> None:
        device_env(self.devices)  # raises on a malformed slice


def device_env(devices: str) -> tuple[tuple[str, str], ...]:
    """The environment a stage's command gets on the slice ``devices``."""
    if devices == "all":
        return ()
    if devices == "cpu":
        return (("CUDA_VISIBLE_DEVICES", ""), ("JAX_PLATFORMS", "cpu"))
    ids = devices.split(",")
    if not all(i.strip().isdigit() for i in ids):
        raise ValueError(
            f"device slice {devices!r}: use 'all', 'cpu' or comma-separated GPU ids like '0,1'"
        )
    return (("CUDA_VISIBLE_DEVICES", ",".join(i.strip() for i in ids)),)


class _Heartbeat(threading.Thread):
    """Beats on the claimed stage's row; on a cancel request it stops the stage (SIGTERM
    to this process, which ``run_pipeline`` turns into an orderly stop of the command)."""

    def __init__(self, registry: store.Registry, stage_id: int, worker: str, every: float):
        super().__init__(daemon=True)
        self.registry, self.stage_id, self.worker, self.every = registry, stage_id, worker, every
        self.stopped = threading.Event()
        self.cancel_seen = False
        # Only a worker in the main thread (a worker process) turns SIGTERM into a stop; a
        # worker thread (tests) records the cancel when its stage ends.
        self.can_signal = threading.current_thread() is threading.main_thread()

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            with self.registry.session() as session:
                cancel = store.heartbeat(session, self.stage_id, self.worker)
            if cancel and not self.cancel_seen:
                self.cancel_seen = True
                if self.can_signal:
                    os.kill(os.getpid(), signal.SIGTERM)


class Worker:
    def __init__(
        self,
        registry: store.Registry,
        config: WorkerConfig,
        *,
        planner: submission_lib.Planner = submission_lib.plan,
        out: TextIO = sys.stdout,
    ) -> None:
        self.registry, self.config, self.planner, self.out = registry, config, planner, out
        self.host = socket.gethostname()
        self.name = f"{self.host}:{os.getpid()}:{config.devices}"

    def say(self, text: str) -> None:
        print(f"[worker {self.name}] {text}", file=self.out, flush=True)

    def run_once(self) -> bool:
        """Queue orphaned stages again, then run one queued stage; False when none is ready."""
        with self.registry.session() as session:
            orphans = store.requeue_orphans(
                session, host=self.host, max_attempts=self.config.max_attempts,
                stale_after=dt.timedelta(seconds=self.config.stale_after_seconds),
            )  # fmt: skip
        for name in orphans:
            self.say(f"{name}: its worker died; queued again (it resumes from its checkpoint)")
        with self.registry.session() as session:
            claim = store.claim_next(session, worker=self.name, host=self.host, pid=os.getpid(),
                                     devices=self.config.devices)  # fmt: skip
        if claim is None:
            return False
        self.execute(claim)
        return True

    def run(self, *, stop: threading.Event | None = None, exit_when_idle: bool = False) -> None:
        """Run stages until ``stop`` is set (or, with ``exit_when_idle``, none is ready)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            if not self.run_once():
                if exit_when_idle:
                    return
                stop.wait(self.config.poll_seconds)

    def execute(self, claim: store.Claim) -> str:
        """Run a claimed stage (and nothing else); returns its recorded status."""
        self.say(f"{claim.name}: attempt {claim.attempt} on devices {self.config.devices}")
        try:
            planned = self.planner(claim.submission, self.config.output_dir)
            chain = planned.chain(claim.name)
        except Exception as e:  # the plan itself broke (a gin file removed ...)
            with self.registry.session() as session:
                stage = store.finish(session, claim.stage_id, folders.FolderState("failed"))
                stage.error = f"could not plan the stage: {type(e).__name__}: {e}"
            return "failed"
        target = chain[-1]
        chain[-1] = dataclasses.replace(target, env=target.env + device_env(self.config.devices))
        beat = _Heartbeat(self.registry, claim.stage_id, self.name, self.config.heartbeat_seconds)
        beat.start()
        interrupted = None
        try:
            pipeline.run_pipeline(chain, planned.root, verbose=False, out=self.out)
        except KeyboardInterrupt as e:  # a cancel (or this worker was told to stop)
            interrupted = e
        finally:
            beat.stopped.set()
            beat.join()
        state = folders.folder_states(planned)[claim.name]
        cancelled = interrupted is not None and beat.cancel_seen
        with self.registry.session() as session:
            stage = store.finish(session, claim.stage_id, state, cancelled=cancelled)
            if interrupted is not None and not cancelled and state.status != "done":
                stage.status = "queued"  # this worker was stopped: the stage resumes later
                stage.error = f"worker {self.name} stopped during attempt {claim.attempt}"
            status, experiment_id = stage.status, stage.experiment_id
        self.say(f"{claim.name}: {status}")
        if interrupted is not None and not cancelled:
            raise interrupted
        if status == "done":
            self.maybe_report(experiment_id, planned)
        return status

    def maybe_report(self, experiment_id: int, planned: submission_lib.Planned) -> None:
        """Write the experiment's report once all its stages are done (the runner's)."""
        with self.registry.session() as session:
            exp = session.get(store.Experiment, experiment_id)
            if exp is None or any(s.status != "done" for s in exp.stages):
                return
        try:
            paths = runner.build_report(planned.experiment, planned.scale, list(planned.plans),
                                        planned.root)  # fmt: skip
        except Exception as e:  # the stages stay done; the page shows "reporting"
            self.say(f"report of {planned.root} failed: {type(e).__name__}: {e}")
            return
        with self.registry.session() as session:
            exp = session.get(store.Experiment, experiment_id)
            exp.report_path = str(paths["report.html"])
        self.say(f"report: {paths['report.html']}")


def wait_for(predicate, *, timeout: float, every: float = 0.2) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass (for callers and tests)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())

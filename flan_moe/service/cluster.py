"""Past one machine: queued stages submitted to SLURM through submitit.

``Launcher`` is a worker that, instead of running a claimed stage, submits it as a job
(``submitit.AutoExecutor`` for SLURM; ``submitit.LocalExecutor`` runs the same job
function in a local subprocess, which the tests use). The job (``run_claimed_stage``)
runs the stage with ``Worker.execute`` on the compute node, the code path of a local
worker, against the shared registry (PostgreSQL) and output folder.

Resources come from the scale and the stage's kind (``RESOURCES``: GPUs per node, nodes,
time). A training stage on more than one node runs one task per node: every task gets
``--multihost --coordinator_address=<first node>:<port> --num_processes=<tasks>
--process_id=<rank>`` (``jax.distributed.initialize`` in ``flan_moe.cli.train``); task 0
keeps the stage's folder and registry row, the others run the command alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flan_moe.experiments import pipeline, supervise
from flan_moe.service import store
from flan_moe.service import submission as submission_lib
from flan_moe.service import worker as worker_lib

COORDINATOR_PORT = 29500


@dataclasses.dataclass(frozen=True)
class Resources:
    gpus_per_node: int
    nodes: int
    timeout_min: int
    cpus_per_task: int = 8

    def executor_parameters(self) -> dict[str, Any]:
        """``executor.update_parameters`` keywords (submitit's cluster-independent names)."""
        return {
            "gpus_per_node": self.gpus_per_node, "nodes": self.nodes,
            "tasks_per_node": 1, "timeout_min": self.timeout_min,
            "cpus_per_task": self.cpus_per_task,
        }  # fmt: skip


# scale -> stage kind -> resources. Train stages of the paper scale span 4 nodes (32 GPUs).
RESOURCES: dict[str, dict[str, Resources]] = {
    "tiny": {"train": Resources(0, 1, 60, 2), "eval": Resources(0, 1, 60, 2),
             "other": Resources(0, 1, 60, 2)},
    "small": {"train": Resources(1, 1, 12 * 60), "eval": Resources(1, 1, 4 * 60),
              "other": Resources(1, 1, 2 * 60)},
    "base": {"train": Resources(8, 1, 48 * 60), "eval": Resources(1, 1, 12 * 60),
             "other": Resources(1, 1, 4 * 60)},
    "paper": {"train": Resources(8, 4, 72 * 60), "eval": Resources(8, 1, 24 * 60),
              "other": Resources(1, 1, 8 * 60)},
}  # fmt: skip


def stage_kind(stage: pipeline.Stage) -> str:
    if stage.train_target is not None:
        return "train"
    if stage.command and "flan_moe.cli.eval" in stage.command:
        return "eval"
    return "other"


def stage_resources(scale: str, stage: pipeline.Stage) -> Resources:
    """What a stage asks the scheduler for; multi-node only for training stages."""
    if scale not in RESOURCES:
        raise KeyError(f"no cluster resources for scale {scale!r}; known: {sorted(RESOURCES)}")
    return RESOURCES[scale][stage_kind(stage)]


def multihost_command(
    command: Sequence[str], *, coordinator: str, num_processes: int, process_id: int
) -> tuple[str, ...]:
    """A training command as process ``process_id`` of a ``num_processes``-process JAX job."""
    if "flan_moe.cli.train" not in command or num_processes <= 1:
        return tuple(command)
    return (*command, "--multihost", f"--coordinator_address={coordinator}",
            f"--num_processes={num_processes}", f"--process_id={process_id}")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Task:
    """Where this job task sits: from ``submitit.JobEnvironment`` in a job (one task alone)."""

    rank: int = 0
    num_tasks: int = 1
    first_host: str = "127.0.0.1"

    @classmethod
    def current(cls) -> Task:
        import submitit

        try:
            env = submitit.JobEnvironment()
        except RuntimeError:  # not inside a submitit job
            return cls()
        return cls(env.global_rank, env.num_tasks, env.hostnames[0])


def _multihost_planner(planner: submission_lib.Planner, stage: str, task: Task, port: int):
    def plan(sub: submission_lib.Submission, output_dir: Path) -> submission_lib.Planned:
        planned = planner(sub, output_dir)
        plans = tuple(
            dataclasses.replace(p, stages=tuple(
                dataclasses.replace(s, command=multihost_command(
                    s.command, coordinator=f"{task.first_host}:{port}",
                    num_processes=task.num_tasks, process_id=task.rank))
                if s.name == stage and s.command else s
                for s in p.stages))
            for p in planned.plans
        )  # fmt: skip
        return dataclasses.replace(planned, plans=plans)

    return plan


def run_claimed_stage(
    registry_url: str,
    output_dir: str,
    claim: store.Claim,
    *,
    devices: str = "all",
    planner: submission_lib.Planner = submission_lib.plan,
    port: int = COORDINATOR_PORT,
) -> str:
    """The job function: run a claimed stage on this node; returns its recorded status."""
    task = Task.current()
    planner = _multihost_planner(planner, claim.name, task, port)
    if task.rank > 0:  # a follower process of a multi-node training stage
        stage = planner(claim.submission, Path(output_dir)).chain(claim.name)[-1]
        code = supervise.run_supervised(stage.command, env=dict(os.environ),
                                        on_line=lambda line: print(line, end=""))  # fmt: skip
        return "done" if code == 0 else f"exit {code}"
    registry = store.Registry(registry_url)
    config = worker_lib.WorkerConfig(Path(output_dir), devices=devices)
    w = worker_lib.Worker(registry, config, planner=planner)
    with registry.session() as session:
        store.adopt(session, claim.stage_id, worker=w.name, host=w.host, pid=os.getpid())
    try:
        return w.execute(claim)
    finally:
        registry.close()


class Launcher:
    """Claims ready stages and submits each as a job; beats for jobs still waiting in the
    scheduler's queue, so no worker takes their stage as orphaned."""

    def __init__(
        self,
        registry: store.Registry,
        output_dir: str | Path,
        make_executor: Callable[[Resources, str], Any],
        *,
        planner: submission_lib.Planner = submission_lib.plan,
        poll_seconds: float = 5.0,
    ) -> None:
        self.registry, self.output_dir = registry, Path(output_dir)
        self.make_executor = make_executor
        self.planner, self.poll_seconds = planner, poll_seconds
        self.name = f"launcher:{socket.gethostname()}:{os.getpid()}"
        self.jobs: dict[int, Any] = {}

    def submit_one(self) -> Any | None:
        with self.registry.session() as session:
            claim = store.claim_next(session, worker=self.name, host=socket.gethostname(),
                                     pid=os.getpid(), devices="slurm")  # fmt: skip
        if claim is None:
            return None
        stage = self.planner(claim.submission, self.output_dir).chain(claim.name)[-1]
        resources = stage_resources(claim.submission.scale, stage)
        executor = self.make_executor(resources, claim.name)
        job = executor.submit(run_claimed_stage, self.registry.url, str(self.output_dir), claim,
                              planner=self.planner)  # fmt: skip
        self.jobs[claim.stage_id] = job
        print(f"[{self.name}] {claim.name}: job {job.job_id} ({resources})", flush=True)
        return job

    def beat(self) -> None:
        for stage_id, job in list(self.jobs.items()):
            if job.done():
                del self.jobs[stage_id]
                continue
            with self.registry.session() as session:
                store.heartbeat(session, stage_id, self.name)  # no-op once the job adopted it

    def run(self, *, stop: threading.Event | None = None, exit_when_idle: bool = False) -> None:
        stop = stop or threading.Event()
        while not stop.is_set():
            with self.registry.session() as session:
                store.requeue_orphans(session, host=socket.gethostname(),
                                      stale_after=dt.timedelta(minutes=10))  # fmt: skip
            while self.submit_one() is not None:
                pass
            self.beat()
            if exit_when_idle and not self.jobs:
                with self.registry.session() as session:
                    if store.claimable(session) == 0:
                        return
            stop.wait(self.poll_seconds)


def slurm_executor_factory(folder: str | Path, *, partition: str | None = None, **extra: Any):
    """``make_executor`` for a SLURM cluster (submitit.AutoExecutor, logs under ``folder``)."""

    def make(resources: Resources, name: str):
        import submitit

        executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
        params = {**resources.executor_parameters(), "name": f"flan_moe:{name}"}
        if partition:
            params["slurm_partition"] = partition
        executor.update_parameters(**params, **extra)
        return executor

    return make


def local_executor_factory(folder: str | Path):
    """``make_executor`` running each job in a local subprocess (submitit.LocalExecutor)."""

    def make(resources: Resources, name: str):
        import submitit

        executor = submitit.LocalExecutor(folder=str(folder), python=sys.executable)
        executor.update_parameters(timeout_min=resources.timeout_min, gpus_per_node=0)
        del name
        return executor

    return make

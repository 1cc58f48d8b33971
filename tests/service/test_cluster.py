"""Cluster submission: per-stage resources, multi-host commands, and the submitit path
through its LocalExecutor (the job runs in a subprocess, as on a SLURM node)."""

from __future__ import annotations

import dataclasses
import os
import socket

from flan_moe.service import cluster, store
from flan_moe.service.models import Experiment
from flan_moe.service.submission import Submission, plan
from tests.service.conftest import SMALL, quick_planner

ONE_STAGE = {"runs": ["Flan-T5 (dense)"], "eval_modes": [], "figures": [], "pretrain_steps": 0}


def test_resources_follow_scale_and_stage_kind(output_dir):
    stages = {s.name: s for s in plan(Submission("setting2", "tiny", SMALL), output_dir).stages}
    assert cluster.stage_resources("tiny", stages["flan_t5_dense/instruction_tune"]) == (
        cluster.Resources(0, 1, 60, 2)
    )
    assert cluster.stage_kind(stages["flan_t5_dense/eval_direct_0shot"]) == "eval"
    paper_train = cluster.stage_resources("paper", stages["pretrain/dense"])
    assert (paper_train.nodes, paper_train.gpus_per_node) == (4, 8)
    assert paper_train.executor_parameters()["tasks_per_node"] == 1
    assert cluster.stage_resources("paper", stages["flan_t5_dense/eval_direct_0shot"]).nodes == 1


def test_multihost_flags_reach_only_the_training_stage(output_dir):
    sub = Submission("setting2", "tiny", SMALL)
    task = cluster.Task(rank=1, num_tasks=4, first_host="node17")
    rewritten = cluster._multihost_planner(plan, "pretrain/dense", task, 1234)(sub, output_dir)
    original = {s.name: s for s in plan(sub, output_dir).stages}
    for stage in rewritten.stages:
        assert stage.fingerprint == original[stage.name].fingerprint  # the key is unchanged
        if stage.name == "pretrain/dense":
            assert stage.command[-4:] == ("--multihost", "--coordinator_address=node17:1234",
                                          "--num_processes=4", "--process_id=1")  # fmt: skip
        else:
            assert stage.command == original[stage.name].command
    eval_command = original["flan_t5_dense/eval_direct_0shot"].command
    assert cluster.multihost_command(eval_command, coordinator="h:1", num_processes=4,
                                     process_id=0) == eval_command  # fmt: skip


def test_local_executor_runs_the_stage_as_a_job(registry, output_dir, tmp_path):
    planned = quick_planner(Submission("setting2", "tiny", ONE_STAGE), output_dir)
    assert [s.name for s in planned.stages] == ["flan_t5_dense/instruction_tune"]
    with registry.session() as session:
        exp_id = store.submit(session, planned).id
    launcher = cluster.Launcher(registry, output_dir,
                                cluster.local_executor_factory(tmp_path / "jobs"),
                                planner=quick_planner, poll_seconds=0.2)  # fmt: skip
    launcher.run(exit_when_idle=True)
    with registry.session() as session:
        exp = session.get(Experiment, exp_id)
        (stage,) = exp.stages
        assert stage.status == "done", stage.error
        assert stage.host == socket.gethostname() and stage.attempts == 1
        assert stage.worker.startswith(socket.gethostname() + ":")  # the job's own worker name
        assert exp.report_path is not None
    assert (planned.root / stage.name / "output.txt").read_text() == stage.name
    assert list((tmp_path / "jobs").glob("*_result.pkl"))  # submitit's record of the job


def test_slurm_factory_maps_resources(tmp_path, monkeypatch):
    fake_bin = tmp_path / "bin"  # submitit's SLURM executor wants srun on the PATH
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    make = cluster.slurm_executor_factory(tmp_path, partition="gpu")
    executor = make(cluster.Resources(8, 4, 120), "setting2/pretrain/dense")
    params = executor._executor.parameters  # what sbatch will be given
    assert executor.cluster == "slurm"
    assert (params["nodes"], params["gpus_per_node"], params["time"]) == (4, 8, 120)
    assert (params["partition"], params["ntasks_per_node"]) == ("gpu", 1)
    assert params["job_name"] == "flan_moe:setting2/pretrain/dense"
    assert dataclasses.asdict(cluster.Resources(8, 4, 120))["nodes"] == 4

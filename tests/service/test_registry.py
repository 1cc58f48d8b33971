"""The registry against SQLite: submit, run with a worker, fail and retry, cancel,
orphaned stages, and rebuilding the database from the folders."""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from flan_moe.experiments import pipeline
from flan_moe.service import folders, store, worker
from flan_moe.service.models import Base, Experiment, Stage
from flan_moe.service.submission import RECORD, Submission, plan
from tests.service.conftest import SMALL, fail_marker, quick_planner


@pytest.fixture(params=["sqlite", "postgresql"])
def registry(request, output_dir):
    """The registry on SQLite (a file under the output root) and on PostgreSQL."""
    if request.param == "sqlite":
        url = store.default_url(output_dir)
    else:
        url = request.getfixturevalue("postgres_database")
    reg = store.Registry(url)
    yield reg
    reg.close()


def _emptied(registry: store.Registry) -> store.Registry:
    """The same database, emptied: the SQLite file deleted, or PostgreSQL's tables dropped."""
    registry.close()
    if registry.url.startswith("sqlite"):
        Path(registry.url.split("///", 1)[1]).unlink()
    else:
        Base.metadata.drop_all(registry.engine)
    return store.Registry(registry.url)


STAGES = [
    "pretrain/dense",
    "flan_t5_dense/instruction_tune",
    "flan_t5_dense/eval_direct_0shot",
    "flan_t5_dense/eval_direct_1shot",
    "flan_t5_dense_before_it/eval_direct_0shot",
    "flan_t5_dense_before_it/eval_direct_1shot",
]


def _submit(registry, output_dir, overrides=SMALL):
    planned = quick_planner(Submission("setting2", "tiny", overrides), output_dir)
    with registry.session() as session:
        exp_id = store.submit(session, planned).id
    return planned, exp_id


def _worker(registry, output_dir, devices="cpu"):
    config = worker.WorkerConfig(output_dir, devices=devices, poll_seconds=0.05)
    return worker.Worker(registry, config, planner=quick_planner, out=io.StringIO())


def _rows(registry, exp_id):
    with registry.session() as session:
        exp = session.get(Experiment, exp_id)
        return {s.name: s for s in exp.stages}


def test_submit_registers_the_runner_plan(registry, output_dir):
    planned, exp_id = _submit(registry, output_dir)
    rows = _rows(registry, exp_id)
    assert list(rows) == STAGES
    assert {r.status for r in rows.values()} == {"queued"}
    it = rows["flan_t5_dense/instruction_tune"]
    assert it.depends_on == ["pretrain/dense"]
    stage = {s.name: s for s in planned.stages}["flan_t5_dense/instruction_tune"]
    assert it.config_hash == stage.fingerprint and len(it.config_hash) == 64
    assert it.log_path == str(planned.root / "flan_t5_dense/instruction_tune/stage.log")
    real = {s.name: s for s in plan(Submission("setting2", "tiny", SMALL), output_dir).stages}
    assert "flan_moe.cli.train" in real["flan_t5_dense/instruction_tune"].command
    model_dir = str(planned.root / "flan_t5_dense/instruction_tune/model")
    assert folders.results_pointer(real["flan_t5_dense/instruction_tune"]) == model_dir
    assert folders.results_pointer(real["flan_t5_dense/eval_direct_0shot"]) == model_dir
    record = json.loads((planned.root / RECORD).read_text())
    assert record["experiment"] == "setting2_instruction_tuning" and record["overrides"] == SMALL
    assert planned.root.name.startswith("tiny-")


def test_worker_runs_every_stage_in_dependency_order_then_the_report(registry, output_dir):
    planned, exp_id = _submit(registry, output_dir)
    w = _worker(registry, output_dir)
    w.run(exit_when_idle=True)
    rows = _rows(registry, exp_id)
    assert {r.status for r in rows.values()} == {"done"}
    order = sorted(rows.values(), key=lambda r: r.started_at)
    seen: set[str] = set()
    for row in order:
        assert set(row.depends_on) <= seen, row.name
        seen.add(row.name)
        assert row.attempts == 1 and row.host and row.devices == "cpu" and row.key
        assert (planned.root / row.name / pipeline.DONE).exists()
    with registry.session() as session:
        exp = session.get(Experiment, exp_id)
        assert exp.report_path == str(planned.root / "report" / "report.html")
        assert store.progress(exp) == store.Progress("done", 6, 6, None)
    assert (planned.root / "report" / "report.html").exists()


def test_failed_stage_blocks_dependents_and_retry_finishes(registry, output_dir):
    planned, exp_id = _submit(registry, output_dir)
    fail_marker(planned.root, "flan_t5_dense/instruction_tune").write_text("")
    _worker(registry, output_dir).run(exit_when_idle=True)
    rows = _rows(registry, exp_id)
    failed = rows["flan_t5_dense/instruction_tune"]
    assert failed.status == "failed" and "told to fail" in failed.error
    assert rows["flan_t5_dense/eval_direct_0shot"].status == "queued"  # waits on it
    assert rows["flan_t5_dense_before_it/eval_direct_0shot"].status == "done"
    with registry.session() as session:
        assert store.progress(session.get(Experiment, exp_id)).status == "failed"
    fail_marker(planned.root, "flan_t5_dense/instruction_tune").unlink()
    with registry.session() as session:
        store.retry_stage(session, failed.id)
        with pytest.raises(ValueError, match="only a failed or cancelled"):
            store.retry_stage(session, rows["pretrain/dense"].id)
    _worker(registry, output_dir).run(exit_when_idle=True)
    rows = _rows(registry, exp_id)
    assert {r.status for r in rows.values()} == {"done"}
    assert rows["flan_t5_dense/instruction_tune"].attempts == 2


def test_cancel_stops_the_queue_and_retry_resumes_it(registry, output_dir):
    planned, exp_id = _submit(registry, output_dir)
    with registry.session() as session:
        store.cancel_experiment(session, exp_id)
    assert json.loads((planned.root / RECORD).read_text())["cancelled"] is True
    assert not _worker(registry, output_dir).run_once()
    rows = _rows(registry, exp_id)
    assert {r.status for r in rows.values()} == {"cancelled"}
    with registry.session() as session:
        store.retry_stage(session, rows["pretrain/dense"].id)
    _worker(registry, output_dir).run(exit_when_idle=True)
    assert {r.status for r in _rows(registry, exp_id).values()} == {"done"}


def test_stage_of_a_dead_worker_is_queued_again(registry, output_dir):
    _, exp_id = _submit(registry, output_dir)
    dead = subprocess.Popen(["true"])
    dead.wait()
    with registry.session() as session:
        claim = store.claim_next(session, worker="w1", host="here", pid=dead.pid, devices="0")
    assert claim.name == "pretrain/dense" and claim.attempt == 1
    with registry.session() as session:  # another host's worker, still beating: left alone
        assert store.requeue_orphans(session, host="elsewhere",
                                     stale_after=dt.timedelta(minutes=5)) == []  # fmt: skip
        assert store.requeue_orphans(session, host="here", stale_after=dt.timedelta(minutes=5)) == [
            "pretrain/dense"
        ]
    row = _rows(registry, exp_id)["pretrain/dense"]
    assert row.status == "queued" and "stopped during attempt 1" in row.error
    for attempt in (2, 3):
        with registry.session() as session:
            claim = store.claim_next(session, worker="w", host="h", pid=dead.pid, devices="0")
            assert claim.attempt == attempt
            store.requeue_orphans(session, host="h", stale_after=dt.timedelta(minutes=5))
    row = _rows(registry, exp_id)["pretrain/dense"]
    assert row.status == "failed" and "3 attempts" in row.error


def test_silent_worker_on_another_host_is_dead_after_its_timeout(registry, output_dir):
    _, exp_id = _submit(registry, output_dir)
    with registry.session() as session:
        store.claim_next(session, worker="w1", host="far", pid=1, devices="all")
        stage = session.scalar(select(Stage).where(Stage.status == "running"))
        stage.heartbeat_at -= dt.timedelta(seconds=30)
    with registry.session() as session:
        requeue = store.requeue_orphans
        assert requeue(session, host="here", stale_after=dt.timedelta(seconds=60)) == []
        assert requeue(session, host="here", stale_after=dt.timedelta(seconds=10)) == [
            "pretrain/dense"
        ]


def test_claims_wait_for_dependencies(registry, output_dir):
    _submit(registry, output_dir)
    with registry.session() as session:
        first = store.claim_next(session, worker="a", host="h", pid=1, devices="0")
        second = store.claim_next(session, worker="b", host="h", pid=1, devices="1")
    # everything else needs pre-training, which is running
    assert first.name == "pretrain/dense" and second is None


def test_rebuild_restores_the_registry_from_the_folders(registry, output_dir, tmp_path):
    planned, exp_id = _submit(registry, output_dir)
    fail_marker(planned.root, "flan_t5_dense/eval_direct_1shot").write_text("")
    _worker(registry, output_dir).run(exit_when_idle=True)
    before = {n: (r.status, r.key, r.config_hash, r.attempts, r.results_path, r.log_path)
              for n, r in _rows(registry, exp_id).items()}  # fmt: skip
    fresh = _emptied(registry)
    with fresh.session() as session:
        assert session.scalar(select(Experiment)) is None
    assert folders.rebuild(fresh, output_dir, planner=quick_planner) == [str(planned.root)]
    with fresh.session() as session:
        exp = session.scalar(select(Experiment))
        after = {s.name: (s.status, s.key, s.config_hash, s.attempts, s.results_path, s.log_path)
                 for s in exp.stages}  # fmt: skip
        assert exp.submitted and exp.overrides == SMALL
    assert after == before
    assert before["flan_t5_dense/eval_direct_1shot"][0] == "failed"
    fresh.close()


def test_rebuild_sees_cli_runs_as_pending(registry, output_dir):
    planned = quick_planner(Submission("setting2", "tiny"), output_dir)
    pipeline.run_pipeline(planned.stages[:1], planned.root, verbose=False)  # as the CLI would
    folders.rebuild(registry, output_dir, planner=quick_planner)
    with registry.session() as session:
        exp = session.scalar(select(Experiment))
        statuses = {s.name: s.status for s in exp.stages}
        assert not exp.submitted
        assert exp.root == str(output_dir / "setting2_instruction_tuning/tiny")
    assert statuses.pop("pretrain/dense") == "done"
    assert set(statuses.values()) == {"pending"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": 3}, "unknown override"),
        ({"batch_size": "8"}, "must be an integer"),
        ({"runs": ["nobody"]}, "the runs are"),
        ({"train_bindings": 3}, "must be an object"),
    ],
)
def test_bad_overrides_name_the_problem(output_dir, overrides, message):
    with pytest.raises(ValueError, match=message):
        quick_planner(Submission("setting2", "tiny", overrides), output_dir)


def test_device_slices():
    assert worker.device_env("0,1") == (("CUDA_VISIBLE_DEVICES", "0,1"),)
    assert worker.device_env("all") == ()
    with pytest.raises(ValueError, match="comma-separated GPU ids"):
        worker.WorkerConfig("out", devices="gpu0")

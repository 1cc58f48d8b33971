"""kill -9 of a worker in the middle of a real training stage, then a retry by a new
worker: the stage resumes from its checkpoint and ends with the same params (the
DONE.json output digest) as an uninterrupted run of the same stage.

Workers run as ``python -m flan_moe.cli.worker`` processes and the stage is the runner's
own instruction-tuning command (tiny dense model, synthetic batches). Slow: three
trainings with their compiles."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flan_moe.experiments import pipeline
from flan_moe.service import store
from flan_moe.service.models import Stage
from flan_moe.service.submission import Submission, plan

REPO = Path(__file__).resolve().parents[2]
STAGE = "flan_t5_dense/instruction_tune"
SMOKE = {
    "pretrain_steps": 0, "instruction_tune_steps": 40, "batch_size": 8,
    "feature_lengths": {"inputs": 32, "targets": 8},
    "runs": ["Flan-T5 (dense)"], "eval_modes": [], "figures": [],
    "train_bindings": {"MIXTURE_OR_TASK_NAME": "synthetic", "TrainConfig.checkpoint_every": 5,
                       "TrainConfig.log_every": 5},
}  # fmt: skip


def _worker(output_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "flan_moe.cli.worker", f"--output_dir={output_dir}",
         "--devices=cpu", "--poll_seconds=0.2", "--heartbeat_seconds=1", *extra],
        cwd=REPO, env=env,
    )  # fmt: skip


def _submit(output_dir: Path):
    planned = plan(Submission("setting2", "tiny", SMOKE), output_dir)
    assert [s.name for s in planned.stages] == [STAGE]
    registry = store.Registry(store.default_url(output_dir))
    with registry.session() as session:
        store.submit(session, planned)
    return planned, registry


def _row(registry) -> Stage:
    with registry.session() as session:
        return session.query(Stage).one()


def _checkpoints(model_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in model_dir.glob("checkpoint_*") if p.is_dir()
                  and p.name.split("_")[1].isdigit())  # fmt: skip


def _params(model_dir: Path) -> dict[str, np.ndarray]:
    import jax

    from flan_moe.training.checkpoints import load_params

    params, _, _ = load_params(str(model_dir))
    flat = jax.tree_util.tree_leaves_with_path(params)
    return {jax.tree_util.keystr(path): np.asarray(value) for path, value in flat}


def _lock_free(model_dir: Path) -> bool:
    """The trainer holds an flock on MODEL_DIR/.lock while it runs."""
    fd = os.open(model_dir / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _wait(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_of_a_worker_then_retry_matches_an_uninterrupted_run(tmp_path):
    reference, reference_registry = _submit(tmp_path / "uninterrupted")
    assert _worker(tmp_path / "uninterrupted", "--exit_when_idle").wait(timeout=900) == 0
    assert _row(reference_registry).status == "done"

    planned, registry = _submit(tmp_path / "crashed")
    model_dir = planned.root / STAGE / "model"
    first = _worker(tmp_path / "crashed")
    try:
        _wait(lambda: any(0 < s < 40 for s in _checkpoints(model_dir)), 900, "a checkpoint")
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.wait()
    # The trainer got SIGTERM from the kernel (PR_SET_PDEATHSIG), saves and exits.
    _wait(lambda: _lock_free(model_dir), 300, "the orphaned trainer to exit")
    crashed = _row(registry)
    assert crashed.status == "running" and crashed.attempts == 1
    assert not (planned.root / STAGE / pipeline.DONE).exists()
    stopped_at = max(_checkpoints(model_dir))
    assert stopped_at < 40

    second = _worker(tmp_path / "crashed", "--exit_when_idle")
    assert second.wait(timeout=900) == 0
    row = _row(registry)
    assert row.status == "done" and row.attempts == 2, row.error
    assert (planned.root / STAGE / pipeline.DONE).exists()
    # Same params, bit for bit, as the uninterrupted run (DONE.json's output digest hashes
    # the checkpoint's files, whose OCDBT names differ from run to run, so not that).
    reference_params = _params(reference.root / STAGE / "model")
    params = _params(model_dir)
    assert params.keys() == reference_params.keys() and len(params) > 10
    for name, value in params.items():
        np.testing.assert_array_equal(value, reference_params[name], err_msg=name)
    log = (planned.root / STAGE / pipeline.LOG).read_text()
    assert f"resuming from {model_dir}/checkpoint_{stopped_at}" in log


@pytest.mark.slow
def test_cancel_stops_a_running_stage_and_retry_resumes_it(tmp_path):
    bindings = {**SMOKE["train_bindings"], "TrainConfig.checkpoint_every": 20}
    smoke = {**SMOKE, "instruction_tune_steps": 200, "train_bindings": bindings}
    planned = plan(Submission("setting2", "tiny", smoke), tmp_path)
    registry = store.Registry(store.default_url(tmp_path))
    with registry.session() as session:
        exp_id = store.submit(session, planned).id
    model_dir = planned.root / STAGE / "model"
    process = _worker(tmp_path)
    try:
        _wait(lambda: any(0 < s < 200 for s in _checkpoints(model_dir)), 900, "a checkpoint")
        with registry.session() as session:
            store.cancel_experiment(session, exp_id)
        _wait(lambda: _row(registry).status == "cancelled", 300, "the stage to be cancelled")
        assert _lock_free(model_dir)  # the trainer stopped (and saved) before the row changed
        stopped_at = max(_checkpoints(model_dir))
        assert stopped_at < 200
        with registry.session() as session:
            store.retry_stage(session, _row(registry).id)
        _wait(lambda: _row(registry).status == "done", 900, "the retried stage")
    finally:
        process.terminate()
        process.wait()
    assert _row(registry).attempts == 2
    log = (planned.root / STAGE / pipeline.LOG).read_text()
    assert f"resuming from {model_dir}/checkpoint_{stopped_at}" in log

"""Multi-host training, really run: two processes on localhost form one JAX job.

Each process is ``python -m flan_moe.cli.train --multihost`` with 2 CPU devices;
``jax.distributed`` joins them over gloo CPU collectives into a 4-device mesh with the
tiny Switch model's 8 experts spread over all 4 devices (expert parallelism across the
processes). The reference is one process with 4 devices and the same mesh shape and
global batches. Checked: the params after training equal the single-process run's; the
checkpoint both processes wrote resumes in both; metrics are written once.
Slow (four interpreter start-ups and compilations).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from flan_moe.training.checkpoints import list_checkpoints, load_params

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 1200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(model_dir: Path, steps: int, *, processes: int, devices: int) -> list[str]:
    """Run the train CLI in ``processes`` processes of ``devices`` CPU devices; their logs."""
    args = [
        sys.executable, "-m", "flan_moe.cli.train",
        "--gin_file=gin_configs/models/switch_tiny_8.gin",
        "--gin_file=gin_configs/runs/pretrain.gin",
        f"--gin.MODEL_DIR={model_dir}",
        f"--gin.TRAIN_STEPS={steps}",
        '--gin.TASK_FEATURE_LENGTHS={"inputs": 16, "targets": 8}',
        "--gin.BATCH_SIZE=8",
        "--gin.make_mesh.data=1",
        "--gin.make_mesh.expert=4",
        "--gin.TrainConfig.log_every=1",
    ]  # fmt: skip
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(REPO),
    }
    port = _free_port()
    commands = [
        args
        + (
            []
            if processes == 1
            else [
                "--multihost",
                f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={processes}",
                f"--process_id={i}",
            ]
        )  # fmt: skip
        for i in range(processes)
    ]
    log_files = [model_dir.parent / f"{model_dir.name}.p{i}.log" for i in range(processes)]
    running = [
        subprocess.Popen(c, cwd=REPO, env=env, stdout=f.open("w"), stderr=subprocess.STDOUT)
        for c, f in zip(commands, log_files)
    ]
    try:
        for p, f in zip(running, log_files):
            p.wait(timeout=TIMEOUT_S)
            assert p.returncode == 0, f"exit {p.returncode}:\n{f.read_text()[-4000:]}"
    finally:
        for p in running:
            if p.poll() is None:
                p.kill()
    logs = [f.read_text() for f in log_files]
    return logs


def _assert_same_params(path_a: str, path_b: str) -> None:
    a, _, _ = load_params(path_a)
    b, _, _ = load_params(path_b)
    flat_b = dict(jax.tree_util.tree_leaves_with_path(b))
    leaves = jax.tree_util.tree_leaves_with_path(a)
    assert len(leaves) == len(flat_b)
    assert any("experts" in jax.tree_util.keystr(p) for p, _ in leaves)  # an MoE model
    for path, value in leaves:
        np.testing.assert_allclose(
            np.asarray(value), np.asarray(flat_b[path]), rtol=0, atol=1e-5,
            err_msg=jax.tree_util.keystr(path),
        )  # fmt: skip


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_in_both(tmp_path):
    multi, single = tmp_path / "multi", tmp_path / "single"
    logs = _train(multi, 2, processes=2, devices=2)
    assert "process 0 of 2" in logs[0] and "process 1 of 2" in logs[1]
    _train(single, 2, processes=1, devices=4)
    assert [s for s, _ in list_checkpoints(str(multi))] == [2]
    _assert_same_params(str(multi / "checkpoint_2"), str(single / "checkpoint_2"))

    # Resume: both processes restore the checkpoint they wrote together and train on.
    # (TRAIN_STEPS=4 ends at step 4 if it is the absolute target, at 6 if it counts
    # the steps of this invocation; the reference runs the same commands.)
    logs = _train(multi, 4, processes=2, devices=2)
    for log in logs:
        assert f"resuming from {multi / 'checkpoint_2'}" in log, log[-3000:]
    _train(single, 4, processes=1, devices=4)
    multi_steps = [s for s, _ in list_checkpoints(str(multi))]
    assert multi_steps[-1] > 2
    assert multi_steps == [s for s, _ in list_checkpoints(str(single))]
    _assert_same_params(str(multi), str(single))

    # One writer: every logged step appears once in metrics.jsonl, one TensorBoard file per run.
    lines = (multi / "train" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == list(range(1, multi_steps[-1] + 1))
    assert len(list((multi / "train").glob("events.out.tfevents.*"))) == 2  # two invocations


def test_synthetic_host_shards_make_the_global_batch():
    from flan_moe.training.synthetic import synthetic_batches

    kwargs = dict(batch_size=8, feature_lengths={"inputs": 12, "targets": 6}, vocab_size=64)
    full = next(synthetic_batches(**kwargs, seed=3, start_step=5))
    parts = [
        next(synthetic_batches(**kwargs, seed=3, start_step=5, shard=(i, 4))) for i in range(4)
    ]
    for name, value in full.items():
        np.testing.assert_array_equal(np.concatenate([p[name] for p in parts]), value)
    with pytest.raises(ValueError, match="does not split a batch of 8 rows"):
        next(synthetic_batches(**kwargs, shard=(0, 3)))


def test_only_the_first_host_writes_metrics(tmp_path, monkeypatch):
    from flan_moe.training import summaries

    monkeypatch.setattr(summaries, "_process_index", lambda: 1)
    writer = summaries.SummaryWriter(str(tmp_path))
    writer.write(1, {"loss": 1.0})
    writer.close()
    assert not (tmp_path / "train").exists()

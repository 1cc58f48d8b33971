"""Stage truth: stages keyed by their config (re-run exactly what changed, or keep it as
stale), train stages done only at their planned step, children supervised (a killed
child or parent, then a re-run, ends at exactly the planned step)."""

import dataclasses
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flan_moe.experiments import pipeline, runner, settings
from flan_moe.training import integrity

REPO = Path(__file__).resolve().parents[2]


def _recorder(calls):
    def make(name):
        def fn(folder, log):
            calls.append(name)

        return fn

    return make


def _keyed(calls, fingerprints):
    make = _recorder(calls)
    return [
        pipeline.Stage("train_a", function=make("train_a"), fingerprint=fingerprints["a"]),
        pipeline.Stage("eval_a", function=make("eval_a"), depends_on=("train_a",)),
        pipeline.Stage("train_b", function=make("train_b"), fingerprint=fingerprints["b"]),
        pipeline.Stage("eval_b", function=make("eval_b"), depends_on=("train_b",)),
    ]


def test_a_changed_config_reruns_the_stage_and_its_dependents_or_is_kept_stale(tmp_path):
    calls: list[str] = []
    pipeline.run_pipeline(_keyed(calls, {"a": "1", "b": "1"}), tmp_path, out=io.StringIO())
    assert calls == ["train_a", "eval_a", "train_b", "eval_b"]
    done = (tmp_path / "train_a" / pipeline.DONE).read_text()
    assert '"fingerprint": "1"' in done and '"key": ' in done

    changed = _keyed(calls, {"a": "1", "b": "2"})
    plan = pipeline.plan_pipeline(changed, tmp_path)
    assert [(p.action, p.reason) for p in plan] == [
        ("skip", "done"), ("skip", "done"),
        ("run", "config changed"), ("run", "an input re-runs"),
    ]  # fmt: skip
    text = pipeline.format_plan(plan)
    assert "[3/4] train_b: WOULD RUN (config changed)" in text and "2 of 4 stage(s)" in text

    kept = pipeline.run_pipeline(changed, tmp_path, keep_stale=True, out=io.StringIO())
    assert [o.status for o in kept] == ["skipped", "skipped", "stale", "stale"]
    calls.clear()
    outcomes = pipeline.run_pipeline(changed, tmp_path, out=io.StringIO())
    assert [o.status for o in outcomes] == ["skipped", "skipped", "done", "done"]
    assert calls == ["train_b", "eval_b"]
    calls.clear()
    pipeline.run_pipeline(changed, tmp_path, out=io.StringIO())
    assert calls == []


def test_changing_one_model_of_setting2_reruns_exactly_that_models_stages(tmp_path):
    """The in-process runner's real plans and stage keys; stage bodies are recorders."""
    calls: list[str] = []
    make = _recorder(calls)

    def stages_for(scale):
        experiment = settings.get_experiment("setting2", scale)
        root = runner.experiment_root(tmp_path, experiment, scale)
        plans = runner.plan_experiment(experiment, scale, root, in_process=True)
        stages = [
            dataclasses.replace(s, function=make(s.name), train_target=None)
            for p in plans
            for s in p.stages
        ]
        switch = {s.name for p in plans if p.run.role == "switch" for s in p.stages}
        return stages, root, switch

    scale = settings.get_scale("tiny")
    stages, root, _ = stages_for(scale)
    pipeline.run_pipeline(stages, root, out=io.StringIO())
    assert len(calls) == len(stages) == 21  # 20 + Flan-Switch's routing analysis
    calls.clear()
    pipeline.run_pipeline(stages, root, out=io.StringIO())
    assert calls == []

    swapped = dataclasses.replace(scale, models={**scale.models, "switch": "switch_tiny_16"})
    stages, root, switch = stages_for(swapped)
    # Flan-Switch and its untuned counterpart: 2 trainings + 8 evals + 1 routing analysis
    assert len(switch) == 11
    pipeline.run_pipeline(stages, root, out=io.StringIO())
    assert sorted(calls) == sorted(switch)


def _fake_checkpoint(model_dir, step):
    path = os.path.join(model_dir, f"checkpoint_{step}")
    for rel in integrity.REQUIRED_FILES:
        os.makedirs(os.path.dirname(os.path.join(path, rel)), exist_ok=True)
        Path(path, rel).write_text(str(step))
    integrity.write_manifest(path, step)


def test_a_train_stage_is_done_only_at_its_planned_step(tmp_path):
    model_dir = str(tmp_path / "model")
    target = pipeline.TrainTarget(model_dir=model_dir, step=10)
    stage = pipeline.Stage(
        "train", function=lambda folder, log: _fake_checkpoint(model_dir, 7), train_target=target
    )
    (outcome,) = pipeline.run_pipeline([stage], tmp_path / "exp", out=io.StringIO())
    assert outcome.status == "failed"
    assert "training ended at step 7" in outcome.error and "plan is step 10" in outcome.error

    stage = dataclasses.replace(stage, function=lambda folder, log: _fake_checkpoint(model_dir, 10))
    (outcome,) = pipeline.run_pipeline([stage], tmp_path / "exp", out=io.StringIO())
    assert outcome.status == "done"


# A stand-in trainer with the real one's contract: TRAIN_STEPS is the absolute target,
# resume from the latest good checkpoint, the MODEL_DIR lock, SIGTERM -> save + exit 75.
FAKE_TRAINER = textwrap.dedent(
    """
    import os, signal, sys, time
    from flan_moe.training import integrity
    from flan_moe.training.model_dir_lock import model_dir_lock

    model_dir, target = sys.argv[1], int(sys.argv[2])
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))

    def save(step):
        path = os.path.join(model_dir, f"checkpoint_{step}")
        for rel in integrity.REQUIRED_FILES:
            os.makedirs(os.path.dirname(os.path.join(path, rel)), exist_ok=True)
            with open(os.path.join(path, rel), "w") as f:
                f.write(str(step))
        integrity.write_manifest(path, step)

    with model_dir_lock(model_dir):
        latest = integrity.latest_good_checkpoint(model_dir)
        step = 0 if latest is None else latest[0]
        while step < target:
            time.sleep(0.03)
            step += 1
            if step % 5 == 0 or step == target or stop:
                save(step)
            if stop:
                sys.exit(75)
    """
)

PARENT = textwrap.dedent(
    """
    import sys
    from flan_moe.experiments import pipeline

    *trainer, model_dir, target, root = sys.argv[1:]
    stage = pipeline.Stage(
        "train",
        command=(sys.executable, *trainer, model_dir, target),
        train_target=pipeline.TrainTarget(model_dir=model_dir, step=int(target)),
    )
    outcomes = pipeline.run_pipeline([stage], root)
    sys.exit(0 if outcomes[0].status in ("done", "skipped") else 1)
    """
)


def _wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _holder_pid(model_dir):
    try:
        text = Path(model_dir, ".lock").read_text()
    except FileNotFoundError:
        return None
    return int(text.split()[1]) if text.startswith("pid ") else None


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _steps(model_dir):
    return [s for s, _ in integrity.step_dirs(model_dir)]


def _kill_child_then_parent_then_rerun(
    tmp_path, trainer_argv, target, first_checkpoint, child_signal=signal.SIGKILL, timeout=60.0
):
    """Kill the stage's child (``child_signal``), re-run; kill the parent (SIGKILL), re-run."""
    model_dir, root = str(tmp_path / "model"), str(tmp_path / "exp")
    parent_script = tmp_path / "parent.py"
    parent_script.write_text(PARENT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start_parent():
        return subprocess.Popen(
            [sys.executable, str(parent_script), *trainer_argv, model_dir, str(target), root],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    # 1. The child is killed: the stage fails (not done) and the re-run finishes it.
    parent = start_parent()
    _wait_for(lambda: _steps(model_dir), timeout=timeout, what="a first checkpoint")
    child = _wait_for(lambda: _holder_pid(model_dir), what="the trainer's lock")
    os.kill(child, child_signal)
    assert parent.wait(timeout=timeout) == 1
    assert not Path(root, "train", pipeline.DONE).exists()
    failed = Path(root, "train", pipeline.FAILED).read_text()
    if child_signal == signal.SIGTERM:  # saved a checkpoint, exited "stopped, resumable"
        assert "exited with status 75: stopped before its planned end" in failed
        assert "stopped at step" in Path(root, "train", pipeline.LOG).read_text()
    stopped_at = max(_steps(model_dir))
    assert first_checkpoint <= stopped_at < target

    # 2. The parent is killed: its child gets SIGTERM (PDEATHSIG), saves and exits.
    parent = start_parent()
    _wait_for(
        lambda: max(_steps(model_dir)) > stopped_at, timeout=timeout, what="progress after resume"
    )
    child = _wait_for(lambda: _holder_pid(model_dir), what="the trainer's lock")
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=10)
    _wait_for(lambda: not _alive(child), timeout=timeout, what="the orphaned trainer to exit")
    assert not Path(root, "train", pipeline.DONE).exists()
    assert max(_steps(model_dir)) < target

    # 3. The re-run ends at exactly the planned step.
    parent = start_parent()
    assert parent.wait(timeout=timeout) == 0
    assert max(_steps(model_dir)) == target
    assert Path(root, "train", pipeline.DONE).exists()
    return model_dir


def test_killed_child_then_killed_parent_then_rerun_ends_at_the_planned_step(tmp_path):
    trainer = tmp_path / "fake_trainer.py"
    trainer.write_text(FAKE_TRAINER)
    _kill_child_then_parent_then_rerun(tmp_path, [str(trainer)], target=80, first_checkpoint=5)


def test_an_orphaned_trainer_holding_the_lock_is_named(tmp_path):
    trainer = tmp_path / "fake_trainer.py"
    trainer.write_text(FAKE_TRAINER)
    model_dir = str(tmp_path / "model")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    orphan = subprocess.Popen([sys.executable, str(trainer), model_dir, "100000"], env=env)
    try:
        _wait_for(lambda: _holder_pid(model_dir), what="the orphan's lock")
        stage = pipeline.Stage(
            "train",
            command=(sys.executable, str(trainer), model_dir, "10"),
            env=(("PYTHONPATH", str(REPO)),),
            train_target=pipeline.TrainTarget(model_dir=model_dir, step=10),
        )
        (outcome,) = pipeline.run_pipeline([stage], tmp_path / "exp", out=io.StringIO())
        assert outcome.status == "failed"
        log = Path(outcome.log_path).read_text()
        assert f"is in use by another trainer (pid {orphan.pid} " in log
    finally:
        orphan.kill()
        orphan.wait()


TINY_TRAIN = [
    "-m",
    "flan_moe.cli.train",
    f"--gin_file={REPO / 'gin_configs' / 'models' / 't5_1_1_tiny.gin'}",
    f"--gin_file={REPO / 'gin_configs' / 'runs' / 'pretrain.gin'}",
    '--gin.TASK_FEATURE_LENGTHS={"inputs": 16, "targets": 8}',
    "--gin.BATCH_SIZE=8",
    "--gin.TrainConfig.checkpoint_every=10",
]

REAL_TRAINER_WRAPPER = textwrap.dedent(
    """
    import os, sys
    model_dir, target = sys.argv[-2:]
    args = sys.argv[1:-2] + [f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={target}"]
    os.execv(sys.executable, [sys.executable, *args])
    """
)


@pytest.mark.slow
def test_real_trainer_killed_child_then_parent_then_rerun_ends_at_the_planned_step(tmp_path):
    wrapper = tmp_path / "train_wrapper.py"
    wrapper.write_text(REAL_TRAINER_WRAPPER)
    _kill_child_then_parent_then_rerun(
        tmp_path,
        [str(wrapper), *TINY_TRAIN],
        target=600,
        first_checkpoint=10,
        child_signal=signal.SIGTERM,
        timeout=900.0,
    )


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, capsys):
    from flan_moe.cli import experiment as experiment_cli

    argv = ["setting2", "--scale", "tiny", "--output_dir", str(tmp_path), "--dry_run"]
    assert experiment_cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "[1/21] pretrain/dense: WOULD RUN (not done) - train to step 30" in text
    assert "[2/21] flan_t5_dense/instruction_tune: WOULD RUN (not done) - train to step 40" in text
    assert "21 of 21 stage(s) would run (140 training steps" in text
    assert not any(tmp_path.iterdir())  # nothing was run or written


def test_stale_runs_are_marked_in_the_report(tmp_path):
    scale = settings.get_scale("tiny")
    experiment = settings.get_experiment("setting2", scale)
    root = runner.experiment_root(tmp_path, experiment, scale)
    plans = runner.plan_experiment(experiment, scale, root)
    paths = runner.build_report(experiment, scale, plans, root, stale_runs=["Flan-Switch"])
    tables = "".join(p.read_text() for p in paths["report.md"].parent.glob("table_*.md"))
    assert "Flan-Switch (stale)" in tables and "Flan-T5 (dense) (stale)" not in tables
    assert "STALE (kept with --keep-stale" in paths["report.html"].read_text()

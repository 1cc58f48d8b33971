"""Stages: skipped when done, failures reported with their log and resumable."""

import io
import json
import sys

import pytest

from flan_moe.experiments import pipeline


def _stages(tmp_path, fail_flag):
    marker = tmp_path / "calls.txt"

    def record(name):
        def fn(folder, log):
            with open(marker, "a") as f:
                f.write(name + "\n")
            log.write(f"ran {name}\n")
            (folder / "out.txt").write_text(name)

        return fn

    def flaky(folder, log):
        with open(marker, "a") as f:
            f.write("b\n")
        log.write("about to check the flag\n")
        if fail_flag.exists():
            raise RuntimeError("the flag file says fail")

    return marker, [
        pipeline.Stage("a", function=record("a")),
        pipeline.Stage("b", function=flaky, depends_on=("a",)),
        pipeline.Stage("c", function=record("c"), depends_on=("b",)),
        pipeline.Stage("d", function=record("d"), depends_on=("a",)),
    ]


def test_failed_stage_is_reported_and_resumable(tmp_path):
    root = tmp_path / "exp"
    flag = tmp_path / "fail"
    flag.write_text("1")
    marker, stages = _stages(tmp_path, flag)
    out = io.StringIO()
    outcomes = pipeline.run_pipeline(stages, root, out=out)
    status = {o.name: o.status for o in outcomes}
    assert status == {"a": "done", "b": "failed", "c": "blocked", "d": "done"}
    failed = json.loads((root / "b" / pipeline.FAILED).read_text())
    assert "the flag file says fail" in failed["error"]
    assert failed["log"] == str(root / "b" / "stage.log")
    assert "STAGE FAILED" in (root / "b" / "stage.log").read_text()
    assert str(root / "b" / "stage.log") in out.getvalue()

    flag.unlink()  # fix the cause, run the same thing again
    outcomes = pipeline.run_pipeline(stages, root, out=io.StringIO())
    status = {o.name: o.status for o in outcomes}
    assert status == {"a": "skipped", "b": "done", "c": "done", "d": "skipped"}
    assert marker.read_text().split() == ["a", "b", "d", "b", "c"]
    assert not (root / "b" / pipeline.FAILED).exists()

    outcomes = pipeline.run_pipeline(stages, root, out=io.StringIO())
    assert all(o.status == "skipped" for o in outcomes)
    outcomes = pipeline.run_pipeline(stages, root, force=["c"], out=io.StringIO())
    assert [o.status for o in outcomes] == ["skipped", "skipped", "done", "skipped"]


def test_command_stage_logs_output_and_exit_status(tmp_path):
    ok = pipeline.Stage("ok", command=(sys.executable, "-c", "print('hello from a stage')"))
    bad = pipeline.Stage("bad", command=(sys.executable, "-c", "import sys; sys.exit(3)"))
    outcomes = pipeline.run_pipeline([ok, bad], tmp_path, out=io.StringIO())
    assert [o.status for o in outcomes] == ["done", "failed"]
    assert "hello from a stage" in (tmp_path / "ok" / "stage.log").read_text()
    assert "status 3" in outcomes[1].error
    with pytest.raises(pipeline.PipelineError):
        pipeline.run_pipeline([bad], tmp_path, out=io.StringIO(), raise_on_failure=True)


def test_bad_stage_lists_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        pipeline.run_pipeline(
            [pipeline.Stage("x", function=lambda folder, log: None)] * 2,
            tmp_path,
            out=io.StringIO(),
        )
    with pytest.raises(ValueError, match="do not come before"):
        pipeline.run_pipeline(
            [pipeline.Stage("x", function=lambda folder, log: None, depends_on=("y",))],
            tmp_path,
            out=io.StringIO(),
        )
    with pytest.raises(ValueError, match="exactly one"):
        pipeline.Stage("x")

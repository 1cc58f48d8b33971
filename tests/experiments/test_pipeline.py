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


def _timed_stage(name, seconds, depends_on=(), fail=False):
    """A command stage that writes its start and end times (and fails when asked)."""
    code = (
        f"import json, os, time; t0 = time.time(); time.sleep({seconds!r}); "
        "open(os.path.join(os.environ['STAGE_DIR'], 'times.json'), 'w')"
        f".write(json.dumps([t0, time.time()])); print('slept'); raise SystemExit({int(fail)})"
    )
    return pipeline.Stage(name, command=(sys.executable, "-c", code), depends_on=depends_on)


def _times(root, name):
    return json.loads((root / name / "times.json").read_text())


def test_parallel_jobs_overlap_independent_stages_and_keep_dependencies(tmp_path):
    root = tmp_path / "exp"
    stages = [
        _timed_stage("a", 1.0),
        _timed_stage("b", 1.0),
        _timed_stage("c", 0.1, depends_on=("a",)),
        _timed_stage("bad", 0.1, fail=True),
        _timed_stage("after_bad", 0.1, depends_on=("bad",)),
    ]
    out = io.StringIO()
    outcomes = pipeline.run_pipeline(stages, root, jobs=2, out=out)
    status = {o.name: o.status for o in outcomes}
    assert status == {
        "a": "done", "b": "done", "c": "done", "bad": "failed", "after_bad": "blocked"
    }  # fmt: skip
    (a0, a1), (b0, b1), (c0, _) = (_times(root, n) for n in ("a", "b", "c"))
    assert b0 < a1 and a0 < b1  # a and b ran at the same time
    assert c0 >= a1  # c waited for a
    assert "[a] slept" in out.getvalue()  # lines are tagged with their stage
    # the same plan with one job runs strictly in order and gives the same outcomes
    outcomes = pipeline.run_pipeline(stages, tmp_path / "serial", jobs=1, out=io.StringIO())
    assert {o.name: o.status for o in outcomes} == status
    serial = tmp_path / "serial"
    assert _times(serial, "a")[1] <= _times(serial, "b")[0]
    # a second run skips what is done and retries the failed stage
    outcomes = pipeline.run_pipeline(stages, root, jobs=2, out=io.StringIO())
    assert [o.status for o in outcomes] == ["skipped", "skipped", "skipped", "failed", "blocked"]


def test_jobs_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        pipeline.run_pipeline([], tmp_path, jobs=0)

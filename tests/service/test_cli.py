"""The service's command lines: registry rebuild/list, serve and worker flag checks."""

from __future__ import annotations

import argparse
import io

import pytest

from flan_moe.cli import registry as registry_cli
from flan_moe.cli import serve, validation
from flan_moe.cli import worker as worker_cli
from flan_moe.service import store, worker
from flan_moe.service.submission import Submission
from tests.service.conftest import SMALL, quick_planner


def test_registry_rebuild_from_folders_after_the_database_is_deleted(output_dir, capsys):
    reg = store.Registry(store.default_url(output_dir))
    with reg.session() as session:
        store.submit(session, quick_planner(Submission("setting2", "tiny", SMALL), output_dir))
    config = worker.WorkerConfig(output_dir, devices="cpu", poll_seconds=0.05)
    worker.Worker(reg, config, planner=quick_planner, out=io.StringIO()).run(exit_when_idle=True)
    reg.close()
    (output_dir / store.DB_FILE).unlink()
    # the real planner: the folders' DONE.json keys match the runner's plan
    assert registry_cli.main(["rebuild", f"--output_dir={output_dir}"]) == 0
    out = capsys.readouterr().out
    assert "rebuilt 1 experiment(s)" in out
    assert "\tsetting2_instruction_tuning\ttiny\tdone\t6/6\t" in out


@pytest.mark.parametrize(
    ("main", "argv", "message"),
    [
        (serve.main, ["--read_only", "--token=x"], "exclude each other"),
        (serve.main, ["--slice=gpu0"], "comma-separated GPU ids"),
        (worker_cli.main, ["--devices=gpu0"], "comma-separated GPU ids"),
    ],
)
def test_bad_flags_are_one_line_errors(main, argv, message, capsys, tmp_path):
    assert validation.run_cli(main, [*argv, f"--output_dir={tmp_path}"]) == validation.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_serve_starts_one_worker_per_slice():
    args = argparse.Namespace(output_dir="out", no_workers=False, slice=["0,1", "2"])
    commands = serve.worker_commands(args, "sqlite:///x.sqlite")
    assert [c[-1] for c in commands] == ["--devices=0,1", "--devices=2"]
    assert all("flan_moe.cli.worker" in c and "--db=sqlite:///x.sqlite" in c for c in commands)
    args.slice = None
    assert [c[-1] for c in serve.worker_commands(args, "u")] == ["--devices=all"]
    args.no_workers = True
    assert serve.worker_commands(args, "u") == []


def test_rebuild_reports_a_folder_it_cannot_plan_and_goes_on(output_dir, capsys):
    (output_dir / "setting2_instruction_tuning" / "base").mkdir(parents=True)  # no checkpoints
    (output_dir / "setting1_direct_finetune" / "tiny").mkdir(parents=True)
    assert registry_cli.main(["rebuild", f"--output_dir={output_dir}"]) == 0
    captured = capsys.readouterr()
    assert "rebuilt 1 experiment(s)" in captured.out
    assert "setting1_direct_finetune\ttiny\tregistered\t0/" in captured.out
    assert "not rebuilt: " in captured.err and "PRETRAINED_DENSE" in captured.err

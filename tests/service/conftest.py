"""Service tests: the real runner's plan of a small setting-2 submission, with each
stage's command replaced by a quick Python function (same names, dependencies and
fingerprints), so the registry, workers and dashboard run in seconds.

A stage fails while a file ``FAIL_<stage slug>`` exists in the experiment folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from flan_moe.service import store
from flan_moe.service import submission as submission_lib

# setting 2 at tiny scale, one run, direct evaluation only: 6 stages (pre-training, IT,
# two evals after IT and two before).
SMALL = {"runs": ["Flan-T5 (dense)"], "eval_modes": ["direct"]}


def fail_marker(root: Path, stage: str) -> Path:
    return root / ("FAIL_" + stage.replace("/", "_"))


def _quick(name: str, root: Path):
    def run(folder: Path, log) -> None:
        log.write(f"running {name}\n")
        if fail_marker(root, name).exists():
            raise RuntimeError(f"{name} told to fail")
        (folder / "output.txt").write_text(name)

    return run


def quick_planner(sub: submission_lib.Submission, output_dir: Path) -> submission_lib.Planned:
    planned = submission_lib.plan(sub, output_dir)
    plans = tuple(
        dataclasses.replace(p, stages=tuple(
            dataclasses.replace(s, command=None, function=_quick(s.name, planned.root),
                                train_target=None)
            for s in p.stages
        ))
        for p in planned.plans
    )  # fmt: skip
    return dataclasses.replace(planned, plans=plans)


@pytest.fixture
def registry(tmp_path):
    reg = store.Registry(store.default_url(tmp_path / "out"))
    yield reg
    reg.close()


@pytest.fixture
def output_dir(tmp_path) -> Path:
    return tmp_path / "out"

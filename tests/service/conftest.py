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


_REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A PostgreSQL server: $FLAN_MOE_TEST_POSTGRES_URL, else the one
    ``scripts/start_postgres.sh`` starts (installing Debian's package as root); skips with
    the script's message when neither works."""
    import os
    import subprocess

    url = os.environ.get("FLAN_MOE_TEST_POSTGRES_URL")
    if url:
        return url
    result = subprocess.run(["bash", str(_REPO / "scripts" / "start_postgres.sh")],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    if result.returncode != 0:
        pytest.skip(f"no PostgreSQL: {result.stderr.strip().splitlines()[-1:]}")
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture
def postgres_database(postgres_url):
    """A throwaway database on the PostgreSQL server, dropped after the test."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"flan_moe_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()

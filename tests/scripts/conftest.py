"""Shared set-up: the real data dir (FLAN_MOE_DATA_DIR, default ../shared/data)."""

import os
from pathlib import Path

import pytest

_DEFAULT = Path(__file__).resolve().parents[3] / "shared" / "data"


def _data_dir() -> Path:
    return Path(os.environ.get("FLAN_MOE_DATA_DIR") or _DEFAULT)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = _data_dir()
    if not (d / "flan_cot").is_dir():
        pytest.skip(f"no data at {d}: set FLAN_MOE_DATA_DIR (e.g. ../shared/data)")
    os.environ["FLAN_MOE_DATA_DIR"] = str(d)
    return d

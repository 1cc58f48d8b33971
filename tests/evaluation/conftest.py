"""Fixtures for the evaluation tests: the real data directory (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """$FLAN_MOE_DATA_DIR, else ../shared/data beside the checkout (where .ci/run points)."""
    env = os.environ.get("FLAN_MOE_DATA_DIR")
    root = Path(env) if env else _REPO.parent / "shared" / "data"
    if not (root / "mmlu" / "val").is_dir() or not (root / "bbh" / "bbh").is_dir():
        pytest.skip(
            f"real data not found at {root}: set FLAN_MOE_DATA_DIR to the data directory "
            "(README of ../shared/data; fetch with scripts/fetch_data.py)"
        )
    return root

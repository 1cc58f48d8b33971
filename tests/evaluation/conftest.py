"""Fixtures for the evaluation tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_root(data_dir: Path) -> Path:
    """The real data directory (the shared ``data_dir`` fixture; skipped when absent)."""
    if not (data_dir / "mmlu" / "val").is_dir() or not (data_dir / "bbh" / "bbh").is_dir():
        pytest.skip(f"MMLU/BBH not found under {data_dir}: see scripts/fetch_data.py")
    return data_dir

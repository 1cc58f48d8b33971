"""Where the project's data lives: the ``FLAN_MOE_DATA_DIR`` setting (default ``./data``).

Every reader goes through ``data_file`` so that a missing directory or file gives one clear error
that names the variable and the fetch script.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "FLAN_MOE_DATA_DIR"
DEFAULT_DATA_DIR = "./data"
FETCH_HINT = "python scripts/fetch_data.py"


class DataNotFoundError(FileNotFoundError):
    """A data directory or file the project needs is missing."""


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """The data root: ``override``, else ``$FLAN_MOE_DATA_DIR``, else ``./data``."""
    if override is not None:
        return Path(override)
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def data_file(relative: str, *, root: str | os.PathLike | None = None) -> Path:
    """Absolute path of ``relative`` under the data root; raises a clear error if it is missing."""
    base = data_dir(root)
    path = base / relative
    if not base.is_dir():
        raise DataNotFoundError(
            f"Data directory {str(base)!r} does not exist (set by {DATA_DIR_ENV}, default "
            f"{DEFAULT_DATA_DIR!r}). Point {DATA_DIR_ENV} at the data (e.g. ../shared/data) or "
            f"download it with `{FETCH_HINT}`."
        )
    if not path.exists():
        raise DataNotFoundError(
            f"Missing data file {str(path)!r} under {DATA_DIR_ENV}={str(base)!r}. "
            f"Download the data with `{FETCH_HINT}` (or fix {DATA_DIR_ENV})."
        )
    return path

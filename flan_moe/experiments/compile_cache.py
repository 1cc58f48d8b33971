"""One JAX persistent compilation cache per experiment directory, shared by its stages.

Every stage is a fresh process that traces and compiles the same functions as its
neighbours: the 16 tiny evaluation stages compile the same scoring and decoding
functions for two architectures, and pre-training / instruction tuning compile the same
train step. With ``JAX_COMPILATION_CACHE_DIR`` set, XLA executables are written to disk
and a later stage loads them instead of compiling again (the cache key hashes the
lowered program, the compile options, the devices and the JAX/jaxlib versions, so a
stale entry cannot be loaded; loaded executables compute exactly what a fresh compile
does). Thresholds are 0 so the many small tiny-scale programs are cached too.

``environment(root)`` sets the variables for the duration of a run (subprocess stages
inherit them) unless the user already set them; ``CACHE_DIR_NAME`` is under the
experiment root. Set ``JAX_COMPILATION_CACHE_DIR=`` (empty) to turn it off.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

CACHE_DIR_NAME = ".jax_compilation_cache"


def cache_variables(root: str | os.PathLike) -> dict[str, str]:
    """The environment variables that turn the cache on under ``root``."""
    return {
        "JAX_COMPILATION_CACHE_DIR": str(Path(root).resolve() / CACHE_DIR_NAME),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


@contextlib.contextmanager
def environment(root: str | os.PathLike) -> Iterator[dict[str, str]]:
    """Within the block, ``os.environ`` has the cache variables (a user's own win).

    Yields the variables that were added (restored on exit)."""
    added = {k: v for k, v in cache_variables(root).items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield added
    finally:
        for key in added:
            os.environ.pop(key, None)

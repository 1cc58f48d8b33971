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
``in_process(root)`` does the same through ``jax.config`` for stages run as functions
in this process (``run_experiment(..., in_process=True)``, the end-to-end test).
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


def _options(root: str | os.PathLike) -> dict[str, object]:
    """``cache_variables`` as JAX option names and typed values."""
    variables = cache_variables(root)
    return {
        "jax_compilation_cache_dir": variables["JAX_COMPILATION_CACHE_DIR"],
        "jax_persistent_cache_min_compile_time_secs": float(
            variables["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]
        ),
        "jax_persistent_cache_min_entry_size_bytes": int(
            variables["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]
        ),
    }


@contextlib.contextmanager
def in_process(root: str | os.PathLike) -> Iterator[bool]:
    """The same cache for stages run in this process (``in_process=True`` pipelines: each
    stage builds new jitted functions, which JAX's in-memory caches do not share).

    Sets JAX's options for the block and restores them after; does nothing (yields
    False) when the user set the variable or this process already has a cache dir."""
    import jax
    from jax._src import compilation_cache  # reset_cache: the documented way to re-read it

    if "JAX_COMPILATION_CACHE_DIR" in os.environ or jax.config.jax_compilation_cache_dir:
        yield False
        return
    wanted = _options(root)
    old = {name: getattr(jax.config, name) for name in wanted}
    for name, value in wanted.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()
    try:
        yield True
    finally:
        for name, value in old.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()

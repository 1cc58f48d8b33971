"""The experiment-wide JAX compilation cache: environment handling, and that a second
process loads the first one's executable and computes the same numbers."""

import json
import os
import subprocess
import sys

import pytest

from flan_moe.experiments import compile_cache

VARIABLES = (
    "JAX_COMPILATION_CACHE_DIR",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
)


def test_environment_sets_the_variables_and_restores_them(tmp_path, monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with compile_cache.environment(tmp_path) as added:
        assert set(added) == set(VARIABLES)
        assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(
            tmp_path.resolve() / compile_cache.CACHE_DIR_NAME
        )
        assert os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    assert not any(name in os.environ for name in VARIABLES)


def test_a_users_own_setting_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")  # the documented way to turn it off
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", raising=False)
    with compile_cache.environment(tmp_path) as added:
        assert os.environ["JAX_COMPILATION_CACHE_DIR"] == ""
        assert "JAX_COMPILATION_CACHE_DIR" not in added
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == ""
    assert "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ


_CHILD = """
import json
import jax, jax.numpy as jnp
from jax._src import monitoring
hits = []
monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None
)
x = jnp.linspace(-3.0, 3.0, 64, dtype=jnp.float32).reshape(8, 8)
y = jax.jit(lambda a: jnp.tanh(a @ a.T) * jax.nn.softmax(a, axis=-1))(x)
print(json.dumps({"hits": len(hits), "values": [float(v) for v in y.ravel()]}))
"""


def _child(env):
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_the_cached_executable_with_identical_results(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update(compile_cache.cache_variables(tmp_path))
    env["XLA_FLAGS"] = ""  # one CPU device, as a stage process has
    first, second = _child(env), _child(env)
    assert first["hits"] == 0
    assert second["hits"] >= 1  # the executable came from the cache, not the compiler
    assert any((tmp_path / compile_cache.CACHE_DIR_NAME).iterdir())
    assert second["values"] == first["values"]  # bit for bit


def test_in_process_cache_is_used_then_the_options_restored(tmp_path, monkeypatch):
    import jax
    import jax.numpy as jnp

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    if jax.config.jax_compilation_cache_dir:
        pytest.skip("this test process already has a compilation cache")
    before = jax.config.jax_persistent_cache_min_compile_time_secs
    with compile_cache.in_process(tmp_path) as used:
        assert used
        jax.jit(lambda a: jnp.sin(a) * 3.0 + 0.5)(jnp.arange(5.0)).block_until_ready()
    assert any((tmp_path / compile_cache.CACHE_DIR_NAME).iterdir())
    assert jax.config.jax_compilation_cache_dir is None
    assert jax.config.jax_persistent_cache_min_compile_time_secs == before

"""Weight averaging along one training run: EMA, SWA and LAWA (lineage.md section 3).

Pure functions; integer leaves are copied, float leaves averaged in float32.

* ``ema_update(ema, params, decay)``: decay * ema + (1 - decay) * params, i.e.
  ``optax.incremental_update(params, ema, 1 - decay)`` (decay 0 -> the raw weights,
  decay 1 -> frozen).
* ``ema_decay(step, ...)``: the warm-up schedule of the Early Weight Averaging runs
  (lucidrains' EMA): 0 until ``update_after_step``, then
  1 - (1 + t / inv_gamma) ** -power with t = step - update_after_step, clamped to
  [min_value, beta].
* ``swa_update(avg, params, n)``: the uniform running mean after n models,
  avg + (params - avg) / (n + 1).
* ``lawa_checkpoints(model_dir, k)``: the k latest complete checkpoints (Kaddour's sliding
  window: "the last k saved"); ``flan_moe.cli.merge --method=lawa`` averages them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Params = Any


def _floats(fn, *trees):
    def leaf(*xs):
        if not jnp.issubdtype(jnp.asarray(xs[0]).dtype, jnp.floating):
            return xs[-1]
        return fn(*[jnp.asarray(x, jnp.float32) for x in xs]).astype(jnp.asarray(xs[0]).dtype)

    return jax.tree_util.tree_map(leaf, *trees)


def ema_update(ema: Params, params: Params, decay: float | jax.Array) -> Params:
    """One EMA step: decay * ema + (1 - decay) * params."""
    return _floats(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def ema_decay(
    step: int,
    *,
    beta: float = 0.9,
    update_after_step: int = 0,
    inv_gamma: float = 1.0,
    power: float = 2.0 / 3.0,
    min_value: float = 0.0,
) -> float:
    """The EMA decay at ``step`` with warm-up (see the module docstring)."""
    t = step - update_after_step
    if t <= 0:
        return 0.0
    value = 1.0 - (1.0 + t / inv_gamma) ** -power
    return float(min(max(value, min_value), beta))


def swa_update(avg: Params, params: Params, n: int) -> Params:
    """The uniform mean of n + 1 models from the mean ``avg`` of the first n."""
    if n < 0:
        raise ValueError(f"n={n}: the number of models already averaged is >= 0")
    return _floats(lambda a, p: a + (p - a) / (n + 1), avg, params)


def lawa_checkpoints(model_dir: str, k: int) -> list[tuple[int, str]]:
    """The k latest complete checkpoints of ``model_dir`` as (step, path), oldest first."""
    from flan_moe.training.checkpoints import list_checkpoints

    found = list_checkpoints(model_dir)
    if k < 1 or len(found) < k:
        have = [s for s, _ in found]
        raise ValueError(
            f"LAWA over the last {k} checkpoints of {model_dir}, which holds {have}: keep more "
            "checkpoints (TrainConfig keep / save interval) or lower k"
        )
    return found[-k:]

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

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

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


# --- EMA / SWA kept in the optimizer state (so checkpoints and resume carry them) ---------


class AveragesState(NamedTuple):
    """The wrapped optimizer's state plus the averages of the params after each update."""

    inner: Any
    count: jax.Array  # optimizer updates done
    ema: Any  # params-shaped (an empty dict when EMA is off)
    swa: Any  # params-shaped (an empty dict when SWA is off)
    swa_count: jax.Array  # models in the SWA mean


def with_averages(
    inner: optax.GradientTransformation,
    *,
    ema_decay: float | None = None,
    ema_every: int = 1,
    ema_warmup_after: int | None = None,
    swa_start: int | None = None,
    swa_every: int = 1,
) -> optax.GradientTransformation:
    """``inner`` plus an EMA and/or SWA of the params it produces, in its state.

    After update number n (params_n = params + updates): the EMA is updated when
    n % ema_every == 0 with decay ``ema_decay`` (or, with ``ema_warmup_after``, the
    warm-up decay `ema_decay` capped at ``ema_decay``); SWA adds params_n to its uniform
    mean when n >= swa_start and (n - swa_start) % swa_every == 0. Both start from the
    initial params. A leaf's path in the state is ``ema/<param path>`` / ``swa/<param path>``.
    """

    def init(params):
        copy = lambda on: jax.tree_util.tree_map(jnp.asarray, params) if on else {}
        return AveragesState(
            inner=inner.init(params),
            count=jnp.zeros([], jnp.int32),
            ema=copy(ema_decay is not None),
            swa=copy(swa_start is not None),
            swa_count=jnp.zeros([], jnp.int32),
        )

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("with_averages needs params in optimizer.update(grads, state, params)")
        updates, inner_state = inner.update(updates, state.inner, params)
        n = state.count + 1
        new = jax.tree_util.tree_map(lambda p, u: (p + u).astype(p.dtype), params, updates)
        ema, swa, swa_count = state.ema, state.swa, state.swa_count
        if ema_decay is not None:
            decay = jnp.asarray(ema_decay, jnp.float32)
            if ema_warmup_after is not None:
                t = (n - ema_warmup_after).astype(jnp.float32)
                warm = 1.0 - (1.0 + t) ** (-2.0 / 3.0)
                decay = jnp.where(t <= 0, 0.0, jnp.minimum(warm, decay))
            fresh = ema_update(ema, new, decay)
            ema = jax.tree_util.tree_map(
                lambda f, o: jnp.where(n % ema_every == 0, f, o), fresh, ema
            )
        if swa_start is not None:
            take = (n >= swa_start) & ((n - swa_start) % swa_every == 0)
            fresh = _floats(lambda a, p: a + (p - a) / (swa_count + 1), swa, new)
            swa = jax.tree_util.tree_map(lambda f, o: jnp.where(take, f, o), fresh, swa)
            swa_count = swa_count + take.astype(jnp.int32)
        return updates, AveragesState(inner_state, n, ema, swa, swa_count)

    return optax.GradientTransformation(init, update)


def load_weights(path: str, which: str) -> tuple[Params, Any, dict[str, Any]]:
    """(params, model config, metadata) of a checkpoint, with ``which`` = "raw" (the
    trained params), "ema" or "swa" (the averages `with_averages` kept in its state) or
    "lawa_<k>" (the uniform average of the k checkpoints ending at this one)."""
    import os

    import orbax.checkpoint as ocp

    from flan_moe.training import checkpoints

    params, config, metadata = checkpoints.load_params(path)
    if which == "raw":
        return params, config, metadata
    directory, step = checkpoints.resolve_checkpoint(path)
    if which.startswith("lawa_") and which[5:].isdigit():
        return _lawa_at(directory, step, int(which[5:])), config, metadata
    if which not in ("ema", "swa"):
        raise ValueError(f"--weights={which!r}: use raw, ema, swa or lawa_<k> (e.g. lawa_5)")
    item = os.path.join(directory, f"{checkpoints.STEP_PREFIX}_{step}", "opt_state")
    saved = ocp.StandardCheckpointer().restore(item)
    flat = {k[len(which) + 1 :]: v for k, v in saved.items() if k.startswith(f"{which}/")}
    if not flat:
        raise ValueError(
            f"{directory} step {step} holds no {which} weights: train with "
            f"OptimizerConfig.{'ema_decay' if which == 'ema' else 'swa_start'} set"
        )
    leaves = []
    for p, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = checkpoints.path_str(p)
        if name not in flat:
            raise ValueError(f"{which} weights lack {name} (step {step} of {directory})")
        leaves.append(jnp.asarray(flat[name], leaf.dtype))
    return (
        jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), leaves),
        config,
        metadata,
    )


def _lawa_at(directory: str, step: int, k: int) -> Params:
    """The uniform average of the k latest checkpoints of ``directory`` up to ``step``."""
    from flan_moe.merging.soups import uniform
    from flan_moe.training import checkpoints

    found = [(s, p) for s, p in checkpoints.list_checkpoints(directory) if s <= step]
    if k < 1 or len(found) < k:
        raise ValueError(
            f"lawa_{k} at step {step} of {directory} needs {k} checkpoints up to it, found "
            f"{[s for s, _ in found]}: keep more checkpoints or lower k"
        )
    return uniform([checkpoints.load_params(p)[0] for _, p in found[-k:]])

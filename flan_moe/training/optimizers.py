"""Optimizers, learning-rate schedules and freeze masks (optax).

* ``adafactor``: t5x's Adafactor (``t5x/adafactor.py``) with the MoE gin files'
  logical factor rules (``FACTOR_RULES``): decay rate 0.8 (beta2_t = 1 - t^-0.8), no
  momentum, update clipping at RMS 1.0, step size scaled by the parameter's RMS
  (floor 1e-3), epsilon 1e-30. Params of rank > 2 are factored by logical axis names
  (attention [embed | heads, kv]; experts: ``expert`` is a BATCH dim, so each expert
  gets its own statistics, clipping and parameter scale); params of rank <= 2 use
  t5x's heuristic (the two largest dims, if the smaller is >= 128). Statistics have
  t5x's shapes (v_row drops the col dims, v_col the row dims). ``weight_decay`` is
  t5x's ``weight_decay_rate``: param <- (1 - rate) * param - lr * update.
* ``adamw``: optax AdamW.
* Schedules (functions of the absolute optimizer step): ``rsqrt`` (constant
  ``base / sqrt(warmup)`` during warmup, then ``base / sqrt(step)``, as t5x's
  pre-training), ``constant`` (FLAN finetuning), ``cosine`` (linear warmup, cosine
  decay to ``final_fraction * base``).
* Freezing (``freeze`` setting): ``none`` | ``gate`` (routers) | ``expert`` (expert
  MLPs) | ``moe`` (routers and experts) | ``regex:<pattern>`` (params whose
  '/'-joined path matches are frozen). Frozen params get no update and carry no
  optimizer state (optax ``multi_transform`` with ``set_to_zero``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array
Schedule = Callable[[Array], Array]
ParamAxes = Mapping[str, tuple[str | None, ...]]

# Param-path regexes of the freeze presets. Sparse layers live under ``.../moe/``;
# the router params contain "router", the expert MLPs "expert" in their path.
GATE_REGEX = r"(^|/)moe/(.*/)?[^/]*router"
EXPERT_REGEX = r"(^|/)moe/(.*/)?[^/]*expert"
FREEZE_PRESETS = {
    "none": None,
    "gate": GATE_REGEX,
    "expert": EXPERT_REGEX,
    "moe": f"({GATE_REGEX})|({EXPERT_REGEX})",
}


@dataclass(frozen=True)
class OptimizerConfig:
    """Which optimizer and learning-rate schedule a run uses."""

    name: Literal["adafactor", "adamw"] = "adafactor"
    schedule: Literal["rsqrt", "constant", "cosine"] = "constant"
    learning_rate: float = 1e-3
    warmup_steps: int = 0
    # cosine only: steps of the decay (absolute) and the final fraction of the base lr.
    decay_steps: int = 0
    final_fraction: float = 0.0
    # Adafactor
    decay_rate: float = 0.8
    clipping_threshold: float | None = 1.0
    multiply_by_parameter_scale: bool = True
    min_dim_size_to_factor: int = 128
    # AdamW
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    # AdamW: decoupled decay scaled by the lr (optax); Adafactor: t5x weight_decay_rate.
    weight_decay: float = 0.0
    # Global-norm gradient clipping before the optimizer (None = off).
    max_grad_norm: float | None = None
    freeze: str = "none"
    # Weight averages kept in the optimizer state (flan_moe.merging.averaging.with_averages):
    # EMA with this decay every ema_every updates (warm-up after ema_warmup_after), SWA
    # from update swa_start every swa_every. None = off.
    ema_decay: float | None = None
    ema_every: int = 1
    ema_warmup_after: int | None = None
    swa_start: int | None = None
    swa_every: int = 1

    def __post_init__(self) -> None:
        if self.name not in ("adafactor", "adamw"):
            raise ValueError(f"unknown optimizer {self.name!r}; use 'adafactor' or 'adamw'")
        if self.schedule not in ("rsqrt", "constant", "cosine"):
            raise ValueError(
                f"unknown schedule {self.schedule!r}; use 'rsqrt', 'constant' or 'cosine'"
            )
        if self.schedule == "cosine" and self.decay_steps <= 0:
            raise ValueError("the cosine schedule needs decay_steps > 0")
        freeze_regex(self.freeze)  # validates


# --- schedules ------------------------------------------------------------------


def rsqrt_schedule(*, learning_rate: float, warmup_steps: int) -> Schedule:
    """``learning_rate / sqrt(max(step, warmup_steps))`` (t5x pre-training; warmup >= 1)."""
    warmup = max(int(warmup_steps), 1)
    return lambda step: learning_rate / jnp.sqrt(jnp.maximum(step, warmup).astype(jnp.float32))


def constant_schedule(*, learning_rate: float, warmup_steps: int = 0) -> Schedule:
    """Constant, after an optional linear warmup."""

    def schedule(step: Array) -> Array:
        if warmup_steps <= 0:
            return jnp.asarray(learning_rate, jnp.float32)
        return learning_rate * jnp.minimum(1.0, (step + 1) / warmup_steps)

    return schedule


def cosine_schedule(
    *, learning_rate: float, warmup_steps: int, decay_steps: int, final_fraction: float
) -> Schedule:
    """Linear warmup, then cosine decay over ``decay_steps`` to ``final_fraction * lr``."""

    def schedule(step: Array) -> Array:
        step = step.astype(jnp.float32)
        warm = jnp.minimum(1.0, (step + 1) / max(warmup_steps, 1)) if warmup_steps else 1.0
        progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = 0.5 * (1.0 + jnp.cos(math.pi * progress))
        return learning_rate * warm * (final_fraction + (1.0 - final_fraction) * cosine)

    return schedule


def make_schedule(config: OptimizerConfig) -> Schedule:
    if config.schedule == "rsqrt":
        return rsqrt_schedule(learning_rate=config.learning_rate, warmup_steps=config.warmup_steps)
    if config.schedule == "constant":
        return constant_schedule(
            learning_rate=config.learning_rate, warmup_steps=config.warmup_steps
        )
    return cosine_schedule(
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=config.decay_steps,
        final_fraction=config.final_fraction,
    )


# --- Adafactor ----------------------------------------------------------------


def path_str(path: tuple) -> str:
    """'/'-joined names of a pytree key path (dict keys, attributes, indices)."""
    names = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
        else:
            names.append(str(key))
    return "/".join(names)


# t5x's logical factor rules: ``t5x/adafactor.py`` ``standard_logical_factor_rules`` updated
# by ``t5x/contrib/moe/adafactor_utils.py`` ``logical_factor_rules`` (the MoE gin files'
# ``adafactor.Adafactor.logical_factor_rules``). "row" / "col" dims are factored, "batch"
# dims are independent problems (own statistics, clipping, parameter scale), None dims
# are averaged over but not factored.
FACTOR_RULES: dict[str, str | None] = {
    "vocab": "col", "embed": "row", "mlp": "col", "heads": "col", "kv": "col",
    "joined_kv": "col", "relpos_buckets": None, "layers": "batch", "stack": "batch",
    "q_wi_fused": "col", "o_wo_fused": "col", "multiquery_heads": "col", "kv_fused": "col",
    "layer_norm_scale": None, "mlp_activations": "col",
    # t5x/contrib/moe/adafactor_utils.py
    "expert": "batch", "expert_mlp": "col", "unmodeled": None, "mlp_embed": "row",
}  # fmt: skip


class _Factoring(NamedTuple):
    # Dims each statistic is averaged over (all but the batch dims).
    averaging_dims: tuple[int, ...]
    # (row dims, col dims): v_row drops the col dims, v_col the row dims; None = whole v.
    dims: tuple[tuple[int, ...], tuple[int, ...]] | None


def _heuristic(shape: tuple[int, ...], min_dim: int) -> _Factoring:
    """t5x's rule for params of rank <= 2 without batch dims (``Adafactor._factored_dims``):
    factor the two largest dims when the smaller of them is >= ``min_dim``."""
    everything = tuple(range(len(shape)))
    if len(shape) < 2:
        return _Factoring(everything, None)
    order = np.argsort(shape)
    if shape[order[-2]] < min_dim:
        return _Factoring(everything, None)
    return _Factoring(everything, ((int(order[-2]),), (int(order[-1]),)))


def _factoring(
    shape: tuple[int, ...], axes: tuple[str | None, ...] | None, min_dim: int, path: str = ""
) -> _Factoring:
    """How t5x's Adafactor with ``FACTOR_RULES`` treats a param (``set_param_axes`` and
    ``_parse_rule``): rank <= 2 without a batch dim falls back to the heuristic; otherwise
    row and col dims are factored if both exist (else nothing is factored)."""
    if axes is None:
        if len(shape) > 2:
            raise ValueError(
                f"Adafactor needs the logical axis names of the rank-{len(shape)} param "
                f"{path!r} (shape {shape}) to factor it; pass param_axes"
            )
        return _heuristic(shape, min_dim)
    if len(axes) != len(shape):
        raise ValueError(f"param {path!r} has shape {shape} but logical axes {axes}")
    unknown = [a for a in axes if a is not None and a not in FACTOR_RULES]
    if unknown:
        raise ValueError(
            f"no Adafactor factor rule for logical axes {unknown} of param {path!r}; "
            f"add them to FACTOR_RULES (known: {sorted(FACTOR_RULES)})"
        )
    rule = [FACTOR_RULES[a] if a is not None else None for a in axes]
    if "row" in rule and "col" in rule and None in rule:
        raise ValueError(f"incomplete Adafactor factor rule {rule} for {path!r} (axes {axes})")
    if "row" not in rule or "col" not in rule:
        rule = [r if r == "batch" else None for r in rule]
    batch = tuple(i for i, r in enumerate(rule) if r == "batch")
    if len(shape) <= 2 and not batch:
        return _heuristic(shape, min_dim)
    rows = tuple(i for i, r in enumerate(rule) if r == "row")
    cols = tuple(i for i, r in enumerate(rule) if r == "col")
    averaging = tuple(i for i in range(len(shape)) if i not in batch)
    return _Factoring(averaging, (rows, cols) if rows or cols else None)


class AdafactorLeafState(NamedTuple):
    v_row: Array  # param shape without the col dims (or [1] when unfactored)
    v_col: Array  # param shape without the row dims (or [1] when unfactored)
    v: Array  # full second moment when unfactored (else [1])


class AdafactorState(NamedTuple):
    count: Array
    leaves: Any


def scale_by_adafactor(
    *,
    param_axes: ParamAxes | None = None,
    decay_rate: float = 0.8,
    epsilon1: float = 1e-30,
    epsilon2: float = 1e-3,
    clipping_threshold: float | None = 1.0,
    multiply_by_parameter_scale: bool = True,
    min_dim_size_to_factor: int = 128,
) -> optax.GradientTransformation:
    """Adafactor's update direction (learning rate NOT applied; chain a schedule).

    t5x's ``Adafactor`` (``t5x/adafactor.py``, no momentum) with ``FACTOR_RULES``:
    ``param_axes`` maps '/'-joined param paths to logical axis names. A param of rank
    > 2 needs its axes; rank <= 2 params without axes use t5x's heuristic.
    """

    def leaf_factoring(path, p) -> _Factoring:
        name = path_str(path)
        axes = (param_axes or {}).get(name)
        return _factoring(tuple(p.shape), axes, min_dim_size_to_factor, name)

    def init_fn(params):
        leaves = jax.tree_util.tree_map_with_path(
            lambda path, p: _adafactor_zero_state(leaf_factoring(path, p), p.shape), params
        )
        return AdafactorState(count=jnp.zeros([], jnp.int32), leaves=leaves)

    def update_leaf(path, g, s: AdafactorLeafState, p, beta2):
        f = leaf_factoring(path, p)
        u, new = _adafactor_direction(f, g.astype(jnp.float32), s, beta2, epsilon1)
        dims = f.averaging_dims
        if clipping_threshold is not None:
            rms = jnp.sqrt(jnp.mean(jnp.square(u), axis=dims, keepdims=True))
            u = u / jnp.maximum(1.0, rms / clipping_threshold)
        if multiply_by_parameter_scale:
            p32 = p.astype(jnp.float32)
            scale = jnp.sqrt(jnp.mean(jnp.square(p32), axis=dims, keepdims=True))
            u = u * jnp.maximum(scale, epsilon2)
        return u.astype(p.dtype), new

    def update_fn(updates, state: AdafactorState, params=None):
        if params is None:
            raise ValueError("Adafactor needs params in update() (parameter scaling)")
        t = (state.count + 1).astype(jnp.float32)
        beta2 = 1.0 - jnp.power(t, -decay_rate)
        is_leaf = lambda x: isinstance(x, AdafactorLeafState)
        flat_s = jax.tree_util.tree_flatten(state.leaves, is_leaf=is_leaf)[0]
        flat_g, treedef = jax.tree_util.tree_flatten_with_path(updates)
        flat_p = jax.tree_util.tree_leaves(params)
        outs = [
            update_leaf(path, g, s, p, beta2)
            for (path, g), s, p in zip(flat_g, flat_s, flat_p, strict=True)
        ]
        new_updates = jax.tree_util.tree_unflatten(treedef, [o[0] for o in outs])
        state_def = jax.tree_util.tree_structure(state.leaves, is_leaf=is_leaf)
        new_leaves = jax.tree_util.tree_unflatten(state_def, [o[1] for o in outs])
        return new_updates, AdafactorState(count=state.count + 1, leaves=new_leaves)

    return optax.GradientTransformation(init_fn, update_fn)


def _adafactor_zero_state(f: _Factoring, shape: tuple[int, ...]) -> AdafactorLeafState:
    """Zero second-moment statistics: row and column factors, or the full moment."""
    one = jnp.zeros((1,), jnp.float32)
    if f.dims is None:
        return AdafactorLeafState(one, one, jnp.zeros(shape, jnp.float32))
    rows, cols = f.dims
    return AdafactorLeafState(
        jnp.zeros(np.delete(shape, cols), jnp.float32),
        jnp.zeros(np.delete(shape, rows), jnp.float32),
        one,
    )


def _adafactor_direction(
    f: _Factoring, g: Array, s: AdafactorLeafState, beta2: Array, epsilon1: float
) -> tuple[Array, AdafactorLeafState]:
    """g / sqrt(v) with the updated (factored or full) second moment v, and the new state."""
    g2 = jnp.square(g) + epsilon1
    if f.dims is None:
        v = beta2 * s.v + (1 - beta2) * g2
        return g * jax.lax.rsqrt(v), AdafactorLeafState(s.v_row, s.v_col, v)
    rows, cols = f.dims
    v_row = beta2 * s.v_row + (1 - beta2) * jnp.mean(g2, axis=cols)
    v_col = beta2 * s.v_col + (1 - beta2) * jnp.mean(g2, axis=rows)
    # v ~ v_row * v_col / mean(v_row over the row dims)
    rows_in_v_row = tuple(d - sum(c < d for c in cols) for d in rows)
    row_mean = jnp.mean(v_row, axis=rows_in_v_row, keepdims=True)
    row_factor = jnp.expand_dims(jax.lax.rsqrt(v_row / row_mean), cols)
    u = g * row_factor * jnp.expand_dims(jax.lax.rsqrt(v_col), rows)
    return u, AdafactorLeafState(v_row, v_col, s.v)


def decay_weights(rate: float) -> optax.GradientTransformation:
    """t5x Adafactor's ``weight_decay_rate``: new param = (1 - rate) * param - lr * update.

    Chained after the learning rate, it adds ``-rate * param`` (not scaled by the
    learning rate, unlike optax.adamw's decoupled weight decay).
    """
    return optax.add_decayed_weights(-rate)


# --- freezing -----------------------------------------------------------------


def freeze_regex(freeze: str) -> str | None:
    """The regex of frozen param paths for a ``freeze`` setting (None = train all)."""
    if freeze.startswith("regex:"):
        pattern = freeze[len("regex:") :]
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"freeze regex {pattern!r} does not compile: {e}") from e
        return pattern
    if freeze not in FREEZE_PRESETS:
        raise ValueError(
            f"unknown freeze setting {freeze!r}; use one of {sorted(FREEZE_PRESETS)} or "
            "'regex:<pattern>' (params whose '/'-joined path matches are frozen)"
        )
    return FREEZE_PRESETS[freeze]


def trainable_mask(params: Any, freeze: str) -> Any:
    """A tree of Python bools like ``params``: True = trained, False = frozen.

    Raises when a preset or regex freezes nothing (a misspelt regex, or a MoE freeze
    on a dense model) so an ablation never runs silently as the baseline.
    """
    pattern = freeze_regex(freeze)
    mask = jax.tree_util.tree_map_with_path(
        lambda path, _: pattern is None or re.search(pattern, path_str(path)) is None, params
    )
    if pattern is not None and all(jax.tree_util.tree_leaves(mask)):
        paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
        raise ValueError(
            f"freeze={freeze!r} (regex {pattern!r}) matches no parameter; paths look like "
            f"{paths[:6]}. A freeze-gate/expert/moe ablation needs a MoE model."
        )
    return mask


# --- the optimizer ------------------------------------------------------------


def make_optimizer(
    config: OptimizerConfig, *, params: Any, param_axes: ParamAxes | None = None
) -> tuple[optax.GradientTransformation, Schedule, Any]:
    """(optimizer, schedule, trainable mask) for ``params`` (abstract shapes suffice)."""
    schedule = make_schedule(config)
    if config.name == "adafactor":
        inner = optax.chain(
            scale_by_adafactor(
                param_axes=param_axes,
                decay_rate=config.decay_rate,
                clipping_threshold=config.clipping_threshold,
                multiply_by_parameter_scale=config.multiply_by_parameter_scale,
                min_dim_size_to_factor=config.min_dim_size_to_factor,
            ),
            optax.scale_by_learning_rate(schedule),
        )
        if config.weight_decay > 0:
            inner = optax.chain(inner, decay_weights(config.weight_decay))
    else:
        inner = optax.adamw(
            schedule, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay
        )
    if config.max_grad_norm is not None:
        inner = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), inner)
    mask = trainable_mask(params, config.freeze)
    if all(jax.tree_util.tree_leaves(mask)):
        return _averaged(config, inner), schedule, mask
    labels = jax.tree_util.tree_map(lambda t: "train" if t else "freeze", mask)
    optimizer = optax.multi_transform({"train": inner, "freeze": optax.set_to_zero()}, labels)
    return _averaged(config, optimizer), schedule, mask


def _averaged(config: OptimizerConfig, optimizer: optax.GradientTransformation):
    """``optimizer`` with the EMA / SWA of the config in its state (unchanged when off)."""
    if config.ema_decay is None and config.swa_start is None:
        return optimizer
    from flan_moe.merging.averaging import with_averages

    return with_averages(
        optimizer,
        ema_decay=config.ema_decay,
        ema_every=config.ema_every,
        ema_warmup_after=config.ema_warmup_after,
        swa_start=config.swa_start,
        swa_every=config.swa_every,
    )

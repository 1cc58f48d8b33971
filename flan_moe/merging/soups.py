"""Model soups and task-vector merges on param trees (mergekit's semantics, per tensor).

Notation: models theta_i with weights w_i, a shared base theta_b, task vectors
delta_i = theta_i - theta_b. Every function takes whole param trees (same structure and
shapes: a mismatch is an error naming the path) and returns a new tree; integer leaves
are never averaged (they must be equal). Arithmetic is float32.

* ``linear``: sum_i w_i theta_i / sum_i w_i (``normalize=False``: no division);
  ``uniform``: w_i = 1 (the uniform soup, and the final step of Model Ratatouille);
  ``warm``: the uniform average of models fine-tuned from one init (WARM, Rame et al.
  2024); it checks the models share the init's structure and reports nothing else.
* ``greedy_soup``: models in descending score order; a model joins the soup only if the
  soup's score does not drop (``>=``, Ratatouille/Wortsman et al.).
* ``task_arithmetic``: theta_b + lam * sum_i w_i delta_i.
* ``ties``: each delta_i keeps its top ``density`` fraction by magnitude per tensor
  (k = int(density * size)); elected sign = sign(sum_i w_i delta_i) (ties go to +);
  merged = sum_i m_i w_i delta_i / sum_i m_i w_i with m_i = [sign(w_i delta_i) ==
  elected] (divisor 0 -> 1); result theta_b + lam * merged.
* ``dare``: each delta_i keeps each entry with probability ``density`` (Bernoulli),
  rescaled by ``rescale``: "inverse_density" (divide by density, the DARE paper's rule:
  ||delta||_1 preserved in expectation), "l1" (scale so ||delta||_1 is preserved exactly:
  mergekit since PR #245) or "none"; then a linear (``consensus=None``) or TIES-style
  (``consensus="ties"``) combination.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

Params = Any
Rescale = Literal["inverse_density", "l1", "none"]


def _check_same(trees: Sequence[Params], names: Sequence[str] | None = None) -> None:
    if not trees:
        raise ValueError("no models to merge: pass at least one param tree")
    ref = {
        jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(trees[0])
    }
    for i, tree in enumerate(trees[1:], 1):
        got = {
            jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(tree)
        }
        if got != ref:
            diff = sorted(set(got.items()) ^ set(ref.items()))[:5]
            name = names[i] if names else f"model {i}"
            raise ValueError(
                f"{name} does not have the params of the first model (paths/shapes differ: "
                f"{diff}); merge only models of one architecture"
            )


def _weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    w = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32)
    if w.shape != (n,):
        raise ValueError(
            f"{w.shape[0] if w.ndim else 0} weights for {n} models: give one per model"
        )
    return w


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


def _map(fn: Callable[..., Any], *trees: Params) -> Params:
    """fn over float leaves; integer leaves must agree across trees and are kept."""

    def leaf(*xs):
        if not _is_float(xs[0]):
            if any(not np.array_equal(np.asarray(xs[0]), np.asarray(x)) for x in xs[1:]):
                raise ValueError("integer leaves differ between models: they cannot be averaged")
            return xs[0]
        return fn(*[jnp.asarray(x, jnp.float32) for x in xs]).astype(jnp.asarray(xs[0]).dtype)

    return jax.tree_util.tree_map(leaf, *trees)


def linear(
    models: Sequence[Params], weights: Sequence[float] | None = None, *, normalize: bool = True
) -> Params:
    """sum_i w_i theta_i (/ sum_i w_i when ``normalize``)."""
    _check_same(models)
    w = _weights(weights, len(models))
    if normalize and w.sum() == 0:
        raise ValueError("weights sum to 0: cannot normalise; pass normalize=False")
    scale = w / w.sum() if normalize else w
    return _map(lambda *xs: sum(s * x for s, x in zip(scale, xs, strict=True)), *models)


def uniform(models: Sequence[Params]) -> Params:
    """The uniform soup (1/M) sum_i theta_i."""
    return linear(models)


def warm(init: Params, models: Sequence[Params]) -> Params:
    """WARM: the uniform average of models fine-tuned from ``init`` (same structure)."""
    _check_same([init, *models])
    return uniform(models)


def greedy_soup(
    models: Sequence[Params],
    score: Callable[[Params], float],
    *,
    scores: Sequence[float] | None = None,
) -> tuple[Params, list[int], list[float]]:
    """Greedy soup: returns (soup, chosen model indices, the soup's score after each try).

    Models are tried in descending order of their own score (``scores`` or computed);
    a model is kept when the uniform soup with it scores >= the soup without it.
    """
    own = [float(score(m)) for m in models] if scores is None else [float(s) for s in scores]
    order = sorted(range(len(models)), key=lambda i: -own[i])
    chosen, best, history = [order[0]], own[order[0]], [own[order[0]]]
    for i in order[1:]:
        trial = uniform([models[j] for j in [*chosen, i]])
        s = float(score(trial))
        history.append(s)
        if s >= best:
            chosen, best = [*chosen, i], s
    return uniform([models[j] for j in chosen]), chosen, history


def task_arithmetic(
    base: Params,
    models: Sequence[Params],
    weights: Sequence[float] | None = None,
    *,
    lam: float = 1.0,
) -> Params:
    """theta_b + lam * sum_i w_i (theta_i - theta_b)."""
    _check_same([base, *models])
    w = _weights(weights, len(models))
    return _map(
        lambda b, *xs: b + lam * sum(wi * (x - b) for wi, x in zip(w, xs, strict=True)),
        base,
        *models,
    )


def magnitude_mask(delta: jax.Array, density: float) -> jax.Array:
    """Bool mask keeping the k = int(density * size) largest |delta| entries of one tensor."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density {density} must be in (0, 1]")
    k = int(density * delta.size)
    if k >= delta.size:
        return jnp.ones(delta.shape, bool)
    flat = jnp.abs(delta).reshape(-1)
    _, idx = jax.lax.top_k(flat, k)
    return jnp.zeros(flat.shape, bool).at[idx].set(True).reshape(delta.shape)


def _sign_consensus(weighted: jax.Array, w: jax.Array) -> jax.Array:
    """TIES merge of weighted deltas [m, ...]: sign election by sum, disjoint mean."""
    elected = jnp.where(weighted.sum(0) >= 0, 1.0, -1.0)
    mask = jnp.sign(weighted) == elected
    w = w.reshape((-1,) + (1,) * (weighted.ndim - 1))
    divisor = (mask * w).sum(0)
    return (weighted * mask).sum(0) / jnp.where(divisor == 0, 1.0, divisor)


def ties(
    base: Params,
    models: Sequence[Params],
    weights: Sequence[float] | None = None,
    *,
    density: float = 1.0,
    lam: float = 1.0,
) -> Params:
    """TIES-merging (Yadav et al. 2023) as mergekit's ``ties`` (sign by sum, normalised)."""
    _check_same([base, *models])
    w = jnp.asarray(_weights(weights, len(models)))

    def leaf(b, *xs):
        deltas = [x - b for x in xs]
        deltas = jnp.stack([d * magnitude_mask(d, density) for d in deltas])
        weighted = deltas * w.reshape((-1,) + (1,) * b.ndim)
        return b + lam * _sign_consensus(weighted, w)

    return _map(leaf, base, *models)


def dare_delta(delta: jax.Array, key: jax.Array, *, density: float, rescale: Rescale) -> jax.Array:
    """Drop each entry with probability 1 - density, then rescale (see module docstring)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density {density} must be in (0, 1]")
    keep = jax.random.bernoulli(key, density, delta.shape)
    kept = jnp.where(keep, delta, 0.0)
    if rescale == "inverse_density":
        return kept / density
    if rescale == "l1":
        before, after = jnp.abs(delta).sum(), jnp.abs(kept).sum()
        return jnp.where(after > 0, kept * (before / jnp.where(after > 0, after, 1.0)), kept)
    if rescale == "none":
        return kept
    raise ValueError(f"rescale {rescale!r}: use 'inverse_density', 'l1' or 'none'")


def dare(
    base: Params,
    models: Sequence[Params],
    weights: Sequence[float] | None = None,
    *,
    density: float,
    seed: int,
    rescale: Rescale = "inverse_density",
    consensus: Literal["ties"] | None = None,
    lam: float = 1.0,
    normalize: bool = False,
) -> Params:
    """DARE (Yu et al. 2023): random drop + rescale of each task vector, then a linear
    (``dare_linear``) or TIES-style (``dare_ties``) combination. Each (model, tensor) gets
    its own key folded from ``seed``."""
    _check_same([base, *models])
    w = _weights(weights, len(models))
    wj = jnp.asarray(w)
    counter = iter(range(1 << 30))

    def leaf(b, *xs):
        n = next(counter)
        keys = [
            jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), n), i)
            for i in range(len(xs))
        ]
        deltas = jnp.stack(
            [
                dare_delta(x - b, k, density=density, rescale=rescale)
                for x, k in zip(xs, keys, strict=True)
            ]
        )
        weighted = deltas * wj.reshape((-1,) + (1,) * b.ndim)
        if consensus == "ties":
            return b + lam * _sign_consensus(weighted, wj)
        merged = weighted.sum(0) / (w.sum() if normalize else 1.0)
        return b + lam * merged

    return _map(leaf, base, *models)

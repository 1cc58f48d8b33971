"""One layer's dense MLP -> sparse-block params (experts, shared experts, router).

Shapes (the param tree of ``flan_moe.model.moe.MoeBlock``): a dense MLP is
``{wi | wi_0, wi_1: [d, f], wo: [f, d]}``; the sparse block holds
``experts/{wi..: [e, d, f_e], wo: [e, f_e, d]}``, ``shared_experts/{wi..: [d, s*f_e],
wo: [s*f_e, d]}`` and ``router/kernel [d, e]``. Everything is numpy, float32 in,
float32 out, seeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from flan_moe.construction.recipes import ConstructionError

Mlp = Mapping[str, np.ndarray]
INPUT_KERNELS = ("wi", "wi_0", "wi_1")


def check_mlp(mlp: Mlp, where: str) -> tuple[int, int]:
    """(d_model, d_ff) of a dense MLP dict; a clear error if it is not one."""
    names = set(mlp)
    if names not in ({"wi", "wo"}, {"wi_0", "wi_1", "wo"}):
        raise ConstructionError(
            f"{where}: expected a dense MLP with kernels {{wi, wo}} or {{wi_0, wi_1, wo}}, "
            f"found {sorted(names)}"
        )
    d, f = np.shape(mlp["wo"])[::-1]
    for name in names - {"wo"}:
        if np.shape(mlp[name]) != (d, f):
            raise ConstructionError(
                f"{where}/{name} has shape {np.shape(mlp[name])}, expected {(d, f)} from wo"
            )
    return d, f


def upcycle_experts(
    mlp: Mlp,
    num_experts: int,
    *,
    noise_std: float,
    drop_fraction: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """E copies of the dense kernels (t5x: ``np.repeat(arr[None], E, axis=0)``).

    ``noise_std`` > 0 adds independent N(0, noise_std) noise to every copy.
    ``drop_fraction`` r > 0 (Drop-Upcycling): each expert re-draws round(r * f) of its
    hidden units, its own random choice, from N(mean, std) of the dense matrix (the wi
    columns and the wo rows of those units).
    """
    _, f = check_mlp(mlp, "dense mlp")
    experts = {
        name: np.repeat(np.asarray(w, np.float32)[None], num_experts, axis=0)
        for name, w in mlp.items()
    }
    num_dropped = int(round(drop_fraction * f))
    if num_dropped:
        for e in range(num_experts):
            units = rng.choice(f, size=num_dropped, replace=False)
            for name, w in mlp.items():
                w = np.asarray(w, np.float32)
                mean, std = float(w.mean()), float(w.std())
                if name == "wo":
                    fresh = rng.normal(mean, std, (num_dropped, w.shape[1]))
                    experts[name][e, units, :] = fresh
                else:
                    fresh = rng.normal(mean, std, (w.shape[0], num_dropped))
                    experts[name][e][:, units] = fresh
    if noise_std > 0:
        for name in experts:
            experts[name] = experts[name] + rng.normal(0.0, noise_std, experts[name].shape)
    return {name: w.astype(np.float32) for name, w in experts.items()}


def slice_neurons(mlp: Mlp, neurons: np.ndarray, *, scale: float = 1.0) -> dict[str, np.ndarray]:
    """The dense MLP restricted to hidden units ``neurons`` (wo rows times ``scale``)."""
    out = {}
    for name, w in mlp.items():
        w = np.asarray(w, np.float32)
        out[name] = w[neurons, :] * np.float32(scale) if name == "wo" else w[:, neurons]
    return out


def split_experts(mlp: Mlp, groups: Sequence[np.ndarray], *, scale: float) -> dict[str, np.ndarray]:
    """Routed experts from neuron groups of equal size: wi columns / wo rows, stacked.

    ``scale`` (LLaMA-MoE's score scale factor) multiplies each routed expert's output;
    it is folded into wo.
    """
    _, f = check_mlp(mlp, "dense mlp")
    sizes = {len(g) for g in groups}
    if len(sizes) != 1:
        raise ConstructionError(f"experts must have equal sizes, got {sorted(sizes)}")
    for g in groups:
        if len(g) and (np.min(g) < 0 or np.max(g) >= f):
            raise ConstructionError(f"neuron indices must be in 0..{f - 1}")
    parts = [slice_neurons(mlp, np.asarray(g), scale=scale) for g in groups]
    return {name: np.stack([p[name] for p in parts]) for name in mlp}


def router_kernel(
    init: str,
    d_model: int,
    num_experts: int,
    *,
    rng: np.random.Generator,
    vectors: np.ndarray | None = None,
) -> np.ndarray:
    """Router kernel [d, e]: ``fresh`` normal(0.02) (the model's own initialiser),
    ``zero`` (uniform probabilities), or ``hidden`` (columns = the given unit vectors
    [e, d])."""
    if init == "fresh":
        return rng.normal(0.0, 0.02, (d_model, num_experts)).astype(np.float32)
    if init == "zero":
        return np.zeros((d_model, num_experts), np.float32)
    if init == "hidden":
        if vectors is None or np.shape(vectors) != (num_experts, d_model):
            raise ConstructionError(
                f"router init 'hidden' needs one vector per expert, shape "
                f"{(num_experts, d_model)}; got {None if vectors is None else np.shape(vectors)}"
            )
        return np.asarray(vectors, np.float32).T.copy()
    raise ConstructionError(f"unknown router init {init!r}")

"""MoE expert permutation alignment: relabel one model's experts to match another's.

Experts of a sparse layer are interchangeable: permuting the expert axis of the expert
weights (``experts/{wi_0,wi_1,wi,wo}`` [e, ...]) together with the router's columns
(``router/kernel`` [d, e], ``router/bias`` [e]) leaves the layer's function unchanged.
Two MoEs fine-tuned apart may hold "the same" expert at different indices, so before
averaging them (soups, TIES, ...) the target's experts are permuted to best match the
reference's: weight matching (MC-SMoE, Ainsworth et al.) maximises
sum_i <W_ref[i], W_tgt[pi(i)]> over every expert weight (and the router column), solved
exactly by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``).
Only the expert axis is permuted (not the hidden units inside an expert); shared
experts and dense layers are left as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

Params = Any
EXPERT_WEIGHTS = ("wi", "wi_0", "wi_1", "wo")


def moe_layers(params: Params, prefix: str = "") -> list[str]:
    """'/'-joined paths of every dict holding ``router`` and ``experts`` (a sparse layer)."""
    found = []
    if isinstance(params, dict):
        if "router" in params and "experts" in params:
            found.append(prefix.rstrip("/"))
        for key, value in params.items():
            found += moe_layers(value, f"{prefix}{key}/")
    return found


def _node(params: Params, path: str) -> dict:
    for key in path.split("/"):
        params = params[key]
    return params


def permute_layer(layer: dict, perm: np.ndarray) -> dict:
    """A copy of one sparse layer with expert ``perm[i]`` moved to index i."""
    perm = np.asarray(perm)
    experts = {k: (v[perm] if k in EXPERT_WEIGHTS else v) for k, v in layer["experts"].items()}
    router = dict(layer["router"])
    router["kernel"] = router["kernel"][:, perm]
    if "bias" in router:
        router["bias"] = router["bias"][perm]
    return {**layer, "router": router, "experts": experts}


def _replace(params: Params, path: str, new: dict) -> Params:
    if not path:
        return new
    head, _, rest = path.partition("/")
    return {**params, head: _replace(params[head], rest, new)}


def permute_experts(params: Params, perms: dict[str, np.ndarray]) -> Params:
    """Apply ``perms`` (sparse-layer path -> permutation) to a copy of ``params``."""
    for path, perm in perms.items():
        layer = _node(params, path)
        e = layer["router"]["kernel"].shape[-1]
        if sorted(np.asarray(perm).tolist()) != list(range(e)):
            raise ValueError(f"{path}: {perm} is not a permutation of its {e} experts")
        params = _replace(params, path, permute_layer(layer, perm))
    return params


def _features(layer: dict) -> np.ndarray:
    """[e, features]: each expert's weights and router column, flattened, float32."""
    parts = [
        np.asarray(layer["experts"][k], np.float32).reshape(layer["experts"][k].shape[0], -1)
        for k in EXPERT_WEIGHTS
        if k in layer["experts"]
    ]
    parts.append(np.asarray(layer["router"]["kernel"], np.float32).T)
    return np.concatenate(parts, axis=1)


def match_experts(reference: Params, target: Params) -> dict[str, np.ndarray]:
    """Per sparse layer, the permutation of ``target``'s experts maximising the summed
    inner products with ``reference``'s (``linear_sum_assignment(..., maximize=True)``)."""
    layers = moe_layers(reference)
    if layers != moe_layers(target):
        raise ValueError(f"sparse layers differ: {layers} vs {moe_layers(target)}")
    perms = {}
    for path in layers:
        similarity = _features(_node(reference, path)) @ _features(_node(target, path)).T
        rows, cols = linear_sum_assignment(similarity, maximize=True)
        perms[path] = cols[np.argsort(rows)]
    return perms


def align_experts(reference: Params, target: Params) -> tuple[Params, dict[str, np.ndarray]]:
    """``target`` with its experts permuted to match ``reference``, and the permutations."""
    perms = match_experts(reference, target)
    return permute_experts(target, perms), perms

"""Dense param tree + recipe -> MoE param tree + config (the one entry point).

``construct(dense_params, dense_config, recipe, importance=..., router_vectors=...)``:

* every layer the recipe's placement picks: ``{stack}/layers_{i}/mlp`` becomes
  ``{stack}/layers_{i}/moe/{router, experts[, shared_experts]}``;
* every other param (attention, norms, embeddings, dense layers) is copied 1:1;
* the dense params are checked against ``dense_config`` first and the result against
  the target config (a mismatch names every path and both shapes).

Data-dependent inputs are computed beforehand and passed in, so this stays pure:
``importance`` (``{"encoder/layers_1": scores [num_experts, d_ff]}``, from
``flan_moe.construction.importance``) for the Sharing splits, ``router_vectors``
(``{"encoder/layers_1": [num_experts, d_model]}``, from
``flan_moe.construction.hidden_router``) for ``RouterRecipe(init="hidden")``.
Randomness is seeded by (recipe seed, stack, layer), so a recipe is reproducible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from flan_moe.construction import experts as experts_lib
from flan_moe.construction import partition
from flan_moe.construction.recipes import (
    ConstructionError,
    Recipe,
    SplitRecipe,
    UpcycleRecipe,
    moe_config_for,
)
from flan_moe.model.config import ModelConfig

STACKS = ("encoder", "decoder")


@dataclasses.dataclass(frozen=True)
class LayerReport:
    """What construction did to one sparse layer (stored in checkpoint metadata)."""

    layer: str
    expert_sizes: tuple[int, ...]
    shared_size: int
    neurons_covered: int  # distinct dense hidden units used by experts + shared block
    d_ff: int


def sparse_layer_names(config: ModelConfig) -> list[str]:
    """'encoder/layers_1', ... for every sparse layer of an MoE config."""
    assert config.moe is not None
    names = []
    for stack, count in (
        ("encoder", config.num_encoder_layers),
        ("decoder", config.num_decoder_layers),
    ):
        names += [
            f"{stack}/layers_{i}"
            for i in range(count)
            if config.moe.is_sparse(i, decoder=stack == "decoder")
        ]
    return names


def _to_numpy(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: np.asarray(x), tree)


def _copy_dicts(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _copy_dicts(v) for k, v in tree.items()}
    return tree


def _split_groups(
    mlp: experts_lib.Mlp,
    recipe: SplitRecipe,
    scores: np.ndarray | None,
    seed: list[int],
    where: str,
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """(routed expert neuron groups, shared neurons or None) for one layer."""
    _, d_ff = experts_lib.check_mlp(mlp, where)
    n, k_s = recipe.num_experts, recipe.num_shared_experts
    width = recipe.expert_width(d_ff)
    if recipe.method in ("sharing_inner", "sharing_inter"):
        if scores is None:
            raise ConstructionError(
                f"{where}: method {recipe.method!r} needs importance scores for this layer "
                "(flan_moe.construction.importance.importance_scores on your data)"
            )
        if np.shape(scores) != (n, d_ff):
            raise ConstructionError(
                f"{where}: importance scores have shape {np.shape(scores)}, expected {(n, d_ff)}"
            )
        if recipe.method == "sharing_inner":
            return partition.sharing_inner(scores, width), None
        residual, routed = partition.sharing_inter(scores, num_residual=k_s, expert_size=width)
        return routed, residual
    if recipe.method == "random":
        labels = partition.random_labels(d_ff, n + k_s, seed=seed)
    else:
        name = recipe.cluster_on or ("wi_1" if "wi_1" in mlp else "wi")
        if name not in mlp:
            raise ConstructionError(f"{where}: cluster_on={name!r} but the MLP has {sorted(mlp)}")
        rows = np.asarray(mlp[name]).T  # [d_ff, d]: one row per hidden unit
        labels = partition.clustering_labels(
            rows, n + k_s, seed=recipe.seed, max_iter=recipe.cluster_max_iter
        )
    groups = partition.labels_to_groups(labels, n + k_s)
    shared = np.sort(np.concatenate(groups[:k_s])) if k_s else None
    return groups[k_s:], shared


def _sparse_block(
    mlp: experts_lib.Mlp,
    recipe: Recipe,
    *,
    where: str,
    seed: list[int],
    scores: np.ndarray | None,
    vectors: np.ndarray | None,
) -> tuple[dict[str, Any], LayerReport]:
    d_model, d_ff = experts_lib.check_mlp(mlp, where)
    rng = np.random.default_rng(seed)
    block: dict[str, Any] = {}
    if isinstance(recipe, UpcycleRecipe):
        block["experts"] = experts_lib.upcycle_experts(
            mlp, recipe.num_experts, noise_std=recipe.noise_std,
            drop_fraction=recipe.drop_fraction, rng=rng,
        )  # fmt: skip
        report = LayerReport(where, (d_ff,) * recipe.num_experts, 0, d_ff, d_ff)
    else:
        routed, shared = _split_groups(mlp, recipe, scores, seed, where)
        block["experts"] = experts_lib.split_experts(mlp, routed, scale=recipe.scale)
        used = set(np.concatenate(routed).tolist())
        if shared is not None:
            block["shared_experts"] = experts_lib.slice_neurons(mlp, shared)
            used |= set(shared.tolist())
        sizes = tuple(len(g) for g in routed)
        report = LayerReport(where, sizes, 0 if shared is None else len(shared), len(used), d_ff)
    router_rng = np.random.default_rng([recipe.router.seed, *seed, 1])
    kernel = experts_lib.router_kernel(
        recipe.router.init, d_model, recipe.num_experts, rng=router_rng, vectors=vectors
    )
    block["router"] = {"kernel": kernel}
    if recipe.moe.router_bias:
        block["router"]["bias"] = np.zeros((recipe.num_experts,), np.float32)
    return block, report


def construct(
    dense_params: Any,
    dense_config: ModelConfig,
    recipe: Recipe,
    *,
    importance: Mapping[str, np.ndarray] | None = None,
    router_vectors: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, Any], ModelConfig, list[LayerReport]]:
    """(MoE params, MoE config, one report per sparse layer) from a dense model."""
    from flan_moe.training.checkpoints import abstract_params_for, check_compatible

    moe_config = moe_config_for(dense_config, recipe)
    check_compatible(dense_params, abstract_params_for(dense_config), source="dense params")
    params = _copy_dicts(_to_numpy(dense_params))
    if recipe.router.init == "hidden" and router_vectors is None:
        raise ConstructionError(
            "router init 'hidden' needs router_vectors (flan_moe.construction.hidden_router)"
        )
    reports = []
    for name in sparse_layer_names(moe_config):
        stack, layer = name.split("/")
        node = params[stack][layer]
        if "mlp" not in node:
            raise ConstructionError(f"{name} has no dense 'mlp' params: {sorted(node)}")
        seed = [recipe.seed, STACKS.index(stack), int(layer.removeprefix("layers_"))]
        node["moe"], report = _sparse_block(
            node.pop("mlp"), recipe, where=f"{name}/mlp", seed=seed,
            scores=None if importance is None else importance.get(name),
            vectors=None if router_vectors is None else router_vectors.get(name),
        )  # fmt: skip
        reports.append(dataclasses.replace(report, layer=name))
    check_compatible(params, abstract_params_for(moe_config), source="constructed params")
    return params, moe_config, reports

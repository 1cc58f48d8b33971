"""The train state (step, params, optimizer state, RNG) and its shardings on a mesh.

Params are sharded by their logical axis names (``flan_moe.partitioning``). Each
optimizer-state leaf takes the sharding of the param it belongs to (found by its
key path, e.g. ``.../mu/encoder/layers_0/mlp/wo``), with dims of size 1 that the
param does not have at size 1 (factored Adafactor statistics) replicated; leaves
that belong to no param (counters) are replicated.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flan_moe import partitioning
from flan_moe.training.optimizers import path_str


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. ``rng`` is a raw uint32[2] key; a step's dropout
    key is ``fold_in(rng, step)``, so the random stream depends only on (seed, step)."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def logical_param_axes(abstract_variables: Any) -> tuple[Any, dict[str, tuple]]:
    """(tree of logical PartitionSpecs of 'params', {'/'-path: logical axis names})."""
    specs = nn.get_partition_spec(abstract_variables)["params"]
    flat = jax.tree_util.tree_leaves_with_path(
        specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )
    return specs, {path_str(path): tuple(spec) for path, spec in flat}


def _key_names(path: tuple) -> tuple[str, ...]:
    return tuple(path_str((k,)) for k in path)


def state_partition_specs(abstract_state: TrainState, param_specs: Any, rules=None) -> TrainState:
    """Mesh PartitionSpecs for every leaf of a TrainState (see module docstring)."""
    rules = list(rules or partitioning.logical_axis_rules())
    mesh_param_specs = nn.logical_to_mesh(param_specs, rules)
    by_path: dict[tuple[str, ...], tuple[tuple[int, ...], PartitionSpec]] = {}
    for (path, spec), p in zip(
        jax.tree_util.tree_leaves_with_path(
            mesh_param_specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
        ),
        jax.tree_util.tree_leaves(abstract_state.params),
        strict=True,
    ):
        by_path[_key_names(path)] = (tuple(p.shape), spec)

    def leaf_spec(path, leaf) -> PartitionSpec:
        names = _key_names(path)
        for start in range(len(names)):
            for end in range(len(names), start, -1):
                hit = by_path.get(names[start:end])
                if hit is None:
                    continue
                shape, spec = hit
                if len(shape) != len(leaf.shape):
                    return PartitionSpec()
                padded = tuple(spec) + (None,) * (len(shape) - len(spec))
                return PartitionSpec(
                    *(axis if leaf.shape[i] == shape[i] else None for i, axis in enumerate(padded))
                )
        return PartitionSpec()

    return jax.tree_util.tree_map_with_path(leaf_spec, abstract_state)


def state_shardings(abstract_state: TrainState, param_specs: Any, mesh: Mesh) -> TrainState:
    specs = state_partition_specs(abstract_state, param_specs)
    return jax.tree_util.tree_map(
        lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )

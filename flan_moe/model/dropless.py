"""Dropless MoE dispatch sorted within each routing group (shard-aware).

Each group's ``s * k`` choices are sorted by expert *inside the group* (a batched
sort over the last axis), so with the groups sharded over the mesh (logical axis
``expert_group``) no device needs another device's tokens: there is no global sort and
no all-gather of token rows or routing indices. The experts then run as grouped
matmuls batched over groups (``jax.lax.ragged_dot_general`` with the group as a batch
dimension): rows [g, n, d] and per-group expert counts [g, e]. Under an ``expert`` mesh
axis the expert weights are still gathered (every group meets every expert); use the
gather path for expert parallelism.

Legend: g group, s token within a group, k a token's choice, n = s * k rows of a group,
e expert, d embed, f expert hidden size.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def sort_within_groups(expert_index: Array, kept: Array, num_experts: int) -> tuple[Array, Array]:
    """Per group, the order of its choices by expert, and each expert's row count.

    expert_index, kept [g, s, k] -> (perm [g, s*k] int32: row r of group i is choice
    ``perm[i, r]`` (flattened s*k index); group_sizes [g, e] int32). Choices that are not
    kept (padding) sort after every expert and belong to no group of rows."""
    g = expert_index.shape[0]
    key = jnp.where(kept, expert_index, num_experts).reshape(g, -1)
    perm = jnp.argsort(key, axis=-1, stable=True).astype(jnp.int32)
    counts = jax.vmap(lambda row: jnp.bincount(row, length=num_experts + 1))(key)
    return perm, counts[:, :num_experts].astype(jnp.int32)


def grouped_dot(lhs: Array, rhs: Array, group_sizes: Array) -> Array:
    """Grouped matmul: lhs [n, d] or [g, n, d] rows sorted by expert, rhs [e, d, f],
    group_sizes [e] or [g, e] -> [n, f] or [g, n, f] (rows past the counts: zeros)."""
    if lhs.ndim == 2:
        return jax.lax.ragged_dot(lhs, rhs, group_sizes)
    g = lhs.shape[0]
    numbers = jax.lax.RaggedDotDimensionNumbers(
        dot_dimension_numbers=(([2], [2]), ([0], [0])),
        lhs_ragged_dimensions=[1],
        rhs_group_dimensions=[1],
    )
    # Every group sees the same experts: the weights broadcast over the group axis.
    return jax.lax.ragged_dot_general(
        lhs, jnp.broadcast_to(rhs, (g, *rhs.shape)), group_sizes, numbers
    )


def dropless_dispatch(
    xg: Array,
    expert_index: Array,
    kept: Array,
    weight: Array,
    *,
    num_experts: int,
    experts: Callable[[Array, Array], Array],
) -> Array:
    """Tokens xg [g, s, d] through their kept experts, summed with the router weights.

    ``experts(rows [g, n, d], group_sizes [g, e]) -> [g, n, d]`` runs the expert MLPs on
    rows sorted by expert within each group (e.g. ``ExpertMlp.ragged``, whose matmuls
    go through ``grouped_dot``). Returns [g, s, d] in ``xg.dtype``."""
    g, s, d = xg.shape
    k = expert_index.shape[-1]
    with jax.named_scope("dispatch"):
        perm, group_sizes = sort_within_groups(expert_index, kept, num_experts)
        rows = jnp.take_along_axis(xg, (perm // k)[..., None], axis=1)  # [g, n, d]
    with jax.named_scope("expert_compute"):
        out = experts(rows, group_sizes)
    with jax.named_scope("combine"):
        # The inverse permutation by a second batched sort (no scatter).
        inverse = jnp.argsort(perm, axis=-1)
        per_choice = jnp.take_along_axis(out, inverse[..., None], axis=1).reshape(g, s, k, d)
        return jnp.einsum("gskd,gsk->gsd", per_choice, weight.astype(xg.dtype))

"""Shard-aware dropless dispatch: sorting within groups, grouped matmuls, and the mesh."""

import jax
import jax.numpy as jnp
import numpy as np

from flan_moe import partitioning
from flan_moe.model import dropless
from tests.model.test_moe import apply_fn, block_config, init, inputs


def test_sort_within_groups_orders_each_group_by_expert():
    # 2 groups of 3 tokens, top-2 over 3 experts; one choice of group 1 is not kept.
    index = np.array([[[2, 0], [1, 0], [2, 1]], [[0, 1], [0, 2], [1, 2]]], np.int32)
    kept = np.ones_like(index, bool)
    kept[1, 2, 0] = False
    perm, sizes = dropless.sort_within_groups(jnp.asarray(index), jnp.asarray(kept), 3)
    # Flattened choices of group 0: experts [2, 0, 1, 0, 2, 1] -> stable order by expert.
    np.testing.assert_array_equal(perm[0], [1, 3, 2, 5, 0, 4])
    np.testing.assert_array_equal(sizes[0], [2, 2, 2])
    # Group 1: experts [0, 1, 0, 2, (dropped), 2]: the dropped choice sorts last.
    np.testing.assert_array_equal(perm[1], [0, 2, 1, 3, 5, 4])
    np.testing.assert_array_equal(sizes[1], [2, 1, 2])


def test_grouped_dot_per_group_equals_rows_times_their_expert():
    rng = np.random.default_rng(0)
    lhs = rng.normal(size=(2, 5, 3)).astype(np.float32)
    rhs = rng.normal(size=(2, 3, 4)).astype(np.float32)
    sizes = np.array([[2, 3], [4, 0]], np.int32)
    out = np.asarray(dropless.grouped_dot(jnp.asarray(lhs), jnp.asarray(rhs), jnp.asarray(sizes)))
    for g in range(2):
        experts = np.repeat(np.arange(2), sizes[g])
        for r in range(5):
            expected = lhs[g, r] @ rhs[experts[r]] if r < len(experts) else np.zeros(4)
            np.testing.assert_allclose(out[g, r], expected, rtol=1e-5, atol=1e-5)


def test_dropless_block_on_a_data_mesh_equals_one_device_without_gathering_tokens():
    # 8 groups of 4 tokens over 8 data shards (experts replicated): each device sorts
    # only its own group, so the partitioned step has no all-gather and no all-to-all.
    cfg = block_config(
        num_experts=4, dispatch="gather", dropless=True, max_group_size=4, num_groups_multiple=8
    )
    x, mask = inputs(b=8, length=4)
    block, params = init(cfg, x, mask)
    f = apply_fn(block, jit=False)

    def loss(params, x):
        y, _ = f(params, x, mask)
        return jnp.sum(jnp.sin(y))

    grad = jax.value_and_grad(loss, argnums=(0, 1))
    ref_value, ref_grads = jax.jit(grad)(params, x)
    mesh = partitioning.make_mesh(data=8, expert=1, model=1)
    with partitioning.axis_rules(mesh):
        xs = jax.device_put(x, partitioning.batch_sharding(mesh))
        compiled = jax.jit(grad).lower(params, xs).compile()
        value, grads = compiled(params, xs)
        hlo = compiled.as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo
    np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)

"""Dispatch and combine of the capacity-bounded MoE paths: tokens -> expert buffers -> tokens.

Shape legend: g group, s token within a group, e expert, c capacity slot, k a token's
choice, d embed. Both paths consume a ``flan_moe.model.routing.Routing`` and agree to
float32 rounding (``tests/model/test_dispatch.py``); the expert compute between them is
``MoeBlock._run_experts``. Pure functions: no params, no RNG.

* einsum (t5x / flaxformer): one-hot dispatch and combine tensors [g, s, e, c];
  ``gsd,gsec->gecd`` fills the buffers and ``gecd,gsec->gsd`` reads them back.
* gather: tokens move into the buffers by a gather with the router's precomputed
  ``slot_token`` indices, and back by gathering each token's k slots (no scatter-add).

Empty slots hold zeros; a choice that got no slot (dropped) contributes nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from flan_moe.model.routing import Routing

Array = jax.Array


def einsum_dispatch(xg: Array, routing: Routing, num_experts: int) -> tuple[Array, Array]:
    """Tokens [g, s, d] -> (buffers [g, e, c, d], combine weights [g, s, e, c] float32)."""
    c = routing.slot_token.shape[-1]
    expert_1h = jax.nn.one_hot(routing.expert_index, num_experts, dtype=jnp.float32)  # [g,s,k,e]
    slot_1h = jax.nn.one_hot(routing.slot, c, dtype=jnp.float32)  # [g,s,k,c]
    kept = routing.kept.astype(jnp.float32)
    dispatch = jnp.einsum("gsk,gske,gskc->gsec", kept, expert_1h, slot_1h)
    combine = jnp.einsum("gsk,gske,gskc->gsec", routing.weight, expert_1h, slot_1h)
    buffers = jnp.einsum("gsd,gsec->gecd", xg, dispatch.astype(xg.dtype))
    return buffers, combine


def einsum_combine(y: Array, combine: Array) -> Array:
    """Expert outputs [g, e, c, d] and combine weights [g, s, e, c] -> tokens [g, s, d]."""
    return jnp.einsum("gecd,gsec->gsd", y, combine.astype(y.dtype))


def gather_dispatch(xg: Array, routing: Routing) -> Array:
    """Tokens [g, s, d] -> buffers [g, e, c, d] by gathering ``routing.slot_token``."""
    g, _, d = xg.shape
    # Row s of the padded tokens is zeros: the source of every empty slot.
    padded = jnp.concatenate([xg, jnp.zeros((g, 1, d), xg.dtype)], axis=1)
    return jax.vmap(lambda rows, idx: rows[idx])(padded, routing.slot_token)


def gather_combine(y: Array, routing: Routing) -> Array:
    """Expert outputs [g, e, c, d] -> tokens [g, s, d]: each token's k kept slots, weighted."""
    g, e, c, d = y.shape
    flat = jnp.concatenate([y.reshape(g, e * c, d), jnp.zeros((g, 1, d), y.dtype)], 1)
    where = jnp.where(routing.kept, routing.expert_index * c + routing.slot, e * c)
    per_choice = jax.vmap(lambda rows, idx: rows[idx])(flat, where)  # [g, s, k, d]
    return jnp.einsum("gskd,gsk->gsd", per_choice, routing.weight.astype(y.dtype))

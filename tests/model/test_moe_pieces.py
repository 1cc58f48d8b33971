"""The MoE block's pieces one by one: grouping, router choice, dispatch/combine per path,
the expert MLPs, and the per-layer losses (``tests/model/test_moe.py`` tests the whole
block against a naive per-token loop)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_moe.model import dispatch, routing
from flan_moe.model.config import MoeConfig, get_config
from flan_moe.model.moe import POOLING_STATISTICS, ExpertMlp, layer_losses


def _probs(g=2, s=8, e=4, seed=0):
    logits = np.random.default_rng(seed).normal(size=(g, s, e)) * 2
    return jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)


def _routings(probs):
    """Capacity-bounded routings with drops and empty slots, one per router."""
    return {
        "top1": routing.tokens_choose(probs, k=1, capacity=2),
        "top2_bpr": routing.tokens_choose(probs, k=2, capacity=3, batch_prioritized=True),
        "experts_choose": routing.experts_choose(probs, capacity=3),
    }


# --- grouping ---------------------------------------------------------------------


def test_group_tokens_splits_the_flat_batch_in_row_major_order():
    x = jnp.arange(2 * 6 * 3, dtype=jnp.float32).reshape(2, 6, 3)
    mask = np.ones((2, 6), bool)
    mask[1, 4:] = False
    moe = MoeConfig(num_experts=2, max_group_size=4, group_count="max_group_size")
    xg, valid = routing.group_tokens(moe, x, jnp.asarray(mask))
    # 12 tokens, groups of at most 4: the smallest divisor >= 3 is 3 groups of 4.
    assert xg.shape == (3, 4, 3) and valid is None  # padding is routed unless asked
    np.testing.assert_array_equal(xg.reshape(12, 3), x.reshape(12, 3))

    moe = moe.replace(router_ignore_padding_tokens=True)
    _, valid = routing.group_tokens(moe, x, jnp.asarray(mask))
    np.testing.assert_array_equal(valid, mask.reshape(3, 4))
    assert routing.group_tokens(moe, x, None)[1] is None

    xg, valid = routing.group_tokens(moe.replace(route_per_sequence=True), x, jnp.asarray(mask))
    assert xg.shape == (2, 6, 3)
    np.testing.assert_array_equal(valid, mask)


# --- router choice ----------------------------------------------------------------


def _assert_same_routing(a, b):
    for name, left, right in zip(routing.Routing._fields, a, b):
        if left is None or right is None:
            assert left is None and right is None, name
        else:
            np.testing.assert_array_equal(left, right, err_msg=name)


def test_route_picks_the_router_k_and_capacity_of_the_layer():
    probs = _probs(s=8, e=4)
    moe = MoeConfig(
        num_experts=4,
        num_selected_experts=2,
        encoder_router="experts_choose",
        decoder_num_selected_experts=1,
        batch_prioritized_routing=True,
        capacity_factor_train=1.0,
        capacity_factor_eval=2.0,
        min_expert_capacity=1,
    )
    # Encoder: expert choice, eval capacity round(2.0 * 8 / 4) = 4.
    got = routing.route(moe, probs, None, decoder=False, train=False)
    _assert_same_routing(got, routing.experts_choose(probs, capacity=4))
    # Decoder: top-1 (decoder k), train capacity 2, no batch priority in the decoder.
    got = routing.route(moe, probs, None, decoder=True, train=True)
    _assert_same_routing(got, routing.tokens_choose(probs, k=1, capacity=2))
    # Tokens-choose encoder: k = 2 with batch priority.
    tc = moe.replace(encoder_router="tokens_choose")
    got = routing.route(tc, probs, None, decoder=False, train=True)
    want = routing.tokens_choose(probs, k=2, capacity=2, batch_prioritized=True)
    _assert_same_routing(got, want)
    # Dropless tokens-choose: no capacity, every valid choice kept.
    valid = jnp.asarray(np.arange(16).reshape(2, 8) % 5 != 0)
    got = routing.route(
        tc.replace(dropless=True, dispatch="gather"), probs, valid, decoder=False, train=True
    )
    assert got.slot_token is None
    np.testing.assert_array_equal(
        got.kept, np.broadcast_to(np.asarray(valid)[..., None], (2, 8, 2))
    )


# --- dispatch and combine ---------------------------------------------------------


def _naive_combine(x, r, transform):
    """sum over a token's kept choices of weight * transform(expert, token row)."""
    x, out = np.asarray(x), np.zeros(np.shape(x), np.float32)
    g, s, kk = r.expert_index.shape
    for gi in range(g):
        for si in range(s):
            for ki in range(kk):
                if r.kept[gi, si, ki]:
                    e = int(r.expert_index[gi, si, ki])
                    out[gi, si] += float(r.weight[gi, si, ki]) * transform(e, x[gi, si])
    return out


@pytest.mark.parametrize("router", ["top1", "top2_bpr", "experts_choose"])
def test_einsum_and_gather_dispatch_fill_the_same_buffers_and_combine_like_a_loop(router):
    probs = _probs()
    r = _routings(probs)[router]
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 5)), jnp.float32)
    buffers, combine = dispatch.einsum_dispatch(x, r, num_experts=4)
    gathered = dispatch.gather_dispatch(x, r)
    np.testing.assert_allclose(buffers, gathered, rtol=1e-6, atol=1e-6)
    # Each filled slot holds its token; empty slots are zeros.
    for gi, e, c in np.ndindex(*r.slot_token.shape):
        token = int(r.slot_token[gi, e, c])
        want = np.zeros(5) if token == 8 else np.asarray(x[gi, token])
        np.testing.assert_allclose(gathered[gi, e, c], want, rtol=1e-6, atol=1e-6)

    # An "expert" that scales by (e + 1): both combines equal the per-token loop.
    y = buffers * (jnp.arange(4, dtype=jnp.float32) + 1)[None, :, None, None]
    want = _naive_combine(x, r, lambda e, row: (e + 1) * row)
    np.testing.assert_allclose(dispatch.einsum_combine(y, combine), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dispatch.gather_combine(y, r), want, rtol=1e-5, atol=1e-5)


# --- experts ----------------------------------------------------------------------


@pytest.mark.parametrize("act", ["relu", "gated-gelu"])
def test_expert_mlp_buffers_and_ragged_rows_equal_per_expert_numpy(act):
    cfg = get_config("gs_tiny", dtype="float32", mlp_activation=act)
    experts = ExpertMlp(cfg, num_experts=3, d_ff=16, dropout_rate=0.0)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 2, 4, 32)), jnp.float32)
    params = nn.unbox(experts.init(jax.random.PRNGKey(0), x, enable_dropout=False))["params"]
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}

    def np_expert(e, rows):
        if act == "relu":
            h = np.maximum(rows @ p["wi"][e], 0)
        else:
            gate = rows @ p["wi_0"][e]
            gelu = 0.5 * gate * (1 + np.tanh(np.sqrt(2 / np.pi) * (gate + 0.044715 * gate**3)))
            h = gelu * (rows @ p["wi_1"][e])
        return h @ p["wo"][e]

    got = experts.apply({"params": params}, x, enable_dropout=False)  # [e, g, c, d]
    want = np.stack([np_expert(e, np.asarray(x[e], np.float64)) for e in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    # Ragged: rows sorted by expert, 2 + 0 + 3 rows, one trailing row of no expert.
    rows = jnp.asarray(np.random.default_rng(3).normal(size=(6, 32)), jnp.float32)
    sizes = jnp.asarray([2, 0, 3], jnp.int32)
    out = experts.apply(
        {"params": params}, rows, sizes, enable_dropout=False, method=ExpertMlp.ragged
    )
    r = np.asarray(rows, np.float64)
    want = np.concatenate([np_expert(0, r[:2]), np_expert(2, r[2:5]), np.zeros((1, 32))])
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)


# --- losses -----------------------------------------------------------------------


def test_layer_losses_per_router_and_pooling_statistics():
    probs = _probs()
    logits = jnp.log(probs) + 0.5  # logsumexp = 0.5 everywhere: z loss 0.25
    valid = jnp.asarray(np.arange(16).reshape(2, 8) % 7 != 3)
    moe = MoeConfig(num_experts=4, num_selected_experts=2, encoder_router="experts_choose")
    r = routing.tokens_choose(probs, k=2, capacity=3, valid=valid)
    losses = layer_losses(moe, logits, probs, r, valid, decoder=True)
    assert set(losses) == {"load_balancing_loss", "router_z_loss"}
    want = routing.load_balancing_loss(probs, r.expert_index, valid, normalization="flaxformer")
    np.testing.assert_allclose(losses["load_balancing_loss"], want, rtol=1e-6)
    np.testing.assert_allclose(losses["router_z_loss"], 0.25, rtol=1e-5)

    # Expert choice (the encoder here) is balanced by construction: 0.
    ec = layer_losses(moe, logits, probs, routing.experts_choose(probs, capacity=3), valid,
                      decoder=False)  # fmt: skip
    assert float(ec["load_balancing_loss"]) == 0.0 and set(ec) == set(losses)

    pooled = moe.replace(
        load_balancing_pooling="stack", router_loss_combination="sum_of_stack_means"
    )
    stats = layer_losses(pooled, logits, probs, r, valid, decoder=True)
    assert set(stats) == {"load_balancing_loss", "router_z_loss", *POOLING_STATISTICS}
    np.testing.assert_allclose(stats["load_balancing_token_counts"], [7, 7])
    np.testing.assert_allclose(
        routing.load_balancing_from_statistics(*(stats[n] for n in POOLING_STATISTICS)),
        losses["load_balancing_loss"],
        rtol=1e-6,
    )

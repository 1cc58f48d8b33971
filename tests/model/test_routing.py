"""Routers against naive per-token Python loops and hand-worked cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_moe.model import routing

# Jitted once per static configuration: much faster than op-by-op dispatch.
tokens_choose = jax.jit(
    routing.tokens_choose, static_argnames=("k", "capacity", "batch_prioritized", "renormalize")
)
experts_choose = jax.jit(routing.experts_choose, static_argnames=("capacity",))
routing_metrics = jax.jit(routing.routing_metrics, static_argnames=("tokens_choose_k",))

# --- naive references ------------------------------------------------------------


def naive_tokens_choose(probs, *, k, capacity, valid, batch_prioritized, renormalize):
    """Per-group, per-token loop: first choices claim slots before second choices."""
    g, s, e = probs.shape
    expert_index = np.zeros((g, s, k), np.int32)
    weight = np.zeros((g, s, k), np.float32)
    kept = np.zeros((g, s, k), bool)
    slot = np.full((g, s, k), -1, np.int32)
    slot_token = np.full((g, e, capacity), s, np.int32)
    for gi in range(g):
        choices, gates = [], []
        for t in range(s):
            ranked = sorted(range(e), key=lambda x, t=t: (-probs[gi, t, x], x))[:k]
            gate = np.array([probs[gi, t, x] for x in ranked], np.float32)
            if renormalize:
                gate = gate / gate.sum()
            choices.append(ranked)
            gates.append(gate)
            expert_index[gi, t] = ranked
        order = list(range(s))
        if batch_prioritized:
            order = sorted(range(s), key=lambda t: (-gates[t][0], t))
        fill = [0] * e
        for j in range(k):
            for t in order:
                if not valid[gi, t]:
                    continue
                x = choices[t][j]
                if fill[x] < capacity:
                    slot_token[gi, x, fill[x]] = t
                    slot[gi, t, j] = fill[x]
                    kept[gi, t, j] = True
                    weight[gi, t, j] = gates[t][j]
                    fill[x] += 1
    return expert_index, slot, weight, kept, slot_token


def naive_experts_choose(probs, *, capacity, valid):
    g, s, e = probs.shape
    kept = np.zeros((g, s, e), bool)
    slot = np.full((g, s, e), -1, np.int32)
    weight = np.zeros((g, s, e), np.float32)
    slot_token = np.full((g, e, capacity), s, np.int32)
    for gi in range(g):
        for x in range(e):
            candidates = [t for t in range(s) if valid[gi, t]]
            ranked = sorted(candidates, key=lambda t, x=x: (-probs[gi, t, x], t))[:capacity]
            for c, t in enumerate(ranked):
                slot_token[gi, x, c] = t
                kept[gi, t, x] = True
                slot[gi, t, x] = c
                weight[gi, t, x] = probs[gi, t, x]
    return slot, weight, kept, slot_token


def random_probs(rng, g, s, e, *, ties):
    if ties:  # few distinct logit values: many exact ties between experts and tokens
        logits = rng.integers(0, 3, (g, s, e)).astype(np.float32)
    else:
        logits = rng.normal(size=(g, s, e)).astype(np.float32)
    return np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))


def assert_routing_equal(got, ref_index, ref_slot, ref_weight, ref_kept, ref_slot_token):
    np.testing.assert_array_equal(np.asarray(got.kept), ref_kept)
    np.testing.assert_array_equal(np.asarray(got.expert_index)[ref_kept], ref_index[ref_kept])
    np.testing.assert_array_equal(np.asarray(got.slot)[ref_kept], ref_slot[ref_kept])
    np.testing.assert_allclose(np.asarray(got.weight), ref_weight, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(got.slot_token), ref_slot_token)


# --- tokens choose ---------------------------------------------------------------


@pytest.mark.parametrize(
    "k,capacity,ties,batch_prioritized,renormalize,padding",
    [
        (1, 3, False, False, False, False),
        (1, 2, True, False, False, True),
        (2, 3, True, False, False, False),
        (2, 2, False, True, False, True),
        (2, 4, True, True, True, False),
        (3, 2, False, False, True, True),
        (1, 16, False, True, False, False),  # nothing drops
    ],
)
def test_tokens_choose_matches_naive_loop(
    k, capacity, ties, batch_prioritized, renormalize, padding
):
    rng = np.random.default_rng(k * 100 + capacity)
    g, s, e = 3, 12, 5
    probs = random_probs(rng, g, s, e, ties=ties)
    valid = rng.random((g, s)) > 0.25 if padding else np.ones((g, s), bool)
    got = tokens_choose(
        jnp.asarray(probs),
        k=k,
        capacity=capacity,
        valid=jnp.asarray(valid) if padding else None,
        batch_prioritized=batch_prioritized,
        renormalize=renormalize,
    )
    ref = naive_tokens_choose(
        probs,
        k=k,
        capacity=capacity,
        valid=valid,
        batch_prioritized=batch_prioritized,
        renormalize=renormalize,
    )
    np.testing.assert_array_equal(np.asarray(got.expert_index), ref[0])  # chosen experts
    assert_routing_equal(got, *ref)
    if capacity < s:  # the cases with small capacity do overflow
        assert (~ref[3] & valid[..., None]).any()


def test_tokens_choose_dropless_keeps_every_valid_choice():
    rng = np.random.default_rng(7)
    probs = random_probs(rng, 2, 9, 4, ties=False)
    valid = rng.random((2, 9)) > 0.3
    got = tokens_choose(jnp.asarray(probs), k=2, capacity=None, valid=jnp.asarray(valid))
    assert got.slot_token is None
    np.testing.assert_array_equal(np.asarray(got.kept), np.repeat(valid[..., None], 2, -1))
    top2 = np.sort(probs, axis=-1)[..., ::-1][..., :2]
    np.testing.assert_allclose(np.asarray(got.weight), top2 * valid[..., None], rtol=1e-6)


# Hand-worked case: 6 tokens, 3 experts, capacity 2 (one group).
#            e0    e1    e2      top-1
#   t0  [ 0.70, 0.20, 0.10 ]    e0 (0.70)
#   t1  [ 0.60, 0.30, 0.10 ]    e0 (0.60)
#   t2  [ 0.75, 0.10, 0.15 ]    e0 (0.75)
#   t3  [ 0.10, 0.80, 0.10 ]    e1 (0.80)
#   t4  [ 0.20, 0.20, 0.60 ]    e2 (0.60)
#   t5  [ 0.30, 0.40, 0.30 ]    e1 (0.40)
# k=1, sequence order: e0 takes t0 (slot 0), t1 (slot 1); t2 is dropped (e0 full);
#   e1 takes t3, t5; e2 takes t4 and keeps one empty slot. Dropped: 1 of 6.
# k=1, batch-prioritized (order t3 .80, t2 .75, t0 .70, t1 .60, t4 .60, t5 .40; the
#   t1/t4 tie goes to the lower index): e0 takes t2 (slot 0), t0 (slot 1), drops t1.
# k=2, sequence order: first choices as in k=1; second choices t0->e1, t1->e1 (full,
#   dropped), t2->e2 (slot 1), t3->e0 (tie e0/e2 -> e0; full), t4->e0 (tie e0/e1 -> e0;
#   full), t5->e0 (tie e0/e2 -> e0; full). Kept second choices: only t2's.
HAND_PROBS = np.array(
    [
        [0.70, 0.20, 0.10],
        [0.60, 0.30, 0.10],
        [0.75, 0.10, 0.15],
        [0.10, 0.80, 0.10],
        [0.20, 0.20, 0.60],
        [0.30, 0.40, 0.30],
    ],
    np.float32,
)[None]


def test_hand_worked_top1():
    r = tokens_choose(jnp.asarray(HAND_PROBS), k=1, capacity=2)
    np.testing.assert_array_equal(np.asarray(r.expert_index)[0, :, 0], [0, 0, 0, 1, 2, 1])
    np.testing.assert_array_equal(np.asarray(r.kept)[0, :, 0], [1, 1, 0, 1, 1, 1])
    np.testing.assert_array_equal(np.asarray(r.slot)[0, [0, 1, 3, 4, 5], 0], [0, 1, 0, 0, 1])
    np.testing.assert_array_equal(np.asarray(r.slot_token)[0], [[0, 1], [3, 5], [4, 6]])
    np.testing.assert_allclose(np.asarray(r.weight)[0, :, 0], [0.7, 0.6, 0, 0.8, 0.6, 0.4])
    m = routing_metrics(jnp.asarray(HAND_PROBS), r, None, tokens_choose_k=1)
    np.testing.assert_allclose(float(m["fraction_dropped"]), 1 / 6, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(m["expert_usage"]), [2 / 5, 2 / 5, 1 / 5], rtol=1e-6)
    np.testing.assert_allclose(
        float(m["router_confidence"]), np.mean([0.7, 0.6, 0.75, 0.8, 0.6, 0.4]), rtol=1e-6
    )


def test_hand_worked_batch_prioritized():
    r = tokens_choose(jnp.asarray(HAND_PROBS), k=1, capacity=2, batch_prioritized=True)
    np.testing.assert_array_equal(np.asarray(r.kept)[0, :, 0], [1, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(np.asarray(r.slot_token)[0], [[2, 0], [3, 5], [4, 6]])


def test_hand_worked_top2_first_choices_first():
    r = tokens_choose(jnp.asarray(HAND_PROBS), k=2, capacity=2)
    np.testing.assert_array_equal(
        np.asarray(r.expert_index)[0], [[0, 1], [0, 1], [0, 2], [1, 0], [2, 0], [1, 0]]
    )
    np.testing.assert_array_equal(
        np.asarray(r.kept)[0], [[1, 0], [1, 0], [0, 1], [1, 0], [1, 0], [1, 0]]
    )
    np.testing.assert_array_equal(np.asarray(r.slot_token)[0], [[0, 1], [3, 5], [4, 2]])


def test_renormalized_top2_weights_sum_to_one():
    r = tokens_choose(jnp.asarray(HAND_PROBS), k=2, capacity=6, renormalize=True)
    np.testing.assert_allclose(np.asarray(r.weight)[0, 0], [0.7 / 0.9, 0.2 / 0.9], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(r.weight).sum(-1), 1.0, rtol=1e-6)


# --- experts choose --------------------------------------------------------------


@pytest.mark.parametrize(
    "capacity,ties,padding", [(3, False, False), (4, True, True), (7, False, True)]
)
def test_experts_choose_matches_naive_loop(capacity, ties, padding):
    rng = np.random.default_rng(capacity)
    g, s, e = 2, 10, 4
    probs = random_probs(rng, g, s, e, ties=ties)
    valid = rng.random((g, s)) > 0.3 if padding else np.ones((g, s), bool)
    got = experts_choose(
        jnp.asarray(probs), capacity=capacity, valid=jnp.asarray(valid) if padding else None
    )
    ref_slot, ref_weight, ref_kept, ref_slot_token = naive_experts_choose(
        probs, capacity=capacity, valid=valid
    )
    ref_index = np.broadcast_to(np.arange(e), (g, s, e))
    assert_routing_equal(got, ref_index, ref_slot, ref_weight, ref_kept, ref_slot_token)


def test_experts_choose_hand_case():
    # capacity 2: e0 takes t2 (.75), t0 (.70); e1 takes t3 (.80), t5 (.40);
    # e2 takes t4 (.60), t5 (.30) -- t5 goes to two experts, t1 to none.
    r = experts_choose(jnp.asarray(HAND_PROBS), capacity=2)
    np.testing.assert_array_equal(np.asarray(r.slot_token)[0], [[2, 0], [3, 5], [4, 5]])
    m = routing_metrics(jnp.asarray(HAND_PROBS), r, None, tokens_choose_k=None)
    np.testing.assert_allclose(float(m["fraction_dropped"]), 1 / 6, rtol=1e-6)


# --- capacity and groups ---------------------------------------------------------


def test_expert_capacity_formula():
    kw = dict(num_selected=1, min_capacity=4)
    assert (
        routing.expert_capacity(tokens_per_group=4096, num_experts=8, capacity_factor=1.25, **kw)
        == 640
    )
    assert (
        routing.expert_capacity(tokens_per_group=4096, num_experts=8, capacity_factor=2.0, **kw)
        == 1024
    )
    # k scales the capacity; the minimum applies; never more than the group's tokens.
    assert (
        routing.expert_capacity(
            tokens_per_group=100,
            num_experts=32,
            num_selected=2,
            capacity_factor=1.25,
            min_capacity=4,
        )
        == 8
    )  # round(7.8125)
    assert (
        routing.expert_capacity(tokens_per_group=16, num_experts=8, capacity_factor=1.0, **kw) == 4
    )
    assert (
        routing.expert_capacity(tokens_per_group=3, num_experts=8, capacity_factor=1.0, **kw) == 3
    )
    assert (
        routing.expert_capacity(
            tokens_per_group=6, num_experts=3, num_selected=1, capacity_factor=1.0, min_capacity=0
        )
        == 2
    )
    # A fixed capacity (Hugging Face's expert_capacity) via factor 0.
    assert (
        routing.expert_capacity(
            tokens_per_group=64, num_experts=8, num_selected=1, capacity_factor=0.0, min_capacity=5
        )
        == 5
    )


def test_num_groups():
    assert routing.num_groups(num_tokens=32 * 512, max_group_size=4096) == 4
    assert routing.num_groups(num_tokens=32 * 512, max_group_size=4096, multiple=8) == 8
    assert routing.num_groups(num_tokens=24, max_group_size=10) == 3
    assert routing.num_groups(num_tokens=7, max_group_size=4, multiple=2) == 7  # 7 is prime
    assert routing.num_groups(num_tokens=4, max_group_size=4096, multiple=8) == 1  # decoding
    for tokens, size, mult in [(96, 10, 4), (60, 7, 3), (1, 1, 1)]:
        g = routing.num_groups(num_tokens=tokens, max_group_size=size, multiple=mult)
        assert tokens % g == 0 and tokens // g <= size and g >= math.ceil(tokens / size)


# --- losses ----------------------------------------------------------------------


def _balanced_probs(e, per_expert, peak):
    """Token t prefers expert t % e with probability ``peak``; rows are permutations."""
    rows = []
    for t in range(e * per_expert):
        p = np.full(e, (1 - peak) / (e - 1), np.float32)
        p[t % e] = peak
        rows.append(p)
    return np.stack(rows)[None]


def test_load_balancing_loss_uniform_is_one_and_grows_with_imbalance():
    e = 4
    probs = _balanced_probs(e, 3, 0.7)
    top1 = np.argmax(probs, -1)[..., None]
    np.testing.assert_allclose(
        float(routing.load_balancing_loss(jnp.asarray(probs), jnp.asarray(top1))), 1.0, rtol=1e-6
    )
    # k=2 with balanced first and second choices is also 1.0 (f normalised by k).
    top2 = np.argsort(-probs, -1, kind="stable")[..., :2]
    np.testing.assert_allclose(
        float(routing.load_balancing_loss(jnp.asarray(probs), jnp.asarray(top2))), 1.0, rtol=1e-6
    )
    # Send a growing share of tokens to expert 0: the loss grows monotonically.
    losses = []
    for n_skewed in range(0, 12, 3):
        p = probs.copy()
        p[0, :n_skewed] = np.array([0.7, 0.1, 0.1, 0.1], np.float32)
        idx = np.argmax(p, -1)[..., None]
        losses.append(float(routing.load_balancing_loss(jnp.asarray(p), jnp.asarray(idx))))
    assert losses[0] == pytest.approx(1.0, rel=1e-6)
    assert all(b > a for a, b in zip(losses, losses[1:]))


def test_load_balancing_loss_against_formula_with_padding():
    rng = np.random.default_rng(3)
    g, s, e, k = 3, 8, 5, 2
    probs = random_probs(rng, g, s, e, ties=False)
    idx = np.argsort(-probs, -1, kind="stable")[..., :k]
    valid = rng.random((g, s)) > 0.3
    ref = 0.0
    for gi in range(g):
        toks = [t for t in range(s) if valid[gi, t]]
        f = np.zeros(e)
        for t in toks:
            for j in range(k):
                f[idx[gi, t, j]] += 1.0 / (k * len(toks))
        p = probs[gi, toks].mean(0)
        ref += e * float(np.sum(f * p)) / g
    got = routing.load_balancing_loss(jnp.asarray(probs), jnp.asarray(idx), jnp.asarray(valid))
    np.testing.assert_allclose(float(got), ref, rtol=1e-5)


def test_router_z_loss_against_formula():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2, 6, 4)).astype(np.float32) * 3
    ref = np.mean(np.log(np.sum(np.exp(logits.astype(np.float64)), -1)) ** 2)
    np.testing.assert_allclose(float(routing.router_z_loss(jnp.asarray(logits))), ref, rtol=1e-5)
    valid = np.array([[1, 1, 0, 1, 0, 1], [0, 1, 1, 1, 1, 1]], bool)
    z = np.log(np.sum(np.exp(logits.astype(np.float64)), -1)) ** 2
    np.testing.assert_allclose(
        float(routing.router_z_loss(jnp.asarray(logits), jnp.asarray(valid))),
        z[valid].mean(),
        rtol=1e-5,
    )


def test_router_entropy_metric():
    probs = np.full((1, 4, 4), 0.25, np.float32)
    r = tokens_choose(jnp.asarray(probs), k=1, capacity=4)
    m = routing_metrics(jnp.asarray(probs), r, None, tokens_choose_k=1)
    np.testing.assert_allclose(float(m["router_entropy"]), np.log(4), rtol=1e-6)
    np.testing.assert_allclose(float(m["router_confidence"]), 0.25, rtol=1e-6)
    # All four tokens tie and pick expert 0, which has room for all of them.
    np.testing.assert_allclose(np.asarray(m["expert_usage"]), [1, 0, 0, 0])


def test_pooled_load_balancing_equals_loss_of_concatenated_layers():
    """Adding two layers' statistics = the loss over both layers' tokens (HF's pooling)."""
    rng = np.random.default_rng(7)
    g, s, e = 3, 5, 4
    probs = [jax.nn.softmax(jnp.asarray(rng.normal(size=(g, s, e)), jnp.float32)) for _ in "ab"]
    index = [jnp.asarray(rng.integers(0, e, (g, s, 1))) for _ in "ab"]
    valid = [jnp.asarray(rng.random((g, s)) > 0.2) for _ in "ab"]
    stats = [routing.load_balancing_statistics(p, i, v) for p, i, v in zip(probs, index, valid)]
    pooled = routing.load_balancing_from_statistics(*(a + b for a, b in zip(*stats)))
    concatenated = routing.load_balancing_loss(
        jnp.concatenate(probs, axis=1), jnp.concatenate(index, axis=1), jnp.concatenate(valid, 1)
    )
    np.testing.assert_allclose(float(pooled), float(concatenated), rtol=1e-6)
    mean_of_layers = np.mean(
        [float(routing.load_balancing_loss(*a)) for a in zip(probs, index, valid)]
    )
    assert abs(float(pooled) - mean_of_layers) > 1e-4  # pooling is a different quantity

"""Routers of sparse MoE layers: which expert buffer slot each token goes to, and its weight.

Einsum / shape legend:
  g group (tokens are routed in independent groups), s token within a group,
  e expert, c capacity slot of an expert buffer, k a token's choice (1..k), d embed.

All routing math runs in float32 whatever the compute dtype ("selective precision",
Switch Transformer section 2.4).

Two routers produce the same ``Routing`` record, so both dispatch paths in
``flan_moe.model.moe`` (one-hot einsums, and gathers with precomputed indices) and the
dropless path consume any router:

* ``tokens_choose``: each token picks its top-k experts. Slots are claimed in priority
  order: all first choices before any second choice; within one choice level tokens
  claim in sequence order, or, with batch-prioritized routing (encoder only), in order
  of decreasing top-1 probability. A choice beyond an expert's capacity is dropped.
* ``experts_choose`` (encoder only): each expert takes its ``capacity`` highest-
  probability tokens of the group; a token may be taken by several experts or none.

Ties are broken towards the lower index everywhere (``jax.lax.top_k`` and stable
sorts): between experts with equal probability, and between tokens with equal
priority.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from flan_moe.model.config import MoeConfig

Array = jax.Array


class Routing(NamedTuple):
    """Where a group's tokens go. ``K`` = k for tokens-choose, = e for expert choice.

    expert_index [g, s, K] int32: the expert of each of a token's K candidate assignments.
    slot         [g, s, K] int32: position in that expert's buffer (meaningful where kept).
    weight       [g, s, K] float32: combine weight (0 where not kept).
    kept         [g, s, K] bool: the assignment owns a buffer slot (or, dropless, is routed).
    slot_token   [g, e, c] int32: the token filling each buffer slot; ``s`` = empty slot.
                 None for dropless routing (no buffers).
    """

    expert_index: Array
    slot: Array
    weight: Array
    kept: Array
    slot_token: Array | None


def expert_capacity(
    *,
    tokens_per_group: int,
    num_experts: int,
    num_selected: int,
    capacity_factor: float,
    min_capacity: int,
) -> int:
    """Buffer slots per expert and group.

    capacity = min(max(round(capacity_factor * k * tokens_per_group / E), min_capacity),
                   tokens_per_group)

    ``num_selected`` is the k of this formula: flaxformer passes 1 whatever the router's
    k (``capacity_for`` picks it from ``MoeConfig.capacity_formula``).

    Worked example (Switch-Base-8 training): groups of 4096 tokens, E = 8, k = 1,
    capacity factor 1.25: round(1.25 * 1 * 4096 / 8) = 640 slots per expert, so 8 * 640
    = 5120 slots for 4096 tokens. If 700 tokens pick expert 3, the first 640 of them
    (in claim order) are processed and 60 are dropped: they pass through the layer's
    residual connection only. Small case: 6 tokens, 3 experts, k = 1, factor 1.0 and
    min_capacity 0 give round(6 / 3) = 2 slots; see ``tests/model/test_routing.py``.
    The upper bound ``tokens_per_group`` never changes routing (a token takes at most one
    slot per expert) and keeps buffers small when decoding one token at a time.
    Python's ``round`` is used (halves go to the even integer), as t5x/flaxformer do.
    """
    capacity = round(capacity_factor * num_selected * tokens_per_group / num_experts)
    return int(min(max(capacity, min_capacity), tokens_per_group))


def flaxformer_num_groups(
    *, num_tokens: int, max_group_size: int, num_experts: int, num_expert_replicas: int = 1
) -> int | None:
    """flaxformer's group count (``moe_layers._num_groups``), or None where it would pad.

    The smallest count >= max(num_tokens // max_group_size, E * replicas) (floor, as
    flaxformer) that divides num_tokens and is a multiple of E * replicas. When
    num_tokens is not a multiple of E * replicas flaxformer first pads the batch with
    zero tokens (``_maybe_pad``); we return None and the caller uses ``num_groups``.
    Example (gs_base training, 32 x 2048 encoder tokens, E = 32): 65536 // 4096 = 16 <
    32, so 32 groups of 2048 tokens.
    """
    if num_tokens < 1:
        raise ValueError(f"cannot route {num_tokens} tokens")
    total = num_experts * num_expert_replicas
    if num_tokens % total:
        return None
    g = max(num_tokens // max_group_size, total)
    while g < num_tokens and (num_tokens % g or g % total):
        g += 1
    return g


def group_count(moe: MoeConfig, num_tokens: int) -> int:
    """The number of routing groups for ``num_tokens`` tokens under ``moe.group_count``."""
    if moe.group_count == "flaxformer":
        g = flaxformer_num_groups(
            num_tokens=num_tokens,
            max_group_size=moe.max_group_size,
            num_experts=moe.num_experts,
            num_expert_replicas=moe.num_expert_replicas,
        )
        if g is not None:
            return g
    return num_groups(
        num_tokens=num_tokens, max_group_size=moe.max_group_size, multiple=moe.num_groups_multiple
    )


def capacity_for(moe: MoeConfig, *, tokens_per_group: int, decoder: bool, train: bool) -> int:
    """Buffer slots per expert for a layer of ``moe`` (``capacity_formula``, router type)."""
    k = 1
    if moe.capacity_formula == "times_k" and moe.router_type(decoder=decoder) == "tokens_choose":
        k = moe.num_selected(decoder=decoder)
    return expert_capacity(
        tokens_per_group=tokens_per_group,
        num_experts=moe.num_experts,
        num_selected=k,
        capacity_factor=moe.capacity_factor(train=train),
        min_capacity=moe.min_expert_capacity,
    )


def num_groups(*, num_tokens: int, max_group_size: int, multiple: int = 1) -> int:
    """How many equal groups to split ``num_tokens`` tokens into.

    The smallest count >= ceil(num_tokens / max_group_size) that divides num_tokens,
    preferring multiples of ``multiple`` (so groups shard evenly over devices); when
    num_tokens is not a multiple of ``multiple`` (e.g. a tiny decoding batch) any
    divisor is accepted.
    """
    if num_tokens < 1:
        raise ValueError(f"cannot route {num_tokens} tokens")
    least = max(1, math.ceil(num_tokens / max_group_size))
    if num_tokens % multiple == 0:
        g = math.ceil(least / multiple) * multiple
        while g <= num_tokens:
            if num_tokens % g == 0:
                return g
            g += multiple
    g = least
    while num_tokens % g:
        g += 1
    return g


def group_tokens(
    moe: MoeConfig, x: Array, padding_mask: Array | None
) -> tuple[Array, Array | None]:
    """Tokens [b, l, d] -> routing groups [g, s, d] and their validity [g, s] (bool).

    One group per sequence with ``route_per_sequence``, else ``group_count`` groups of
    the flattened batch (in row-major order, so a group never splits a token). The
    validity is None (all tokens routed) unless ``router_ignore_padding_tokens`` is on
    and a ``padding_mask`` [b, l] is given.
    """
    b, length, d = x.shape
    g = b if moe.route_per_sequence else group_count(moe, b * length)
    s = b * length // g
    valid = None
    if moe.router_ignore_padding_tokens and padding_mask is not None:
        valid = padding_mask.reshape(g, s).astype(bool)
    return x.reshape(g, s, d), valid


def route(
    moe: MoeConfig, probs: Array, valid: Array | None, *, decoder: bool, train: bool
) -> Routing:
    """The router choice of a layer: expert choice or top-k tokens-choose for ``probs``
    [g, s, e], with the capacity of ``capacity_for`` (none for dropless tokens-choose)."""
    router_type = moe.router_type(decoder=decoder)
    capacity = None
    if router_type == "experts_choose" or not moe.dropless:
        capacity = capacity_for(moe, tokens_per_group=probs.shape[1], decoder=decoder, train=train)
    if router_type == "experts_choose":
        return experts_choose(probs, capacity=capacity, valid=valid)
    return tokens_choose(
        probs,
        k=moe.num_selected(decoder=decoder),
        capacity=capacity,
        valid=valid,
        batch_prioritized=moe.batch_prioritized_routing and not decoder,
        renormalize=moe.renormalize_top_k,
    )


class RouterWeights(nn.Module):
    """The router's linear map: float32 logits [g, s, e] from token representations.

    Kernel [d, e] initialised normal(0.02) (logical axes ('embed', 'unmodeled')), and
    an optional bias [e]. Jitter noise (training only) multiplies the router *inputs*
    by uniform(1 - eps, 1 + eps) noise drawn from the 'dropout' RNG stream.
    """

    num_experts: int
    use_bias: bool = False
    jitter_noise: float = 0.0
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: Array, *, enable_dropout: bool) -> Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", "unmodeled")),
            (x.shape[-1], self.num_experts),
            jnp.dtype(self.param_dtype),
        )
        x = x.astype(jnp.float32)
        if enable_dropout and self.jitter_noise > 0:
            noise = jax.random.uniform(
                self.make_rng("dropout"),
                x.shape,
                jnp.float32,
                1.0 - self.jitter_noise,
                1.0 + self.jitter_noise,
            )
            x = x * noise
        logits = jnp.einsum("gsd,de->gse", x, kernel.astype(jnp.float32))
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, ("unmodeled",)),
                (self.num_experts,),
                jnp.dtype(self.param_dtype),
            )
            logits = logits + bias.astype(jnp.float32)
        return logits


def _inverse_permutation(perm: Array) -> Array:
    """inv[..., perm[..., i]] = i along the last axis.

    An argsort, not a scatter: a sort along the last axis keeps the group axis
    sharded, where a scatter with explicit row indices makes the partitioner
    all-gather the routing arrays (every device would then redo every group)."""
    return jnp.argsort(perm, axis=-1).astype(perm.dtype)


def _top_k(probs: Array, k: int) -> tuple[Array, Array]:
    """``jax.lax.top_k`` over the last axis as k argmax passes (ties -> lower index).

    Same values as ``lax.top_k``, but argmax partitions along the group axis where
    XLA's TopK op makes the partitioner all-gather the router probabilities."""
    gates, experts, remaining = [], [], probs
    for _ in range(k):
        index = jnp.argmax(remaining, axis=-1).astype(jnp.int32)
        gates.append(jnp.take_along_axis(probs, index[..., None], axis=-1)[..., 0])
        experts.append(index)
        taken = jax.nn.one_hot(index, probs.shape[-1], dtype=bool)
        remaining = jnp.where(taken, -jnp.inf, remaining)
    return jnp.stack(gates, axis=-1), jnp.stack(experts, axis=-1)


def tokens_choose(
    probs: Array,
    *,
    k: int,
    capacity: int | None,
    valid: Array | None = None,
    batch_prioritized: bool = False,
    renormalize: bool = False,
) -> Routing:
    """Top-k tokens-choose routing of probabilities [g, s, e].

    ``capacity=None`` routes without buffers (dropless): every valid choice is kept.
    ``valid`` [g, s] (bool) leaves padding tokens unrouted: they claim no slot, get
    weight 0 and so contribute nothing (the residual carries them).
    Slot positions come from one stable sort per group of the k*s claims by expert
    (claims listed in priority order), which also yields ``slot_token``.
    """
    g, s, e = probs.shape
    gates, experts = _top_k(probs, k)  # [g, s, k], ties -> lower expert id
    if renormalize:
        gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
    if valid is None:
        valid = jnp.ones((g, s), dtype=bool)

    if capacity is None:
        kept = jnp.broadcast_to(valid[..., None], (g, s, k))
        return Routing(experts, jnp.zeros_like(experts), gates * kept, kept, None)

    # Claim order: choice level first, then token priority within the level.
    if batch_prioritized:
        order = jnp.argsort(-gates[..., 0], axis=-1, stable=True).astype(jnp.int32)  # [g, s]
    else:
        order = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (g, s))
    experts_in_order = jnp.take_along_axis(experts, order[..., None], axis=1)  # [g, s, k]
    valid_in_order = jnp.take_along_axis(valid, order, axis=1)  # [g, s]
    # claims[g, j * s + r] = expert that the r-th priority token asks for as choice j;
    # padding asks for the sentinel expert e, which sorts last and owns no slots.
    claims = jnp.where(valid_in_order[:, None, :], experts_in_order.transpose(0, 2, 1), e)
    claims = claims.reshape(g, k * s)
    perm = jnp.argsort(claims, axis=-1, stable=True).astype(jnp.int32)  # claims by expert
    sorted_experts = jnp.take_along_axis(claims, perm, axis=-1)
    # start[g, x] = index in the sorted claims where expert x's claims begin
    # (exclusive cumulative count of the claims per expert).
    # (a batched bincount per group: vmapped, so the group axis stays sharded)
    counts = jax.vmap(lambda c: jnp.bincount(c, length=e + 1))(claims).astype(jnp.int32)
    start = jnp.cumsum(counts, axis=-1) - counts  # [g, e + 1]
    rank = jnp.arange(k * s, dtype=jnp.int32) - jnp.take_along_axis(start, sorted_experts, -1)
    position = jnp.take_along_axis(rank, _inverse_permutation(perm), axis=-1)  # [g, k*s]

    # Back from claim order to [g, s, k] in token order.
    position = position.reshape(g, k, s).transpose(0, 2, 1)  # [g, r, k]
    slot = jnp.take_along_axis(position, _inverse_permutation(order)[..., None], axis=1)
    kept = valid[..., None] & (slot < capacity)

    # slot_token[g, x, c]: the c-th claim of expert x, if it exists and fits.
    c = jnp.arange(capacity, dtype=jnp.int32)
    index = start[:, :e, None] + c  # [g, e, c] index into the sorted claims
    count = (start[:, 1:] - start[:, :-1])[..., None]  # [g, e, 1]
    claim_id = jnp.take_along_axis(perm, jnp.minimum(index, k * s - 1).reshape(g, -1), axis=-1)
    token = jnp.take_along_axis(order, claim_id % s, axis=-1).reshape(g, e, capacity)
    slot_token = jnp.where(c < count, token, s).astype(jnp.int32)
    return Routing(experts, slot.astype(jnp.int32), gates * kept, kept, slot_token)


def experts_choose(probs: Array, *, capacity: int, valid: Array | None = None) -> Routing:
    """Expert-choice routing (Zhou et al. 2022) of probabilities [g, s, e].

    Each expert takes the ``capacity`` tokens of the group it gives the highest
    probability (ties -> lower token index); padding tokens are never taken. The
    combine weight of a taken token is its router probability for that expert.
    """
    g, s, e = probs.shape
    if valid is None:
        valid = jnp.ones((g, s), dtype=bool)
    if capacity > s:
        raise ValueError(f"expert-choice capacity {capacity} exceeds the group size {s}")
    scores = jnp.where(valid[..., None], probs, -1.0).transpose(0, 2, 1)  # [g, e, s]
    _, chosen = jax.lax.top_k(scores, capacity)  # [g, e, c]
    chosen = chosen.astype(jnp.int32)
    taken = jnp.take_along_axis(valid[:, None, :], chosen, axis=-1)  # padding -> not taken
    slot_token = jnp.where(taken, chosen, s)
    # Token-major view: K = e candidate assignments per token, one per expert.
    gi = jnp.arange(g)[:, None, None]
    ei = jnp.arange(e)[None, :, None]
    ci = jnp.broadcast_to(jnp.arange(capacity, dtype=jnp.int32), (g, e, capacity))
    kept = jnp.zeros((g, s + 1, e), bool).at[gi, slot_token, ei].set(True)[:, :s]
    slot = jnp.zeros((g, s + 1, e), jnp.int32).at[gi, slot_token, ei].set(ci)[:, :s]
    expert_index = jnp.broadcast_to(jnp.arange(e, dtype=jnp.int32), (g, s, e))
    return Routing(expert_index, slot, probs * kept, kept, slot_token)


# --- Losses -----------------------------------------------------------------------


def _token_weights(shape: tuple[int, int], valid: Array | None) -> Array:
    return jnp.ones(shape, jnp.float32) if valid is None else valid.astype(jnp.float32)


def load_balancing_statistics(
    probs: Array,
    expert_index: Array,
    valid: Array | None = None,
    *,
    normalization: str = "per_choice",
) -> tuple[Array, Array, Array]:
    """Per group: summed expert choices [g, e] (divided by k for "per_choice"), summed
    router probabilities [g, e] and the number of (valid) tokens [g]. Sums, so layers
    can be pooled by adding."""
    if normalization not in ("flaxformer", "per_choice"):
        raise ValueError(
            f"load-balancing normalization must be 'flaxformer' or 'per_choice', "
            f"got {normalization!r}"
        )
    g, s, e = probs.shape
    k = expert_index.shape[-1] if normalization == "per_choice" else 1
    w = _token_weights((g, s), valid)
    chosen = jnp.sum(jax.nn.one_hot(expert_index, e, dtype=jnp.float32), axis=-2)  # [g, s, e]
    choices = jnp.einsum("gse,gs->ge", chosen, w) / k
    prob_sums = jnp.einsum("gse,gs->ge", probs.astype(jnp.float32), w)
    return choices, prob_sums, jnp.sum(w, axis=-1)


def load_balancing_from_statistics(choices: Array, prob_sums: Array, counts: Array) -> Array:
    """E * sum_e f_e * P_e averaged over groups, from (possibly pooled) statistics."""
    count = jnp.maximum(counts, 1.0)[:, None]
    f, p = choices / count, prob_sums / count
    return jnp.mean(choices.shape[-1] * jnp.sum(f * p, axis=-1))


def load_balancing_loss(
    probs: Array,
    expert_index: Array,
    valid: Array | None = None,
    *,
    normalization: str = "per_choice",
) -> Array:
    """Switch / GShard auxiliary loss: E * sum_e f_e * P_e, averaged over groups.

    f_e: share of the group's tokens (before capacity dropping) that have expert e among
    their top-k choices; P_e: mean router probability of e. ``normalization``:
    "flaxformer" keeps sum_e f_e = k (flaxformer routing._load_balancing_loss: uniform
    routing gives k); "per_choice" divides f by k so sum_e f_e = 1 (uniform gives 1.0;
    Hugging Face, DeepSeekMoE). For k = 1 both are Switch's loss.
    Padding tokens (``valid`` False) are left out of both means.
    """
    stats = load_balancing_statistics(probs, expert_index, valid, normalization=normalization)
    return load_balancing_from_statistics(*stats)


def router_z_loss(logits: Array, valid: Array | None = None) -> Array:
    """ST-MoE router z-loss: mean over tokens of logsumexp(logits)^2 (padding left out)."""
    g, s, _ = logits.shape
    w = _token_weights((g, s), valid)
    z = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    return jnp.sum(jnp.square(z) * w) / jnp.maximum(jnp.sum(w), 1.0)


# --- Metrics ----------------------------------------------------------------------


def routing_metrics(
    probs: Array, routing: Routing, valid: Array | None, *, tokens_choose_k: int | None
) -> dict[str, Array]:
    """Statistics of one layer's routing (float32, padding left out).

    fraction_dropped: tokens-choose: share of valid token choices that got no slot;
      expert choice (``tokens_choose_k=None``): share of valid tokens no expert took.
    expert_usage [e]: share of the processed (kept) assignments each expert received.
    router_confidence: mean top-1 router probability. router_entropy: mean entropy of
    the router distribution (nats).
    """
    g, s, e = probs.shape
    w = _token_weights((g, s), valid)
    n = jnp.maximum(jnp.sum(w), 1.0)
    kept = routing.kept.astype(jnp.float32) * w[..., None]
    # Counts are integers (exact in float32): a share of 0 is exactly 0.
    if tokens_choose_k is not None:
        dropped = (tokens_choose_k * n - jnp.sum(kept)) / (tokens_choose_k * n)
    else:
        dropped = (n - jnp.sum(jnp.max(kept, axis=-1))) / n
    per_expert = jnp.einsum("gsk,gske->e", kept, jax.nn.one_hot(routing.expert_index, e))
    usage = per_expert / jnp.maximum(jnp.sum(per_expert), 1.0)
    p = probs.astype(jnp.float32)
    confidence = jnp.sum(jnp.max(p, axis=-1) * w) / n
    entropy = -jnp.sum(jnp.sum(p * jnp.log(jnp.maximum(p, 1e-30)), axis=-1) * w) / n
    return {
        "fraction_dropped": dropped,
        "expert_usage": usage,
        "router_confidence": confidence,
        "router_entropy": entropy,
    }

"""Autoregressive decoding over a KV cache: greedy, temperature / top-k sampling, beam search.

The search functions know nothing about the model. They drive a *step function*::

    step_fn(tokens: int32[n, 1], cache) -> (log_probs: float32[n, V], cache)

that feeds one token per row and returns the log-probabilities of the next token, threading an
opaque cache pytree. `model_step_fn` builds one from the ``EncoderDecoder`` (its KV cache);
tests plug in hand-made step functions to check the searches against brute force.

Shape legend: b = batch, k = beams, t = decode step / max decode length, v = vocabulary,
n = rows fed to the step function (b for sampling, b * k for beam search).

Conventions (T5): the decoder starts from ``start_id`` (0 = pad, which is also BOS) and a row
stops at ``eos_id``; tokens after a row's EOS are ``pad_id``. The loops exit early once every
row has finished, so a batch of short answers costs a few steps, not ``max_decode_len``.

Beam search keeps, per example, the k best *alive* (unfinished) hypotheses and the k best
*finished* ones. At each step it scores all k * v extensions, takes the top 2k (so at least k do
not end in EOS: each beam has one EOS extension), moves EOS-ending candidates that rank in the
top k into the finished pool (scored by ``log_prob / length_penalty(length)``), and keeps the
best k non-EOS candidates alive. A hypothesis that reaches ``max_decode_len`` without EOS
counts as finished at that length. Length penalty (GNMT, Wu et al. 2016):
``((5 + length) / 6) ** alpha``, length counting the EOS; ``alpha = 0`` ranks by raw
log-probability, and then beam size 1 is exactly greedy decoding. The search stops early
for an example when no alive hypothesis can still beat its worst finished one (a valid bound
for ``alpha >= 0``, since log-probabilities only fall as a hypothesis grows).

Everything here is traceable: callers wrap it in ``jax.jit`` (see ``make_generate_fn``, compiled
once per input shape; pad batches into a few shape buckets with `bucket_size`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Cache = Any
StepFn = Callable[[Array, Cache], tuple[Array, Cache]]
Strategy = Literal["greedy", "sample", "beam"]

# A large finite negative number: -inf would turn into NaN in (-inf) - (-inf).
NEG_INF = -1.0e9
# The model's sparse layers write these collections; decoding lets them be written and drops them.
_MOE_COLLECTIONS = ("moe_losses", "moe_metrics")


class DecodeOutput(NamedTuple):
    """Sampled / greedy output: tokens [b, t] (pad after EOS), summed log-prob [b] of the
    emitted tokens (EOS included), and lengths [b] (tokens up to and including EOS)."""

    tokens: Array
    log_probs: Array
    lengths: Array


class BeamOutput(NamedTuple):
    """Beam search output, best first: tokens [b, k, t], length-penalised scores [b, k],
    raw summed log-probs [b, k]."""

    tokens: Array
    scores: Array
    log_probs: Array


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How to generate. ``strategy``: "greedy", "sample" (temperature / top-k) or "beam".

    ``max_decode_len`` counts every emitted token, EOS included. ``top_k = 0`` samples from the
    whole vocabulary. ``alpha`` is the beam search length-penalty exponent (0.6 as T5/GNMT).
    """

    strategy: Strategy = "greedy"
    max_decode_len: int = 64
    temperature: float = 1.0
    top_k: int = 0
    beam_size: int = 4
    alpha: float = 0.6
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "sample", "beam"):
            raise ValueError(
                f"unknown decoding strategy {self.strategy!r}; use 'greedy', 'sample' or 'beam'"
            )
        if self.max_decode_len < 1:
            raise ValueError(f"max_decode_len must be >= 1, got {self.max_decode_len}")
        if self.strategy == "sample" and self.temperature <= 0:
            raise ValueError(
                f"sampling needs temperature > 0, got {self.temperature}; use strategy='greedy' "
                "for argmax decoding"
            )
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = no top-k cut), got {self.top_k}")
        if self.strategy == "beam" and self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if self.alpha < 0:
            raise ValueError(f"length-penalty alpha must be >= 0, got {self.alpha}")


#: Where a few-shot answer ends: the separator before the next exemplar ("\n\nQ:" in the
#: BBH/GSM8K/MMLU-CoT prompts; a blank line ends a direct MMLU answer). EOS also ends one.
STOP_SEQUENCES: dict[str, tuple[str, ...]] = {
    "cot": ("\n\nQ:",),
    "direct": ("\n\nQ:", "\n\n"),
}


def cut_at_stop(text: str, stop_sequences: tuple[str, ...] | list[str]) -> tuple[str, bool]:
    """(text before the earliest stop sequence, whether one was found).

    Applied to each decoded output: greedy/beam/sampled tokens after a stop sequence cannot
    change the tokens before it, so cutting the text equals stopping generation there (only
    the compute spent past it is wasted). Example: ``cut_at_stop("(A)\n\nQ: next", ("\n\nQ:",))``
    -> ``("(A)", True)``.
    """
    cuts = [i for i in (text.find(s) for s in stop_sequences if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def length_penalty(length: Array | int, alpha: float) -> Array:
    """GNMT length penalty ((5 + length) / 6) ** alpha."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


# ------------------------------------------------------------------------- sampling / greedy


def sample_decode(
    step_fn: StepFn,
    cache: Cache,
    *,
    batch_size: int,
    max_decode_len: int,
    eos_id: int,
    rng: Array | None = None,
    temperature: float = 0.0,
    top_k: int = 0,
    start_id: int = 0,
    pad_id: int = 0,
    active: Array | None = None,
) -> DecodeOutput:
    """Greedy (``temperature == 0``) or sampled decoding, one token per step for each row.

    Sampling draws from ``softmax(log_probs / temperature)``, restricted to the ``top_k`` most
    likely tokens when ``top_k > 0``. The returned log-probs are the model's own (unscaled).
    ``active`` [b] (default all): rows marked False (batch padding) count as finished from the
    start, so they neither hold up the early exit nor emit tokens.
    """
    if temperature > 0 and rng is None:
        raise ValueError("sampling (temperature > 0) needs an rng key")
    rng = jax.random.PRNGKey(0) if rng is None else rng
    b, t = batch_size, max_decode_len

    def choose(log_probs: Array, key: Array) -> Array:
        if temperature == 0:
            return jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
        logits = log_probs / temperature
        if top_k > 0:
            kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
            logits = jnp.where(logits < kth, NEG_INF, logits)
        return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)

    def cond(state):
        i, _, _, done, _, _, _ = state
        return (i < t) & ~jnp.all(done)

    def body(state):
        i, tokens, last, done, total, cache, key = state
        key, sub = jax.random.split(key)
        log_probs, cache = step_fn(last[:, None], cache)
        nxt = choose(log_probs, sub)
        nxt = jnp.where(done, pad_id, nxt)
        picked = jnp.take_along_axis(log_probs, nxt[:, None], axis=-1)[:, 0]
        total = total + jnp.where(done, 0.0, picked)
        tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, i))
        done = done | (nxt == eos_id)
        return i + 1, tokens, nxt, done, total, cache, key

    done0 = jnp.zeros((b,), bool) if active is None else ~jnp.asarray(active, bool)
    state = (
        jnp.array(0, jnp.int32),
        jnp.full((b, t), pad_id, jnp.int32),
        jnp.full((b,), start_id, jnp.int32),
        done0,
        jnp.zeros((b,), jnp.float32),
        cache,
        rng,
    )
    _, tokens, _, _, total, _, _ = jax.lax.while_loop(cond, body, state)
    return DecodeOutput(tokens, total, sequence_lengths(tokens, eos_id, pad_id))


def greedy_decode(
    step_fn: StepFn,
    cache: Cache,
    *,
    batch_size: int,
    max_decode_len: int,
    eos_id: int,
    start_id: int = 0,
    pad_id: int = 0,
    active: Array | None = None,
) -> DecodeOutput:
    """Argmax decoding (`sample_decode` at temperature 0)."""
    return sample_decode(
        step_fn,
        cache,
        batch_size=batch_size,
        max_decode_len=max_decode_len,
        eos_id=eos_id,
        start_id=start_id,
        pad_id=pad_id,
        active=active,
    )


def sequence_lengths(tokens: Array, eos_id: int, pad_id: int = 0) -> Array:
    """Tokens up to and including the first EOS per row (all non-pad tokens if none)."""
    is_eos = tokens == eos_id
    has_eos = jnp.any(is_eos, axis=-1)
    first = jnp.argmax(is_eos, axis=-1) + 1
    return jnp.where(has_eos, first, jnp.sum(tokens != pad_id, axis=-1)).astype(jnp.int32)


# ------------------------------------------------------------------------------ beam search


def gather_beams(cache: Cache, flat_indices: Array, num_rows: int) -> Cache:
    """Default cache reordering: row ``r`` of every leaf with a leading [n, ...] axis (n =
    ``num_rows``, at least 2-D) becomes row ``flat_indices[r]``. Scalars and 1-D leaves
    (step counters, position tables) are shared by all rows and kept as they are."""

    def gather(leaf):
        if getattr(leaf, "ndim", 0) >= 2 and leaf.shape[0] == num_rows:
            return jnp.take(leaf, flat_indices, axis=0)
        return leaf

    return jax.tree_util.tree_map(gather, cache)


def beam_search(
    step_fn: StepFn,
    cache: Cache,
    *,
    batch_size: int,
    beam_size: int,
    max_decode_len: int,
    eos_id: int,
    alpha: float = 0.6,
    start_id: int = 0,
    pad_id: int = 0,
    reorder_cache: Callable[[Cache, Array], Cache] | None = None,
    active: Array | None = None,
) -> BeamOutput:
    """Beam search with a GNMT length penalty (algorithm in the module docstring).

    ``cache`` must already hold ``batch_size * beam_size`` rows, example-major (rows
    ``e * beam_size .. e * beam_size + beam_size - 1`` belong to example ``e``; repeat the
    encoder output with `repeat_beams`). ``reorder_cache(cache, flat_indices)`` moves cache rows
    when beams are re-ranked; the default is `gather_beams`. ``active`` [b] (default all):
    examples marked False (batch padding) never hold up the early stop; their output is
    meaningless (discard it).
    """
    if alpha < 0:
        raise ValueError(f"length-penalty alpha must be >= 0 (the early stop needs it): {alpha}")
    b, k, t = batch_size, beam_size, max_decode_len
    n = b * k
    reorder = reorder_cache or (lambda c, idx: gather_beams(c, idx, n))
    batch_offsets = (jnp.arange(b, dtype=jnp.int32) * k)[:, None]  # [b, 1]

    def cond(state: dict) -> Array:
        return (state["i"] < t) & ~jnp.all(_beams_done(state, t, alpha))

    def body(state: dict) -> dict:
        i = state["i"]
        last = state["alive_seq"][:, :, jnp.maximum(i - 1, 0)]
        last = jnp.where(i == 0, start_id, last).reshape(n, 1)
        log_probs, cache_ = step_fn(last, state["cache"])
        top_logp, top_beam, top_seq, is_eos = _top_candidates(
            state, log_probs.reshape(b, k, -1), eos_id
        )
        finished = _update_finished(state, top_seq, top_logp, is_eos, t=t, alpha=alpha)
        alive_seq, alive_logp, alive_beam = _next_alive(top_seq, top_logp, top_beam, is_eos)
        return {
            "i": i + 1,
            "alive_seq": alive_seq,
            "alive_logp": alive_logp,
            **finished,
            "cache": reorder(cache_, (batch_offsets + alive_beam).reshape(n)),
            "active": state["active"],
        }

    state = jax.lax.while_loop(cond, body, _initial_beams(cache, b, k, t, pad_id, active))
    # Tokens after EOS are pad by construction (sequences stop being extended at EOS).
    return BeamOutput(state["fin_seq"], state["fin_score"], state["fin_logp"])


def _initial_beams(
    cache: Cache, b: int, k: int, t: int, pad_id: int, active: Array | None
) -> dict[str, Any]:
    """The loop state: alive [b, k] and finished [b, k] hypotheses, the step, the cache."""
    # Only beam 0 is live at the start, so the k beams do not all extend the same prefix.
    alive_logp0 = jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF)
    return {
        "i": jnp.array(0, jnp.int32),
        "alive_seq": jnp.full((b, k, t), pad_id, jnp.int32),
        "alive_logp": jnp.broadcast_to(alive_logp0, (b, k)).astype(jnp.float32),
        "fin_seq": jnp.full((b, k, t), pad_id, jnp.int32),
        "fin_score": jnp.full((b, k), NEG_INF, jnp.float32),
        "fin_logp": jnp.full((b, k), NEG_INF, jnp.float32),
        "cache": cache,
        "active": jnp.ones((b,), bool) if active is None else jnp.asarray(active, bool),
    }


def _take_beams(x: Array, idx: Array) -> Array:
    """x [b, m, ...] gathered at idx [b, j] along axis 1."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def _beams_done(state: dict[str, Any], t: int, alpha: float) -> Array:
    """[b]: no alive hypothesis can still beat the worst finished one (or batch padding)."""
    # Best score any alive hypothesis could still reach (log-probs only fall; the penalty
    # grows with length, at most to length_penalty(t)).
    best_possible = state["alive_logp"][:, 0] / length_penalty(t, alpha)
    worst_finished = state["fin_score"][:, -1]
    return (worst_finished > best_possible) | ~state["active"]


def _top_candidates(
    state: dict[str, Any], log_probs: Array, eos_id: int
) -> tuple[Array, Array, Array, Array]:
    """The 2k best one-token extensions of the k alive beams (log_probs [b, k, v]):
    their log-probs, source beams, sequences [b, 2k, t] and whether they end in EOS."""
    b, k, v = log_probs.shape
    i = state["i"]
    cand = state["alive_logp"][:, :, None] + log_probs  # [b, k, v]
    top_logp, top_idx = jax.lax.top_k(cand.reshape(b, k * v), 2 * k)  # [b, 2k]
    top_beam = top_idx // v
    top_tok = (top_idx % v).astype(jnp.int32)
    top_seq = _take_beams(state["alive_seq"], top_beam)  # [b, 2k, t]
    top_seq = jax.lax.dynamic_update_slice(top_seq, top_tok[:, :, None], (0, 0, i))
    return top_logp, top_beam, top_seq, top_tok == eos_id


def _update_finished(
    state: dict[str, Any], top_seq: Array, top_logp: Array, is_eos: Array, *, t: int, alpha: float
) -> dict[str, Array]:
    """The k best of the finished pool and the candidates that end now: EOS ones that
    rank in the top k, or every top-k one at the last step (scored with the length
    penalty)."""
    i = state["i"]
    k = state["fin_score"].shape[1]
    rank = jnp.arange(2 * k)[None, :]
    ends = (is_eos | (i + 1 == t)) & (rank < k)
    cand_score = jnp.where(ends, top_logp / length_penalty(i + 1, alpha), NEG_INF)
    pool_score = jnp.concatenate([state["fin_score"], cand_score], axis=1)
    pool_seq = jnp.concatenate([state["fin_seq"], top_seq], axis=1)
    pool_logp = jnp.concatenate([state["fin_logp"], top_logp], axis=1)
    fin_score, fin_idx = jax.lax.top_k(pool_score, k)
    return {
        "fin_seq": _take_beams(pool_seq, fin_idx),
        "fin_score": fin_score,
        "fin_logp": _take_beams(pool_logp, fin_idx),
    }


def _next_alive(
    top_seq: Array, top_logp: Array, top_beam: Array, is_eos: Array
) -> tuple[Array, Array, Array]:
    """The best k candidates that did not end in EOS: sequences, log-probs, source beams."""
    k = top_seq.shape[1] // 2
    alive_key = jnp.where(is_eos, NEG_INF + top_logp, top_logp)
    _, alive_idx = jax.lax.top_k(alive_key, k)
    alive_logp = jnp.where(
        _take_beams(is_eos, alive_idx), NEG_INF, _take_beams(top_logp, alive_idx)
    )  # only when fewer than k non-EOS candidates exist (v tiny)
    return _take_beams(top_seq, alive_idx), alive_logp, _take_beams(top_beam, alive_idx)


def repeat_beams(x: Array, beam_size: int) -> Array:
    """[b, ...] -> [b * beam_size, ...], each row repeated beam_size times (example-major)."""
    return jnp.repeat(x, beam_size, axis=0)


# --------------------------------------------------------------------------- the real model


def _variables(params: Any, cache: Cache | None = None) -> dict:
    return {"params": params} if cache is None else {"params": params, "cache": cache}


def init_cache(
    model: nn.Module,
    params: Any,
    encoded: Array,
    encoder_input_tokens: Array,
    max_decode_len: int,
) -> Cache:
    """An empty KV cache for ``max_decode_len`` steps and ``encoded.shape[0]`` rows."""
    dummy = jnp.zeros((encoded.shape[0], max_decode_len), jnp.int32)
    _, mutated = model.apply(
        _variables(params),
        encoded,
        encoder_input_tokens,
        dummy,
        decode=True,
        mutable=["cache", *_MOE_COLLECTIONS],
        method="decode",
    )
    return mutated["cache"]


def model_step_fn(
    model: nn.Module, params: Any, encoded: Array, encoder_input_tokens: Array
) -> StepFn:
    """The ``EncoderDecoder`` as a step function: one token per row through the KV cache.

    ``encoded`` [n, l, d] and ``encoder_input_tokens`` [n, l] must have as many rows as the
    tokens fed per step (repeat them with `repeat_beams` for beam search).
    """

    def step(tokens: Array, cache: Cache) -> tuple[Array, Cache]:
        logits, mutated = model.apply(
            _variables(params, cache),
            encoded,
            encoder_input_tokens,
            tokens,
            decode=True,
            mutable=["cache", *_MOE_COLLECTIONS],
            method="decode",
        )
        return jax.nn.log_softmax(logits[:, -1, :].astype(jnp.float32)), mutated["cache"]

    return step


def generate(
    model: nn.Module,
    params: Any,
    encoder_input_tokens: Array,
    *,
    config: DecodeConfig,
    eos_id: int,
    rng: Array | None = None,
) -> tuple[Array, Array]:
    """Decodes every row of ``encoder_input_tokens`` [b, l] (pad = 0); all-pad rows are batch
    padding: they do not hold up the early exit, and their output is to be discarded.

    Returns (tokens [b, t], scores [b]): for beam search the best beam and its length-penalised
    score; otherwise the emitted tokens and their summed log-probability.
    """
    b = encoder_input_tokens.shape[0]
    active = jnp.any(encoder_input_tokens > 0, axis=1)  # all-pad rows are batch padding
    encoded = model.apply(_variables(params), encoder_input_tokens, method="encode")
    rows = config.beam_size if config.strategy == "beam" else 1
    encoded = repeat_beams(encoded, rows)
    enc_tokens = repeat_beams(encoder_input_tokens, rows)
    cache = init_cache(model, params, encoded, enc_tokens, config.max_decode_len)
    step = model_step_fn(model, params, encoded, enc_tokens)
    return decode_with_step(
        step, cache, config=config, batch_size=b, eos_id=eos_id, rng=rng, active=active
    )


def decode_with_step(
    step_fn: StepFn,
    cache: Cache,
    *,
    config: DecodeConfig,
    batch_size: int,
    eos_id: int,
    rng: Array | None = None,
    active: Array | None = None,
) -> tuple[Array, Array]:
    """The search ``config`` names (greedy, sampling, beam) over any step function.

    ``step_fn`` and ``cache`` serve ``batch_size`` rows, or ``batch_size * beam_size`` for
    beam search (example-major, as `repeat_beams` lays them out). Returns (tokens [b, t],
    scores [b]) as `generate` does. `generate` drives it with the model's step function;
    proxy-tuning (``flan_moe.merging.proxy``) with three models' steps combined.
    """
    if config.strategy == "beam":
        out = beam_search(
            step_fn,
            cache,
            batch_size=batch_size,
            beam_size=config.beam_size,
            max_decode_len=config.max_decode_len,
            eos_id=eos_id,
            alpha=config.alpha,
            active=active,
        )
        return out.tokens[:, 0], out.scores[:, 0]
    sample = config.strategy == "sample"
    out = sample_decode(
        step_fn,
        cache,
        batch_size=batch_size,
        max_decode_len=config.max_decode_len,
        eos_id=eos_id,
        rng=rng,
        temperature=config.temperature if sample else 0.0,
        top_k=config.top_k if sample else 0,
        active=active,
    )
    return out.tokens, out.log_probs


@functools.lru_cache(maxsize=32)
def make_generate_fn(
    model: nn.Module, *, config: DecodeConfig, eos_id: int
) -> Callable[[Any, Array, Array], tuple[Array, Array]]:
    """``jax.jit`` of `generate`: ``fn(params, encoder_input_tokens, rng)``. It compiles once
    per input shape, so feed it batches padded to a few shapes (`bucket_size`, `pad_rows`).
    Sharded inputs (params by the logical rules, the batch over data x expert) run SPMD."""

    @jax.jit
    def fn(params: Any, encoder_input_tokens: Array, rng: Array) -> tuple[Array, Array]:
        return generate(model, params, encoder_input_tokens, config=config, eos_id=eos_id, rng=rng)

    return fn


# ------------------------------------------------------------------------------ shape buckets


def bucket_size(n: int, *, maximum: int, minimum: int = 16) -> int:
    """The smallest power of two >= n (and >= minimum), capped at ``maximum``.

    Used for input lengths so that a sweep over prompts of many lengths compiles a handful
    of shapes (16, 32, ..., maximum) instead of one per batch.
    """
    if n > maximum:
        raise ValueError(f"length {n} exceeds the maximum {maximum}; truncate first")
    size = max(minimum, 1 << max(0, (n - 1)).bit_length())
    return min(size, maximum)


def pad_rows(rows: list[list[int]], length: int, num_rows: int, pad_id: int = 0) -> np.ndarray:
    """Token lists -> int32 [num_rows, length], right-padded; extra rows are all pad."""
    if len(rows) > num_rows:
        raise ValueError(f"{len(rows)} rows do not fit a batch of {num_rows}")
    out = np.full((num_rows, length), pad_id, np.int32)
    for r, ids in enumerate(rows):
        if len(ids) > length:
            raise ValueError(f"row {r} has {len(ids)} tokens, more than the length {length}")
        out[r, : len(ids)] = ids
    return out

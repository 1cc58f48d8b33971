"""Proxy-tuning at decode time (Liu et al. 2024; alisawuffles/proxy-tuning ``dexperts.py``).

At every decoding step three models see the same target prefix, each through its own
KV cache: a base model M (e.g. large, untuned), an expert M+ (small, tuned) and an
anti-expert M- (the same small model, untuned). The next-token logits are

    l = l_base + alpha * (l_expert - l_antiexpert)

(each model's logits or its log-probs: log_softmax only shifts a row by a constant, so
both give the same distribution, p ∝ p_base * (p_expert / p_antiexpert)^alpha; decoding
combines the log-probs its step functions return). The search (greedy, sampling, beam:
``flan_moe.decoding.decode_with_step``, the decoder every model uses) then runs on
log_softmax(l). Rank
classification scores each option by the same combined per-token log-probabilities.

Logits are cut to the common width ``min(vocab_size)`` (T5 pads its 32100 ids to 32128;
ids past the smallest width are never produced). The models must share one vocabulary:
``check_vocabularies`` raises on a difference (the caller passes the recorded names).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flan_moe import decoding
from flan_moe.evaluation.scoring import shift_right

Array = jax.Array
ROLES = ("base", "expert", "antiexpert")


@dataclasses.dataclass(frozen=True)
class ProxyModels:
    """The three (model, params) pairs; ``alpha`` scales the expert - antiexpert shift."""

    models: tuple[nn.Module, nn.Module, nn.Module]
    alpha: float = 1.0

    @property
    def width(self) -> int:
        return min(m.config.vocab_size for m in self.models)


def check_vocabularies(vocabularies: Sequence[str]) -> None:
    """Raise unless base, expert and antiexpert record the same vocabulary."""
    if len(set(vocabularies)) != 1:
        named = ", ".join(f"{r}={v!r}" for r, v in zip(ROLES, vocabularies, strict=True))
        raise ValueError(
            f"proxy-tuning needs one vocabulary for all three models, got {named}: "
            "use an expert/antiexpert pair trained with the base model's vocabulary"
        )


def combine(logits: Sequence[Array], alpha: float, width: int) -> Array:
    """log_softmax(base + alpha * (expert - antiexpert)) over the first ``width`` ids."""
    base, expert, anti = (x[..., :width].astype(jnp.float32) for x in logits)
    return jax.nn.log_softmax(base + alpha * (expert - anti))


def proxy_generate(
    proxy: ProxyModels,
    params: tuple[Any, Any, Any],
    encoder_input_tokens: Array,
    *,
    config: decoding.DecodeConfig,
    eos_id: int,
    rng: Array | None = None,
) -> tuple[Array, Array]:
    """`flan_moe.decoding.generate` with the proxy-tuned next-token distribution: the
    standard search (`decoding.decode_with_step`) over the three models' step functions
    (`decoding.model_step_fn`, one KV cache each) combined by `combine`."""
    b, t = encoder_input_tokens.shape[0], config.max_decode_len
    rows = config.beam_size if config.strategy == "beam" else 1
    enc_tokens = decoding.repeat_beams(encoder_input_tokens, rows)
    steps, caches = [], []
    for model, p in zip(proxy.models, params, strict=True):
        encoded = decoding.repeat_beams(
            model.apply({"params": p}, encoder_input_tokens, method="encode"), rows
        )
        steps.append(decoding.model_step_fn(model, p, encoded, enc_tokens))
        caches.append(decoding.init_cache(model, p, encoded, enc_tokens, t))

    def step(tokens, cache):
        outs = [s(tokens, c) for s, c in zip(steps, cache, strict=True)]
        return combine([o[0] for o in outs], proxy.alpha, proxy.width), tuple(o[1] for o in outs)

    active = jnp.any(encoder_input_tokens > 0, axis=1)
    return decoding.decode_with_step(
        step, tuple(caches), config=config, batch_size=b, eos_id=eos_id, rng=rng, active=active
    )


def proxy_option_log_likelihoods(
    proxy: ProxyModels,
    params: tuple[Any, Any, Any],
    encoder_input_tokens: Array,
    option_tokens: Array,
) -> Array:
    """log P_proxy(option | prompt) [b, o] for options [b, o, t] (pad = 0 not counted)."""
    b, o, t = option_tokens.shape
    targets = option_tokens.reshape(b * o, t)
    enc_tokens = jnp.repeat(encoder_input_tokens, o, axis=0)
    logits = []
    for model, p in zip(proxy.models, params, strict=True):
        out, _ = model.apply(
            {"params": p},
            enc_tokens,
            shift_right(targets),
            targets,
            mutable=list(decoding._MOE_COLLECTIONS),
        )
        logits.append(out)
    log_probs = combine(logits, proxy.alpha, proxy.width)
    token_ll = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return jnp.where(targets > 0, token_ll, 0.0).sum(-1).reshape(b, o)


def _jit_generate(proxy: ProxyModels, config: decoding.DecodeConfig, eos_id: int):
    @jax.jit
    def fn(params, encoder_input_tokens, rng):
        return proxy_generate(
            proxy, params, encoder_input_tokens, config=config, eos_id=eos_id, rng=rng
        )

    return fn


def make_predictor(configs, params, vocab, *, alpha: float, **kwargs):
    """An evaluator predictor (``ModelPredictor``'s interface: predict, score_options)
    that decodes and ranks with the proxy-tuned distribution. ``configs`` and ``params``
    are (base, expert, antiexpert); ``kwargs`` as ``ModelPredictor`` (each model's params are
    placed by its own logical shardings when a mesh is given)."""
    from flan_moe.evaluation.evaluator import ModelPredictor
    from flan_moe.model.transformer import EncoderDecoder

    proxy = ProxyModels(tuple(EncoderDecoder(c) for c in configs), alpha)

    class ProxyPredictor(ModelPredictor):
        name = "proxy"

        def set_decode(self, decode, stop_sequences=None):
            if decode not in self._generators:
                self._generators[decode] = _jit_generate(proxy, decode, self.vocab.eos_id)
            self.decode, self._generate = decode, self._generators[decode]
            if stop_sequences is not None:
                self.stop_sequences = tuple(stop_sequences)

    predictor = ProxyPredictor(configs[0], params[0], vocab, **kwargs)
    placed = []
    for model, p in zip(proxy.models, params, strict=True):
        predictor.model = model  # _place_params shards by self.model's logical axes
        placed.append(predictor._place_params(p))
    predictor.model, predictor.params = proxy.models[0], tuple(placed)
    predictor._score = jax.jit(
        lambda ps, enc, opts: proxy_option_log_likelihoods(proxy, ps, enc, opts)
    )
    return predictor

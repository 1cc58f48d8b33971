"""Scoring: the log-likelihood of given targets, and rank classification over answer options.

Rank classification (as in FLAN / T0 evaluation) scores every answer option as a target,
``log P(option tokens + EOS | prompt)``, and predicts the best one: by the summed
log-likelihood, or by its per-token average (length-normalised; the token count includes the
EOS). The choice itself is `flan_moe.evaluation.metrics.rank_classify`.

Shape legend: b = batch (examples), o = options per example, l = input length,
t = target length, v = vocabulary, d = model width.

Which options an example has (`infer_options`): its own ``options`` (MMLU: "A".."D"); else the
option labels "(A)", "(B)", ... written at line starts in its final question (BBH multiple-choice
files); else, for a subtask whose gold answers take at most ``max_answer_set`` distinct values
(BBH's True/False, Yes/No, valid/invalid tasks), those values; else none, and the example must
be generated instead (the evaluator counts these).

Pure JAX + numpy: no TensorFlow, SeqIO or gin.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flan_moe.evaluation import metrics

Array = jax.Array

_MOE_COLLECTIONS = ("moe_losses", "moe_metrics")
_OPTION_LINE_RE = re.compile(r"^\(([A-Z])\) ", re.MULTILINE)


def shift_right(targets: Array, start_id: int = 0) -> Array:
    """Decoder inputs for teacher forcing: [start, y_0, ..., y_{t-2}] per row."""
    start = jnp.full(targets.shape[:-1] + (1,), start_id, targets.dtype)
    return jnp.concatenate([start, targets[..., :-1]], axis=-1)


def token_log_likelihoods(logits: Array, targets: Array) -> Array:
    """log softmax(logits)[target] per position, 0 where the target is pad (0). [.., t]"""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return jnp.where(targets > 0, picked, 0.0)


def _apply(model: nn.Module, params: Any, *args, method: str | None, **kwargs) -> Array:
    out, _ = model.apply(
        {"params": params}, *args, method=method, mutable=list(_MOE_COLLECTIONS), **kwargs
    )
    return out


def target_log_likelihoods(
    model: nn.Module, params: Any, encoder_input_tokens: Array, decoder_target_tokens: Array
) -> tuple[Array, Array]:
    """Summed log-likelihood [b] of each target row (pad = 0 not counted) and its token count [b].

    Targets should end with EOS (T5's convention: the model is trained to emit it).
    """
    logits = _apply(
        model,
        params,
        encoder_input_tokens,
        shift_right(decoder_target_tokens),
        decoder_target_tokens,
        method=None,
    )
    ll = token_log_likelihoods(logits, decoder_target_tokens).sum(-1)
    return ll, (decoder_target_tokens > 0).sum(-1)


def option_log_likelihoods(
    model: nn.Module, params: Any, encoder_input_tokens: Array, option_tokens: Array
) -> Array:
    """log P(option | prompt) [b, o] for option targets [b, o, t] (all-pad rows give 0).

    The encoder runs once per example; its output [b, l, d] is repeated for the o options.
    """
    b, o, t = option_tokens.shape
    encoded = _apply(model, params, encoder_input_tokens, method="encode")  # [b, l, d]
    encoded = jnp.repeat(encoded, o, axis=0)  # [b*o, l, d]
    enc_tokens = jnp.repeat(encoder_input_tokens, o, axis=0)
    targets = option_tokens.reshape(b * o, t)
    logits = _apply(
        model, params, encoded, enc_tokens, shift_right(targets), targets, method="decode"
    )
    return token_log_likelihoods(logits, targets).sum(-1).reshape(b, o)


@functools.lru_cache(maxsize=32)
def make_option_scorer(model: nn.Module) -> Callable[[Any, Array, Array], Array]:
    """``jax.jit`` of `option_log_likelihoods`: ``fn(params, inputs [b, l], options [b, o, t])``.

    Compiles once per (b, l, o, t); pad to a few bucket shapes (`flan_moe.decoding.bucket_size`).
    """

    @jax.jit
    def fn(params: Any, encoder_input_tokens: Array, option_tokens: Array) -> Array:
        return option_log_likelihoods(model, params, encoder_input_tokens, option_tokens)

    return fn


def encode_option(vocab: Any, option: str, max_len: int) -> list[int]:
    """Option text -> token ids + EOS; an option longer than ``max_len`` tokens is an error
    (cutting it would score a different answer)."""
    ids = list(vocab.encode(option)) + [vocab.eos_id]
    if len(ids) > max_len:
        raise ValueError(
            f"answer option {option[:60]!r} is {len(ids)} tokens with EOS, more than the "
            f"scoring target length {max_len}; raise it (--max_option_len)"
        )
    return ids


def rank(
    log_likelihoods: Sequence[float] | np.ndarray,
    token_lengths: Sequence[int] | np.ndarray,
    *,
    length_normalized: bool,
) -> int:
    """The predicted option index (see `metrics.rank_classify`)."""
    return metrics.rank_classify(
        log_likelihoods, token_lengths=token_lengths, length_normalized=length_normalized
    )


# ----------------------------------------------------------------------------- the options


def _final_question(inputs: str) -> str:
    """The evaluated question of a few-shot prompt: the text after its last "Q: "."""
    cut = inputs.rfind("Q: ")
    return inputs if cut < 0 else inputs[cut:]


def infer_options(
    example: Any, answer_set: Sequence[str] = (), *, max_answer_set: int = 4
) -> tuple[str, ...]:
    """The option strings to rank for ``example`` (rules in the module docstring).

    ``answer_set``: the distinct gold answers of the example's subtask (in a fixed order).
    Returns () when the example has no closed answer set (it must be generated).
    """
    own = tuple(getattr(example, "options", ()) or ())
    if own:
        return own
    letters = sorted(set(_OPTION_LINE_RE.findall(_final_question(example.inputs))))
    if letters:
        return tuple(f"({letter})" for letter in letters)
    if 0 < len(answer_set) <= max_answer_set:
        return tuple(answer_set)
    return ()


def answer_sets(examples_by_subtask: dict[str, Sequence[Any]]) -> dict[str, tuple[str, ...]]:
    """Distinct gold answers per subtask, sorted (for `infer_options`)."""
    return {
        name: tuple(sorted({ex.answer for ex in examples}))
        for name, examples in examples_by_subtask.items()
    }

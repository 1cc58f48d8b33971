"""Scoring against references: a per-token float64 loop over unpadded logits, hand-worked ranks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_moe.evaluation import scoring
from flan_moe.model.config import get_config
from flan_moe.model.transformer import EncoderDecoder
from tests.random_params import random_params


@pytest.fixture(scope="module")
def tiny():
    cfg = get_config("tiny", dtype="float32")
    model = EncoderDecoder(cfg)
    return model, random_params(model, 2)


def reference_log_likelihoods(model, params, prompt: list[int], targets: list[list[int]]):
    """One example, no padding anywhere: a full forward pass per option, then a float64 loop
    over positions. (Options of one example share a length: one compiled shape per example.)"""
    forward = jax.jit(lambda p, e, d: model.apply({"params": p}, e, d))
    out = []
    for target in targets:
        enc = jnp.asarray([prompt], jnp.int32)
        dec_in = jnp.asarray([[0, *target[:-1]]], jnp.int32)
        logits = np.asarray(forward(params, enc, dec_in), np.float64)[0]
        total = 0.0
        for pos, tok in enumerate(target):
            row = logits[pos]
            total += row[tok] - (row.max() + np.log(np.exp(row - row.max()).sum()))
        out.append(total)
    return out


def test_option_log_likelihoods_match_per_token_reference(tiny):
    model, params = tiny
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(3, 259, n)) for n in (9, 5)]
    options = [
        [[40, 41, 1], [50, 51, 1], [60, 61, 1]],
        [[70, 1], [71, 1]],
    ]
    enc = np.zeros((2, 12), np.int32)
    opts = np.zeros((2, 4, 6), np.int32)  # padded: 4 option slots, 6 target positions
    for b, p in enumerate(prompts):
        enc[b, : len(p)] = p
        for j, o in enumerate(options[b]):
            opts[b, j, : len(o)] = o
    got = np.asarray(scoring.make_option_scorer(model)(params, enc, opts))
    for b in range(2):
        ref = reference_log_likelihoods(model, params, prompts[b], options[b])
        np.testing.assert_allclose(got[b, : len(options[b])], ref, atol=1e-4)
        assert np.all(got[b, len(options[b]) :] == 0.0)  # empty slots score nothing

    # target_log_likelihoods (the whole model per row) agrees, and counts real tokens
    rows = jnp.asarray(np.concatenate([enc[:1].repeat(3, 0), enc[1:]]))
    targets = jnp.asarray(np.concatenate([opts[0, :3], opts[1, :1]]))
    ll, count = jax.jit(lambda p, e, t: scoring.target_log_likelihoods(model, p, e, t))(
        params, rows, targets
    )
    np.testing.assert_allclose(np.asarray(ll), [*got[0, :3], got[1, 0]], atol=1e-4)
    np.testing.assert_array_equal(np.asarray(count), [3, 3, 3, 2])


def test_rank_plain_and_length_normalised_hand_worked():
    # sums -3 vs -5 -> option 0; per token -3/2 = -1.5 vs -5/5 = -1.0 -> option 1
    assert scoring.rank([-3.0, -5.0], [2, 5], length_normalized=False) == 0
    assert scoring.rank([-3.0, -5.0], [2, 5], length_normalized=True) == 1


def test_encode_option_appends_eos_and_refuses_to_cut():
    from flan_moe.data.vocabularies import get_vocabulary

    vocab = get_vocabulary("byte")
    assert scoring.encode_option(vocab, "A", 4) == [ord("A") + 3, 1]
    with pytest.raises(ValueError, match="max_option_len"):
        scoring.encode_option(vocab, "abcd", 4)


@dataclasses.dataclass(frozen=True)
class Ex:
    inputs: str
    answer: str = ""
    options: tuple[str, ...] = ()


def test_infer_options_rules():
    assert scoring.infer_options(Ex("Q?", options=("A", "B", "C", "D"))) == ("A", "B", "C", "D")
    few_shot = (
        "Task.\n\nQ: old question\nOptions:\n(A) x\n(B) y\n(C) z\n(D) w\nA: (B)\n\n"
        "Q: which one?\nOptions:\n(A) red\n(B) blue\nA:"
    )
    assert scoring.infer_options(Ex(few_shot)) == ("(A)", "(B)")  # the final question's labels
    assert scoring.infer_options(Ex("Q: True and False is\nA:"), ("False", "True")) == (
        "False",
        "True",
    )
    # an open answer set (e.g. word sorting) has no options: generate it instead
    assert scoring.infer_options(Ex("Q: sort a b c d e\nA:"), tuple("abcde")) == ()
    sets = scoring.answer_sets({"t": [Ex("", "Yes"), Ex("", "No"), Ex("", "Yes")]})
    assert sets == {"t": ("No", "Yes")}

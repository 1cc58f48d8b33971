"""Decoding against references: teacher-forced argmax, brute-force search, exact frequencies."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_moe import decoding
from flan_moe.model.config import get_config
from flan_moe.model.transformer import EncoderDecoder
from tests.random_params import random_params

EOS = 1

# ------------------------------------------------------------------ a hand-built "model"
# The next-token distribution depends on the FIRST emitted token (read from a per-row history
# kept in the cache, so a beam search that forgets to reorder the cache gets it wrong) and on
# the token just fed in.


def table_step_fn(table: np.ndarray, max_len: int):
    """table[first + 1, prev] = log-probs over the vocabulary (first = -1 before any token)."""
    table = jnp.asarray(table, jnp.float32)

    def step(tokens, cache):
        i, hist = cache["i"], cache["hist"]
        # tokens[:, 0] is the token emitted at step i - 1 (BOS at step 0): record it first.
        hist = hist.at[:, jnp.maximum(i - 1, 0)].set(jnp.where(i == 0, hist[:, 0], tokens[:, 0]))
        first = jnp.where(i == 0, -1, hist[:, 0])
        log_probs = table[first + 1, tokens[:, 0]]
        return log_probs, {"i": i + 1, "hist": hist}

    def init(rows: int):
        return {"i": jnp.array(0, jnp.int32), "hist": jnp.zeros((rows, max_len), jnp.int32)}

    return step, init


def table_log_prob(table: np.ndarray, seq: tuple[int, ...]) -> float:
    """Reference: log P(seq) by walking the table, start token 0."""
    total, prev, first = 0.0, 0, -1
    for tok in seq:
        total += float(table[first + 1, prev, tok])
        if first == -1:
            first = tok
        prev = tok
    return total


def brute_force_best(
    table: np.ndarray, max_len: int, alpha: float
) -> tuple[tuple[int, ...], float]:
    """All sequences ending at their first EOS (or at max_len) -> the best penalised one."""
    vocab = table.shape[-1]
    best, best_score = None, -math.inf
    for length in range(1, max_len + 1):
        for seq in itertools.product(range(vocab), repeat=length):
            if EOS in seq[:-1] or (length < max_len and seq[-1] != EOS):
                continue
            score = table_log_prob(table, seq) / ((5.0 + length) / 6.0) ** alpha
            if score > best_score:
                best, best_score = seq, score
    return best, best_score


def greedy_reference(table: np.ndarray, max_len: int) -> tuple[int, ...]:
    seq: list[int] = []
    for _ in range(max_len):
        nxt = max(range(table.shape[-1]), key=lambda v: table_log_prob(table, (*seq, v)))
        seq.append(nxt)
        if nxt == EOS:
            break
    return tuple(seq)


def random_table(seed: int, vocab: int) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(vocab + 1, vocab, vocab)) * 1.5
    logits[..., 0] = -30.0  # token 0 is pad/BOS: never emitted, as with a trained model
    return np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))


def run_beam(table, max_len, beam_size, alpha, batch=1):
    step, init = table_step_fn(table, max_len)
    out = decoding.beam_search(
        step,
        init(batch * beam_size),
        batch_size=batch,
        beam_size=beam_size,
        max_decode_len=max_len,
        eos_id=EOS,
        alpha=alpha,
    )
    return out


def strip(row) -> tuple[int, ...]:
    row = [int(x) for x in row]
    return tuple(row[: row.index(EOS) + 1]) if EOS in row else tuple(x for x in row if x != 0)


def test_beam_finds_best_sequence_where_greedy_does_not_hand_worked():
    # vocab {0: bos/pad, 1: eos, 2: a, 3: b}. First step: a 0.6, b 0.4. After a: eos/a/b
    # 0.34/0.33/0.33; after b: eos 0.95. Greedy takes a (then a/eos at ~0.2); the best
    # sequence is "b eos" (0.4 * 0.95 = 0.38).
    p = np.full((5, 4, 4), 1e-6)
    p[0, 0] = [1e-6, 1e-6, 0.6, 0.4]
    for first in range(4):
        p[first + 1, 2] = [1e-6, 0.34, 0.33, 0.33]
        p[first + 1, 3] = [1e-6, 0.95, 0.025, 0.025]
    table = np.log(p / p.sum(-1, keepdims=True))
    greedy = greedy_reference(table, 3)
    assert greedy[0] == 2
    out = run_beam(table, 3, beam_size=2, alpha=0.0)
    assert strip(out.tokens[0, 0]) == (3, EOS)
    assert float(out.log_probs[0, 0]) == pytest.approx(math.log(0.4 * 0.95), abs=1e-4)
    step, init = table_step_fn(table, 3)
    g = decoding.greedy_decode(step, init(1), batch_size=1, max_decode_len=3, eos_id=EOS)
    assert strip(g.tokens[0]) == greedy


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_beam_search_matches_brute_force_on_random_tables(alpha):
    vocab, max_len, beam = 4, 3, 2
    found_greedy_gap = False
    for seed in range(4):
        table = random_table(seed, vocab)
        best, best_score = brute_force_best(table, max_len, alpha)
        out = run_beam(table, max_len, beam_size=beam, alpha=alpha)
        # A narrow beam may prune the optimum: its reported score must still be the true
        # penalised score of what it returns, and no better than the optimum. A beam as wide
        # as every prefix (vocab ** max_len) is exhaustive and must find the optimum.
        got = strip(out.tokens[0, 0])
        expect_score = table_log_prob(table, got) / ((5.0 + len(got)) / 6.0) ** alpha
        assert float(out.scores[0, 0]) == pytest.approx(expect_score, abs=1e-4)
        assert float(out.scores[0, 0]) <= best_score + 1e-5
        wide = run_beam(table, max_len, beam_size=vocab**max_len, alpha=alpha)
        assert strip(wide.tokens[0, 0]) == best
        assert float(wide.scores[0, 0]) == pytest.approx(best_score, abs=1e-4)
        found_greedy_gap |= greedy_reference(table, max_len) != best
        # scores come best first
        assert np.all(np.diff(np.asarray(wide.scores[0])) <= 1e-6)
    assert found_greedy_gap, "the random tables should include a case greedy gets wrong"


def test_beam_reorders_cache_per_example_in_a_batch():
    vocab, max_len = 4, 3
    tables = [random_table(s, vocab) for s in (11, 12)]
    # Two examples in one batch share one table here; the cache history must follow beams.
    out = run_beam(tables[0], max_len, beam_size=vocab**max_len, alpha=0.0, batch=2)
    best, _ = brute_force_best(tables[0], max_len, 0.0)
    assert strip(out.tokens[0, 0]) == best
    assert strip(out.tokens[1, 0]) == best


def test_beam_size_one_equals_greedy_on_tables():
    for seed in range(4):
        table = random_table(seed, 4)
        out = run_beam(table, 4, beam_size=1, alpha=0.0)
        assert strip(out.tokens[0, 0]) == greedy_reference(table, 4)


def test_sampling_frequencies_and_top_k():
    # One step from a fixed distribution: frequencies over 4000 rows vs softmax(logp / T).
    logp = np.log(np.array([0.05, 0.1, 0.15, 0.3, 0.4]))
    table = np.broadcast_to(logp, (6, 5, 5)).copy()
    step, init = table_step_fn(table, 1)
    rows, temperature = 4000, 2.0
    out = decoding.sample_decode(
        step,
        init(rows),
        batch_size=rows,
        max_decode_len=1,
        eos_id=99,
        rng=jax.random.PRNGKey(3),
        temperature=temperature,
    )
    freq = np.bincount(np.asarray(out.tokens[:, 0]), minlength=5) / rows
    expect = np.exp(logp / temperature) / np.exp(logp / temperature).sum()
    # binomial std <= sqrt(0.25 / 4000) = 0.008; 0.03 is > 3.5 standard deviations
    np.testing.assert_allclose(freq, expect, atol=0.03)
    np.testing.assert_allclose(
        np.asarray(out.log_probs), logp[np.asarray(out.tokens[:, 0])], atol=1e-5
    )
    top2 = decoding.sample_decode(
        step,
        init(rows),
        batch_size=rows,
        max_decode_len=1,
        eos_id=99,
        rng=jax.random.PRNGKey(4),
        temperature=1.0,
        top_k=2,
    )
    freq2 = np.bincount(np.asarray(top2.tokens[:, 0]), minlength=5) / rows
    assert freq2[:3].sum() == 0
    np.testing.assert_allclose(freq2[3:], [0.3 / 0.7, 0.4 / 0.7], atol=0.03)


def test_bucket_size_and_pad_rows():
    assert [decoding.bucket_size(n, maximum=100) for n in (1, 16, 17, 33, 64, 65, 100)] == [
        16,
        16,
        32,
        64,
        64,
        100,
        100,
    ]
    with pytest.raises(ValueError, match="exceeds the maximum"):
        decoding.bucket_size(101, maximum=100)
    np.testing.assert_array_equal(
        decoding.pad_rows([[5, 6], [7]], 3, 3), [[5, 6, 0], [7, 0, 0], [0, 0, 0]]
    )


def test_decode_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="temperature"):
        decoding.DecodeConfig(strategy="sample", temperature=0.0)
    with pytest.raises(ValueError, match="strategy"):
        decoding.DecodeConfig(strategy="nucleus")


# --------------------------------------------------------------------- the real tiny model


@pytest.fixture(scope="module")
def tiny():
    cfg = get_config("tiny", dtype="float32")
    model = EncoderDecoder(cfg)
    rng = np.random.default_rng(0)
    enc = jnp.asarray(rng.integers(3, 259, (3, 10)), jnp.int32)
    enc = enc.at[2, 6:].set(0)  # a padded row
    return model, random_params(model, 1), enc


def teacher_forced_greedy(model, params, enc, max_len, eos_id):
    """Reference: re-run the full teacher-forced model on the growing prefix, take argmax.

    The decoder input is padded to max_len; the causal mask keeps later positions from
    influencing position `step`, so one compiled shape serves every step.
    """
    forward = jax.jit(lambda p, e, d: model.apply({"params": p}, e, d))
    rows = enc.shape[0]
    dec_in = np.zeros((rows, max_len), np.int32)
    out = np.zeros((rows, max_len), np.int32)
    done = np.zeros(rows, bool)
    for step in range(max_len):
        logits = np.asarray(forward(params, enc, jnp.asarray(dec_in)))
        nxt = np.where(done, 0, logits[:, step].argmax(-1))
        out[:, step] = nxt
        done |= nxt == eos_id
        if step + 1 < max_len:
            dec_in[:, step + 1] = nxt
    return out


MAX_LEN = 6


def test_greedy_with_cache_equals_teacher_forced_argmax(tiny):
    model, params, enc = tiny
    max_len = MAX_LEN
    free = teacher_forced_greedy(model, params, enc, max_len, eos_id=EOS)
    # Make one row stop early: call its third greedy token "EOS".
    eos_id = int(free[0, 2])
    ref = teacher_forced_greedy(model, params, enc, max_len, eos_id=eos_id)
    cfg = decoding.DecodeConfig(strategy="greedy", max_decode_len=max_len)
    fn = decoding.make_generate_fn(model, config=cfg, eos_id=eos_id)
    tokens, _ = fn(params, enc, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(np.asarray(tokens), ref)
    assert np.all(ref[0, 3:] == 0)


def test_beam_size_one_equals_greedy_on_tiny_model(tiny):
    model, params, enc = tiny
    key = jax.random.PRNGKey(0)
    greedy_cfg = decoding.DecodeConfig(strategy="greedy", max_decode_len=MAX_LEN)
    greedy = decoding.make_generate_fn(model, config=greedy_cfg, eos_id=EOS)(params, enc, key)
    beam_cfg = decoding.DecodeConfig(
        strategy="beam", beam_size=1, alpha=0.0, max_decode_len=MAX_LEN
    )
    beam = decoding.make_generate_fn(model, config=beam_cfg, eos_id=EOS)(params, enc, key)
    np.testing.assert_array_equal(np.asarray(beam[0]), np.asarray(greedy[0]))


def test_cut_at_stop_sequences():
    from flan_moe.decoding import STOP_SEQUENCES, cut_at_stop

    assert cut_at_stop("(A)\n\nQ: next question", STOP_SEQUENCES["cot"]) == ("(A)", True)
    text = "Let's see.\n\nSo the answer is (B).\n\nQ: x\nA: So the answer is (C)."
    assert cut_at_stop(text, STOP_SEQUENCES["cot"]) == (text.split("\n\nQ:")[0], True)
    assert cut_at_stop("B\n\nThe following", STOP_SEQUENCES["direct"]) == ("B", True)
    assert cut_at_stop("no stop here", STOP_SEQUENCES["cot"]) == ("no stop here", False)
    assert cut_at_stop("a\n\nQ:b", ()) == ("a\n\nQ:b", False)

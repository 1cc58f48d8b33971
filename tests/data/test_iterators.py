"""The numpy batch iterator: features, determinism, resume, sharding, truncation counting.

Uses small local tasks at tiny lengths; one TF/SeqIO set-up per module.
"""

import numpy as np
import pytest

LENGTHS = {"inputs": 64, "targets": 32}


@pytest.fixture(scope="module")
def it(data_dir):
    from flan_moe.cli.task_registry import register_tasks

    register_tasks()
    from flan_moe.data import iterators

    return iterators


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_packed_features_follow_the_t5x_convention(it):
    lengths = {"inputs": 256, "targets": 64}
    batch = next(
        it.make_train_iterator("flan_mini.copa", feature_lengths=lengths, batch_size=4, seed=0)
    )
    expected = {
        "encoder_input_tokens": (4, 256),
        "decoder_input_tokens": (4, 64),
        "decoder_target_tokens": (4, 64),
        "decoder_loss_weights": (4, 64),
        "encoder_segment_ids": (4, 256),
        "decoder_segment_ids": (4, 64),
        "encoder_positions": (4, 256),
        "decoder_positions": (4, 64),
    }
    assert {k: v.shape for k, v in batch.items()} == expected
    assert all(
        v.dtype == (np.float32 if k == "decoder_loss_weights" else np.int32)
        for k, v in batch.items()
    )
    tgt, seg = batch["decoder_target_tokens"], batch["decoder_segment_ids"]
    np.testing.assert_array_equal(batch["decoder_loss_weights"], (tgt != 0).astype(np.float32))
    # Reference loop: decoder inputs are targets shifted right, 0 (BOS) at each segment start.
    ref = np.zeros_like(tgt)
    for b in range(tgt.shape[0]):
        for t in range(tgt.shape[1]):
            starts = t == 0 or seg[b, t] != seg[b, t - 1]
            ref[b, t] = 0 if starts or seg[b, t] == 0 else tgt[b, t - 1]
    np.testing.assert_array_equal(batch["decoder_input_tokens"], ref)
    assert seg.max() > 1  # several examples packed in a row
    # Every packed example ends with EOS (1), truncated or not.
    for b in range(tgt.shape[0]):
        for s in range(1, seg[b].max() + 1):
            assert tgt[b][seg[b] == s][-1] == 1


def test_deterministic_and_resumes_at_step_k(it):
    kw = dict(feature_lengths=LENGTHS, batch_size=2, seed=3)
    name = "flan_cot.creak"
    full = _take(it.make_train_iterator(name, **kw), 6)
    _assert_same(full, _take(it.make_train_iterator(name, **kw), 6))
    resumed = it.make_train_iterator(name, start_step=4, **kw)
    _assert_same(full[4:], _take(resumed, 2))
    other = next(it.make_train_iterator(name, **{**kw, "seed": 4}))
    assert not np.array_equal(other["encoder_input_tokens"], full[0]["encoder_input_tokens"])


def test_shards_differ(it):
    kw = dict(feature_lengths=LENGTHS, batch_size=2, seed=0, num_shards=2)
    a = next(it.make_train_iterator("flan_mini.copa", shard_index=0, **kw))
    b = next(it.make_train_iterator("flan_mini.copa", shard_index=1, **kw))
    assert not np.array_equal(a["encoder_input_tokens"], b["encoder_input_tokens"])


def test_truncation_is_counted_exactly(it):
    """Eval pass over a split: counters equal a pure-Python reference over the same prompts."""
    from flan_moe.data import records, templates
    from flan_moe.data.vocabularies import ByteVocabulary

    lengths = {"inputs": 40, "targets": 8}
    eval_it = it.make_eval_iterator("flan_cot.strategyqa", feature_lengths=lengths, batch_size=8)
    batches = list(eval_it)
    vocab = ByteVocabulary()
    recs = records.read_records("flan_cot", "strategyqa", "validation")
    pool = records.read_records("flan_cot", "strategyqa", "train")
    n_in = n_tg = cut_in = cut_tg = 0
    for r in recs:
        shots = (
            templates.choose_exemplars(r, pool, 3) if templates.prompt_variant(r) == "fs" else []
        )
        rendered = templates.render(r, cot=True, exemplars=shots)
        text = templates.fit_candidates(
            rendered.candidates, lengths["inputs"], lambda s: len(vocab.encode(s))
        )
        li, lt = len(vocab.encode(text)) + 1, len(vocab.encode(rendered.targets)) + 1
        n_in += li > 40
        n_tg += lt > 8
        cut_in += max(li - 40, 0)
        cut_tg += max(lt - 8, 0)
    stats = eval_it.truncation.as_dict()
    assert stats["examples"] == len(recs) > 10
    assert (stats["inputs_truncated"], stats["targets_truncated"]) == (n_in, n_tg)
    assert (stats["inputs_tokens_cut"], stats["targets_tokens_cut"]) == (cut_in, cut_tg)
    assert n_tg > 0
    # The eval iterator: finite, unshuffled, unpacked, last batch padded with empty rows.
    rows = sum(int((b["decoder_loss_weights"].sum(axis=1) > 0).sum()) for b in batches)
    assert rows == len(recs)
    assert all(b["encoder_input_tokens"].shape == (8, 40) for b in batches)
    assert "encoder_segment_ids" not in batches[0]


def test_bad_arguments_and_unknown_names(it):
    with pytest.raises(ValueError, match="Unknown task or mixture 'nope'.*MIXTURE_OR_TASK_NAME"):
        it.make_train_iterator("nope", feature_lengths=LENGTHS, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="exactly 'inputs' and 'targets'"):
        it.make_train_iterator("flan_cot", feature_lengths={"inputs": 8}, batch_size=2, seed=0)

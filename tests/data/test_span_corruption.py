"""Span corruption equals T5's (t5/data/preprocessors.py in google-research/text-to-text-
transfer-transformer): every expected value below was produced by running that file's
``random_spans_helper``, ``random_spans_noise_mask``, ``noise_span_to_unique_sentinel`` /
``nonnoise_span_to_unique_sentinel`` and ``span_corruption`` (+ seqio's
``append_eos_after_trim``) on the same inputs and seeds, outside this repository.
"""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
seqio = pytest.importorskip("seqio")

from flan_moe.data import span_corruption as sc  # noqa: E402

# random_spans_helper(inputs_length=L, noise_density=0.15, mean_noise_span_length=3.0,
#                     extra_tokens_per_span_inputs=1, extra_tokens_per_span_targets=1)
REF_LENGTHS = {512: (568, 114), 64: (70, 14), 256: (284, 58), 32: (34, 8)}

# random_spans_noise_mask(length, density, seeds=tf.constant(seeds), mean_noise_span_length=m)
REF_MASKS = [
    (20, 0.15, 3.0, [[1, 2], [3, 4]], "00000000000000000111"),
    (57, 0.15, 3.0, [[7, 8], [9, 10]],
     "000000000000010000000000000000000000001000000000001111111"),
    (3, 0.15, 3.0, [[0, 1], [2, 3]], "001"),
    (40, 0.5, 2.0, [[5, 6], [7, 8]], "0110001110101000100011000011001101011111"),
]  # fmt: skip

# seqio.ByteVocabulary(extra_ids=100) (359 ids), tokens 10..29 and this mask:
REF_SENTINEL_MASK = "00110001110000000011"
REF_SENTINEL_INPUTS = [10, 11, 358, 14, 15, 16, 357, 20, 21, 22, 23, 24, 25, 26, 27, 356]
REF_SENTINEL_TARGETS = [358, 12, 13, 357, 17, 18, 19, 356, 28, 29]

# span_corruption(docs, {"inputs": 32, "targets": 12}, byte features with 100 extra ids)
# then append_eos_after_trim, under seqio.utils.map_seed_manager(1234); documents are
# list(range(3, 3 + n)) for n in (40, 7, 25, 90).
REF_DOC_LENGTHS = (40, 7, 25, 90)
REF_EXAMPLES = [
    ([3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26,
      27, 358, 29, 30, 31, 32, 357, 1], [358, 28, 357, 33, 34, 35, 36, 1]),
    ([37, 38, 39, 40, 41, 42, 3, 4, 5, 6, 7, 8, 9, 3, 4, 5, 6, 7, 358, 11, 12, 13, 14, 15, 16,
      17, 18, 19, 20, 21, 357, 1], [358, 8, 9, 10, 357, 22, 23, 1]),
    ([24, 25, 26, 27, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 358, 25,
      26, 27, 28, 29, 30, 31, 357, 1], [358, 21, 22, 23, 24, 357, 32, 1]),
    ([33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
      56, 57, 58, 59, 60, 358, 65, 357, 1], [358, 61, 62, 63, 64, 357, 66, 1]),
    ([67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 358,
      1], [358, 89, 90, 91, 92, 1]),
]  # fmt: skip


def _features():
    vocab = seqio.ByteVocabulary(extra_ids=sc.SENTINEL_IDS)
    return {"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)}


@pytest.mark.parametrize("inputs_length", sorted(REF_LENGTHS))
def test_lengths_equal_t5_random_spans_helper(inputs_length):
    assert sc.span_corruption_lengths(inputs_length) == REF_LENGTHS[inputs_length]


@pytest.mark.parametrize("length,density,mean,seeds,want", REF_MASKS)
def test_noise_mask_equals_t5_for_the_same_seeds(length, density, mean, seeds, want):
    mask = sc.random_spans_noise_mask(length, density, tf.constant(seeds, tf.int32), mean)
    assert "".join("1" if m else "0" for m in mask.numpy()) == want


def test_noise_mask_counts_follow_the_definition():
    """round(n * 0.15) noise tokens in round(noise / 3) spans, non-noise first."""
    for seed in range(5):
        mask = sc.random_spans_noise_mask(568, 0.15, tf.constant([[seed, 1], [2, seed]]))
        mask = mask.numpy().astype(int)
        assert mask.sum() == round(568 * 0.15) == 85
        starts = np.flatnonzero(np.diff(np.concatenate([[0], mask])) == 1)
        assert len(starts) == round(85 / 3) == 28 and mask[0] == 0


def test_sentinels_equal_t5_unique_sentinels():
    tokens = tf.constant(list(range(10, 30)), tf.int32)
    mask = tf.constant([c == "1" for c in REF_SENTINEL_MASK])
    top = seqio.ByteVocabulary(extra_ids=100).vocab_size - 1
    assert top == 358
    assert sc.replace_spans_with_sentinels(tokens, mask, top).numpy().tolist() == (
        REF_SENTINEL_INPUTS
    )
    got = sc.replace_spans_with_sentinels(tokens, tf.logical_not(mask), top).numpy().tolist()
    assert got == REF_SENTINEL_TARGETS


def test_span_corruption_equals_t5_end_to_end():
    docs = [np.arange(3, 3 + n, dtype=np.int32) for n in REF_DOC_LENGTHS]
    ds = tf.data.Dataset.from_generator(
        lambda: ({"targets": d} for d in docs),
        output_signature={"targets": tf.TensorSpec([None], tf.int32)},
    )
    lengths = {"inputs": 32, "targets": 12}
    features = _features()
    with seqio.utils.map_seed_manager(1234):
        out = sc.span_corruption(ds, lengths, features)
        out = seqio.preprocessors.append_eos_after_trim(out, features, sequence_length=lengths)
    got = [(ex["inputs"].tolist(), ex["targets"].tolist()) for ex in out.as_numpy_iterator()]
    assert got == REF_EXAMPLES


def test_bad_settings_are_named():
    features = _features()
    ds = tf.data.Dataset.from_tensors({"targets": tf.constant([5, 6], tf.int32)})
    with pytest.raises(ValueError, match="targets length of at least 14"):
        sc.span_corruption(ds, {"inputs": 64, "targets": 10}, features)
    plain = seqio.ByteVocabulary()
    no_extra = {"inputs": seqio.Feature(plain), "targets": seqio.Feature(plain)}
    with pytest.raises(ValueError, match="no extra ids"):
        sc.span_corruption(ds, {"inputs": 64, "targets": 14}, no_extra)

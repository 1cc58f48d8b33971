"""T5's span-corruption pre-training objective as a SeqIO preprocessor (imports TensorFlow).

Follows ``t5.data.preprocessors.span_corruption`` (google-research/text-to-text-transfer-
transformer, ``t5/data/preprocessors.py``) step for step, with the same stateless random ops
and the same order of SeqIO map seeds, so a dataset gives the same examples under the same
``seqio.utils.map_seed_manager`` seed (the tests compare with outputs of that code):

1. ``select_random_chunk``: one random chunk of at most 65536 tokens per document (empty
   documents are skipped);
2. ``reduce_concat_tokens``: 128 documents concatenated (padding ids 0 removed);
3. ``split_tokens``: pieces of ``raw_length`` tokens, where ``span_corruption_lengths`` picks
   ``raw_length`` so the corrupted inputs (+ EOS) fill the inputs length exactly;
4. ``denoise``: ``random_spans_noise_mask`` marks ``round(n * 0.15)`` tokens as noise in
   ``round(noise / 3)`` spans (alternating non-noise / noise spans, starting with non-noise,
   every such partition equally likely); each noise span becomes one sentinel in the inputs
   and each non-noise span one sentinel in the targets.

Sentinels come from the top of the vocabulary, ``vocab_size - 1`` down (T5's ``<extra_id_0>``,
``<extra_id_1>`` ...): the task's vocabulary must carry extra ids (``SENTINEL_IDS`` = 100, as
T5's), see ``flan_moe.data.seqio_glue.seqio_vocabulary``. Worked example (vocabulary of
359 ids, tokens 10..29, noise at positions 2-3, 7-9, 18-19)::

    inputs  10 11 <358> 14 15 16 <357> 20 ... 27 <356>
    targets <358> 12 13 <357> 17 18 19 <356> 28 29
"""

from __future__ import annotations

from collections.abc import Mapping

import seqio
import tensorflow as tf

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0
SENTINEL_IDS = 100  # extra ids T5's vocabulary reserves at its top
_MAX_CHUNK = 65536
_CONCAT_DOCUMENTS = 128


def _lengths_after_corruption(raw: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    noise = int(round(raw * noise_density))
    spans = int(round(noise / mean_span))
    # inputs: kept tokens + one sentinel per noise span + EOS; targets: the mirror image
    return raw - noise + spans + 1, noise + spans + 1


def span_corruption_lengths(
    inputs_length: int,
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tuple[int, int]:
    """(raw tokens per example, targets length) so corrupted inputs fill ``inputs_length``.

    T5's ``random_spans_helper`` with one sentinel per span: e.g. 512 -> (568, 114).
    """
    raw = inputs_length - 1
    while _lengths_after_corruption(raw + 1, noise_density, mean_noise_span_length)[0] <= (
        inputs_length
    ):
        raw += 1
    targets = _lengths_after_corruption(raw, noise_density, mean_noise_span_length)[1]
    if noise_density == 0.5 and targets > inputs_length:
        raw, targets = raw - 1, targets - 1
    return raw, targets


def _random_partition(num_items: tf.Tensor, num_parts: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Lengths of ``num_parts`` non-empty consecutive parts of ``num_items`` items, at random."""
    starts_part = tf.cast(tf.range(num_items - 1) < num_parts - 1, tf.int32)
    first_of_part = tf.pad(seqio.stateless_shuffle(starts_part, seed), [[1, 0]])
    part_id = tf.cumsum(first_of_part)
    return tf.math.segment_sum(tf.ones_like(part_id), part_id)


def random_spans_noise_mask(
    length: tf.Tensor | int,
    noise_density: float,
    seeds: tf.Tensor,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tf.Tensor:
    """Boolean [length] mask: noise spans alternating with kept spans, kept span first.

    ``seeds``: int32 [2, 2] (one seed for the noise-span lengths, one for the kept spans).
    """
    if noise_density == 0.0:
        return tf.zeros(length, tf.bool)
    full_length = length
    length = tf.maximum(length, 2)
    noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density), tf.int32)
    noise = tf.minimum(tf.maximum(noise, 1), length - 1)
    spans = tf.cast(tf.round(tf.cast(noise, tf.float32) / mean_noise_span_length), tf.int32)
    spans = tf.maximum(spans, 1)
    noise_lengths = _random_partition(noise, spans, seeds[0])
    kept_lengths = _random_partition(length - noise, spans, seeds[1])
    # kept, noise, kept, noise, ...: a position is noise when an odd number of spans began
    alternating = tf.reshape(tf.stack([kept_lengths, noise_lengths], axis=1), [spans * 2])
    span_starts = tf.cumsum(alternating)[:-1]
    started = tf.math.unsorted_segment_sum(tf.ones_like(span_starts), span_starts, length)
    return tf.equal(tf.cumsum(started) % 2, 1)[:full_length]


def replace_spans_with_sentinels(tokens: tf.Tensor, mask: tf.Tensor, top_id: int) -> tf.Tensor:
    """Each run of masked tokens becomes one sentinel: ``top_id``, ``top_id - 1``, ..."""
    prev_masked = tf.pad(mask[:-1], [[1, 0]])
    first = tf.logical_and(mask, tf.logical_not(prev_masked))
    rest = tf.logical_and(mask, prev_masked)
    sentinels = top_id + 1 - tf.cumsum(tf.cast(first, tokens.dtype))
    return tf.boolean_mask(tf.where(first, sentinels, tokens), tf.logical_not(rest))


def _seed(seed):
    """SeqIO's map seed as a stateless seed (a tensor, or a pair of scalars), int32/int64."""

    def cast(s):
        return s if s.dtype in (tf.int32, tf.int64) else tf.cast(s, tf.int64)

    return cast(seed) if isinstance(seed, tf.Tensor) else (cast(seed[0]), cast(seed[1]))


def _chunk(ds: tf.data.Dataset) -> tf.data.Dataset:
    @seqio.map_over_dataset(num_seeds=1)
    def chunk(ex, seed):
        seeds = tf.unstack(tf.random.experimental.stateless_split(_seed(seed)))
        tokens = ex["targets"]
        n = tf.shape(tokens)[0]
        pieces = tf.cast(tf.math.ceil(tf.cast(n, tf.float32) / _MAX_CHUNK), tf.int32)
        start = _MAX_CHUNK * tf.random.stateless_uniform(
            [], maxval=pieces, dtype=tf.int32, seed=seeds[1]
        )
        return {"targets": tokens[start : tf.minimum(start + _MAX_CHUNK, n)]}

    return chunk(ds.filter(lambda ex: tf.size(ex["targets"]) > 0))


def _concat(ds: tf.data.Dataset) -> tf.data.Dataset:
    ds = ds.map(lambda ex: {"targets": ex["targets"]})
    ds = ds.padded_batch(_CONCAT_DOCUMENTS, padded_shapes={"targets": [-1]})

    def join(batch):
        flat = tf.reshape(batch["targets"], [-1])
        return {"targets": tf.boolean_mask(flat, tf.cast(flat, tf.bool))}  # padding ids 0 out

    return ds.map(join)


def _split(ds: tf.data.Dataset, length: int) -> tf.data.Dataset:
    @seqio.map_over_dataset(num_seeds=1)
    def split(ex, seed):
        del seed  # fixed-length pieces; the seed keeps T5's order of map seeds
        tokens = ex["targets"]
        n = tf.shape(tokens)[0]
        pieces = tf.cast(tf.math.ceil(tf.cast(n, tf.float32) / length), tf.int32)
        padding = pieces * length - n
        rows = tf.reshape(tf.pad(tokens, [[0, padding]]), [-1, length])
        sizes = tf.concat([tf.repeat(length, pieces - 1), [length - padding]], axis=0)
        return tf.data.Dataset.from_tensor_slices((rows, sizes))

    ds = ds.filter(lambda ex: tf.size(ex["targets"]) > 0)
    return split(ds).flat_map(lambda z: z).map(lambda row, size: {"targets": row[:size]})


def _denoise(ds: tf.data.Dataset, top_id: int, noise_density: float, mean_span: float):
    @seqio.map_over_dataset(num_seeds=1)
    def denoise(ex, seed):
        seeds = tf.unstack(tf.random.experimental.stateless_split(_seed(seed), 6))
        tokens = ex["targets"]
        mask = random_spans_noise_mask(tf.size(tokens), noise_density, seeds[:2], mean_span)
        return {
            "inputs": replace_spans_with_sentinels(tokens, mask, top_id),
            "targets": replace_spans_with_sentinels(tokens, tf.logical_not(mask), top_id),
        }

    return denoise(ds)


def span_corruption(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
    noise_density: float = NOISE_DENSITY,
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
) -> tf.data.Dataset:
    """Tokenized documents in ``targets`` -> ``{"inputs", "targets"}`` span-corruption pairs.

    Use after ``seqio.preprocessors.tokenize`` and before ``append_eos_after_trim``. The
    targets length of ``sequence_length`` must hold ``span_corruption_lengths(inputs)[1]``.
    """
    raw, targets = span_corruption_lengths(
        sequence_length["inputs"], noise_density, mean_noise_span_length
    )
    if sequence_length["targets"] < targets:
        raise ValueError(
            f"span corruption of {sequence_length['inputs']} input tokens needs a targets "
            f"length of at least {targets}, got {sequence_length['targets']}; set "
            f"TASK_FEATURE_LENGTHS['targets'] >= {targets}"
        )
    vocab = output_features["targets"].vocabulary
    if output_features["inputs"].vocabulary != vocab:
        raise ValueError("span corruption needs the same vocabulary for inputs and targets")
    if getattr(vocab, "extra_ids", 0) < 1:
        raise ValueError(
            f"span corruption takes its sentinels from the top of the vocabulary, but {vocab} "
            f"has no extra ids; use seqio_vocabulary(spec, extra_ids={SENTINEL_IDS})"
        )
    spans = round(round(raw * noise_density) / mean_noise_span_length)
    if spans > vocab.extra_ids:
        raise ValueError(
            f"{sequence_length['inputs']} input tokens make up to {spans} noise spans but the "
            f"vocabulary has only {vocab.extra_ids} sentinel (extra) ids; use shorter inputs"
        )
    ds = _concat(_chunk(dataset))
    ds = _split(ds, raw)
    return _denoise(ds, vocab.vocab_size - 1, noise_density, mean_noise_span_length)

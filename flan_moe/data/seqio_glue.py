"""The SeqIO side of the data flow: vocabularies, output features, sources and preprocessors
shared by every registered task in ``tasks/`` (imports TensorFlow and SeqIO).

Text examples enter SeqIO as ``{"inputs_candidates": [k+1 prompts, most shots first],
"targets": str}``; ``select_prompt_that_fits`` keeps the prompt with the most exemplars that
fits the task's input length (an exemplar is dropped before the question is ever cut), then
``tokenize`` + ``append_eos``. Trimming to the feature lengths happens later in
``flan_moe.data.iterators``, where every cut is counted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import seqio
import tensorflow as tf

from flan_moe.data.vocabularies import BYTE_SPEC

DEFAULT_FEATURE_LENGTHS: dict[str, int] = {"inputs": 2048, "targets": 512}
TEXT_SIGNATURE = {
    "inputs_candidates": tf.TensorSpec([None], tf.string),
    "targets": tf.TensorSpec([], tf.string),
    "dataset": tf.TensorSpec([], tf.string),  # source dataset name (kept for mixing checks)
}


@functools.lru_cache(maxsize=8)
def seqio_vocabulary(spec: str = BYTE_SPEC, extra_ids: int = 0) -> seqio.Vocabulary:
    """The SeqIO vocabulary for a spec string (ids equal ``flan_moe.data.vocabularies``).

    ``extra_ids`` appends ids above the vocabulary (T5's sentinels ``<extra_id_0>`` =
    the top id, used by span corruption); the ids below are unchanged.
    """
    if spec == BYTE_SPEC:
        return seqio.ByteVocabulary(extra_ids=extra_ids)
    if spec.endswith(".model"):
        return seqio.SentencePieceVocabulary(spec, extra_ids=extra_ids)
    raise ValueError(
        f"Unknown vocabulary spec {spec!r}: use 'byte' or a path to a SentencePiece '.model' file."
    )


def output_features(spec: str = BYTE_SPEC, extra_ids: int = 0) -> dict[str, seqio.Feature]:
    vocab = seqio_vocabulary(spec, extra_ids)
    return {
        "inputs": seqio.Feature(vocabulary=vocab, add_eos=True),
        "targets": seqio.Feature(vocabulary=vocab, add_eos=True),
    }


class StreamingSource(seqio.DataSource):
    """A source that streams its examples: one shard per split (sharded by taking every
    ``num_shards``-th example), and no example count until it has been read."""

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> list[str]:
        return [split]

    def num_input_examples(self, split: str) -> int | None:
        return None


class PythonSource(StreamingSource):
    """A SeqIO source over a pure-Python generator ``make_examples(split, shuffle, seed)``.

    The Python side reads files lazily (only when a dataset is built), so registering tasks
    stays fast. It shuffles internally (``make_examples`` permutes its records with the seed;
    each new epoch of a repeated dataset uses ``seed + epoch``), so tasks over it need no
    shuffle buffer. Sharding takes every ``num_shards``-th example.
    """

    def __init__(
        self,
        make_examples: Callable[[str, bool, int | None], Iterable[Mapping[str, object]]],
        *,
        splits: Iterable[str],
        signature: Mapping[str, tf.TensorSpec],
    ) -> None:
        super().__init__(splits=splits, caching_permitted=False, performs_internal_shuffling=True)
        self._make_examples = make_examples
        self._signature = dict(signature)

    def get_dataset(
        self,
        split: str = "train",
        shuffle: bool = True,
        seed: int | None = None,
        shard_info: seqio.ShardInfo | None = None,
        *,
        sequence_length: Mapping[str, int] | None = None,
        use_cached: bool = False,
        num_epochs: int | None = 1,
    ) -> tf.data.Dataset:
        signature = self._signature
        make_examples = self._make_examples
        epoch = [0]  # a fresh counter per dataset: repeated epochs reshuffle deterministically

        def gen():
            epoch_seed = None if seed is None else int(seed) + epoch[0]
            epoch[0] += 1
            for ex in make_examples(split, shuffle, epoch_seed):
                yield {k: ex[k] for k in signature}

        ds = tf.data.Dataset.from_generator(gen, output_signature=signature)
        if shard_info is not None and shard_info.num_shards > 1:
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        return ds


def generator_source(
    make_examples: Callable[[str, bool, int | None], Iterable[Mapping[str, object]]],
    *,
    splits: Iterable[str],
    signature: Mapping[str, tf.TensorSpec] = TEXT_SIGNATURE,
) -> PythonSource:
    """See ``PythonSource``."""
    return PythonSource(make_examples, splits=splits, signature=signature)


def shuffled_order(n: int, shuffle: bool, seed: int | None) -> np.ndarray:
    """Order to read ``n`` records in: a seeded permutation when shuffling, else 0..n-1."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng(seed).permutation(n)


def _token_counts(vocab: seqio.Vocabulary, texts: tf.Tensor) -> tf.Tensor:
    """Number of tokens of each string in the 1-D ``texts`` (int32)."""
    if isinstance(vocab, seqio.ByteVocabulary):
        return tf.strings.length(texts, unit="BYTE")
    return tf.map_fn(
        lambda s: tf.size(vocab.encode_tf(s), out_type=tf.int32),
        texts,
        fn_output_signature=tf.int32,
    )


def select_prompt_that_fits(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int] | None,
    output_features: Mapping[str, seqio.Feature],
) -> tf.data.Dataset:
    """Sets ``inputs`` to the first candidate whose tokens + EOS fit ``sequence_length["inputs"]``.

    Candidates run from most to fewest exemplars; if none fits, the last (fewest exemplars) is
    kept and the trimming stage truncates and counts it. Without a sequence length (e.g. when
    inspecting a task), the first candidate is used.
    """
    max_len = None if sequence_length is None else sequence_length.get("inputs")
    vocab = output_features["inputs"].vocabulary

    @tf.autograph.experimental.do_not_convert
    def choose(ex):
        cands = ex.pop("inputs_candidates")
        if max_len is None:
            ex["inputs"] = cands[0]
            return ex
        lengths = _token_counts(vocab, cands)
        fits = lengths + 1 <= max_len
        idx = tf.where(
            tf.reduce_any(fits),
            tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32),
            tf.size(cands) - 1,
        )
        ex["inputs"] = cands[idx]
        return ex

    return dataset.map(choose, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


TEXT_PREPROCESSORS = (
    select_prompt_that_fits,
    seqio.preprocessors.tokenize,
    seqio.preprocessors.append_eos,
)

"""Numpy batch iterators over SeqIO tasks/mixtures: what the trainer and evaluator consume.

Pipeline (train): ``Task/Mixture.get_dataset`` (shuffled with ``seed``, repeated, sharded by
``shard_index``/``num_shards``, untrimmed) -> ``count_and_trim`` (every over-long example is
counted in ``TruncationStats`` and cut to the feature length, keeping its final EOS) ->
``seqio.EncDecFeatureConverter(pack=...)`` -> ``batch(batch_size)`` -> ``skip(start_step)`` ->
numpy. No TensorFlow object leaves this module: batches are ``dict[str, np.ndarray]`` with the
t5x encoder-decoder features (int32; ``decoder_loss_weights`` float32).

Determinism and resume: the same arguments give the same batches (TF's deterministic
``tf.data`` order, seeded shuffles and mixture sampling). Resuming at ``start_step=k`` skips the
first ``k`` batches of the identical pipeline, so it yields exactly batches ``k, k+1, ...`` of an
uninterrupted run (skipping costs reading those batches once).

Truncation counters count examples as the input pipeline reads them, which runs ahead of the
batches handed out (packing and prefetch read ahead); they are for logging and reports.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf

from flan_moe.data.seqio_glue import DEFAULT_FEATURE_LENGTHS, seqio_vocabulary
from flan_moe.data.vocabularies import BYTE_SPEC, EOS_ID

PACKED_FEATURES = (
    "encoder_segment_ids",
    "decoder_segment_ids",
    "encoder_positions",
    "decoder_positions",
)


@dataclasses.dataclass
class TruncationStats:
    """Counts of examples cut to the feature lengths (inputs and targets separately)."""

    examples: int = 0
    inputs_truncated: int = 0
    targets_truncated: int = 0
    inputs_tokens_cut: int = 0
    targets_tokens_cut: int = 0
    max_inputs_cut: int = 0
    max_targets_cut: int = 0
    _lock: threading.Lock = dataclasses.field(
        default_factory=threading.Lock, repr=False, compare=False
    )

    def update(self, inputs_cut: int, targets_cut: int) -> None:
        with self._lock:
            self.examples += 1
            if inputs_cut > 0:
                self.inputs_truncated += 1
                self.inputs_tokens_cut += inputs_cut
                self.max_inputs_cut = max(self.max_inputs_cut, inputs_cut)
            if targets_cut > 0:
                self.targets_truncated += 1
                self.targets_tokens_cut += targets_cut
                self.max_targets_cut = max(self.max_targets_cut, targets_cut)

    def as_dict(self) -> dict[str, int]:
        """Plain counters for logging (e.g. ``data/inputs_truncated``)."""
        with self._lock:
            return {
                f.name: getattr(self, f.name)
                for f in dataclasses.fields(self)
                if not f.name.startswith("_")
            }


def resolve_name(mixture_or_task_name: str, vocabulary: str = BYTE_SPEC) -> str:
    """The registered name to read; for a non-default vocabulary, a re-vocabbed copy."""
    try:
        seqio.get_mixture_or_task(mixture_or_task_name)
    except ValueError as e:
        raise ValueError(
            f"Unknown task or mixture {mixture_or_task_name!r}. Registered names are listed in "
            "WORKSPACE.md (e.g. 'flan_local', 'flan2022_local', 'flan_mini', 'flan_cot'); "
            "check MIXTURE_OR_TASK_NAME. Tasks are registered by the caller: "
            "flan_moe.cli.task_registry.register_tasks() (every CLI calls it)."
        ) from e
    if vocabulary == BYTE_SPEC:
        return mixture_or_task_name
    digest = hashlib.sha256(vocabulary.encode()).hexdigest()[:8]
    new_name = f"{mixture_or_task_name}.vocab_{digest}"
    registered = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
    if new_name not in registered:
        seqio.helpers.mixture_or_task_with_new_vocab(
            mixture_or_task_name,
            new_name,
            new_vocab=seqio_vocabulary(vocabulary, _extra_ids(mixture_or_task_name)),
        )
    return new_name


def _extra_ids(mixture_or_task_name: str) -> int:
    """Extra (sentinel) ids of a task's vocabulary, kept when re-vocabbing (span corruption)."""
    provider = seqio.get_mixture_or_task(mixture_or_task_name)
    tasks = provider.tasks if isinstance(provider, seqio.Mixture) else [provider]
    counts = {getattr(t.output_features["targets"].vocabulary, "extra_ids", 0) for t in tasks}
    if len(counts) > 1:
        raise ValueError(f"{mixture_or_task_name!r} mixes vocabularies with extra ids {counts}")
    return counts.pop()


def _count_and_trim(
    ds: tf.data.Dataset, feature_lengths: Mapping[str, int], stats: TruncationStats
) -> tf.data.Dataset:
    li, lt = int(feature_lengths["inputs"]), int(feature_lengths["targets"])

    def record(inputs_cut, targets_cut):
        stats.update(int(inputs_cut), int(targets_cut))
        return np.int32(0)

    def trim(x, max_len):
        # Keep the first max_len - 1 tokens and the final EOS of an over-long sequence.
        return tf.cond(
            tf.size(x) > max_len,
            lambda: tf.concat([x[: max_len - 1], tf.constant([EOS_ID], x.dtype)], 0),
            lambda: x,
        )

    @tf.autograph.experimental.do_not_convert
    def fn(ex):
        inputs_cut = tf.maximum(tf.size(ex["inputs"]) - li, 0)
        targets_cut = tf.maximum(tf.size(ex["targets"]) - lt, 0)
        done = tf.numpy_function(record, [inputs_cut, targets_cut], tf.int32, stateful=True)
        with tf.control_dependencies([done]):
            return {"inputs": trim(ex["inputs"], li), "targets": trim(ex["targets"], lt)}

    return ds.map(fn)  # sequential: every example is counted exactly once


def _to_numpy(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in batch.items():
        out[k] = np.asarray(v, np.float32 if k == "decoder_loss_weights" else np.int32)
    return out


class BatchIterator(Iterator[dict[str, np.ndarray]]):
    """Iterator of numpy batches with ``truncation`` counters (``TruncationStats``)."""

    def __init__(self, ds: tf.data.Dataset, truncation: TruncationStats, **info) -> None:
        self._it = ds.as_numpy_iterator()
        self.truncation = truncation
        self.info = info

    def __next__(self) -> dict[str, np.ndarray]:
        return _to_numpy(next(self._it))


def _check_lengths(feature_lengths: Mapping[str, int]) -> dict[str, int]:
    if set(feature_lengths) != {"inputs", "targets"}:
        raise ValueError(
            f"feature_lengths must have exactly 'inputs' and 'targets', got {dict(feature_lengths)}"
        )
    if min(feature_lengths.values()) < 2:
        raise ValueError(f"feature lengths must be >= 2 (room for EOS), got {feature_lengths}")
    return {k: int(v) for k, v in feature_lengths.items()}


def make_train_iterator(
    mixture_or_task_name: str,
    *,
    feature_lengths: Mapping[str, int] | None = None,
    batch_size: int,
    seed: int,
    pack: bool = True,
    split: str = "train",
    start_step: int = 0,
    shard_index: int = 0,
    num_shards: int = 1,
    vocabulary: str = BYTE_SPEC,
    shuffle_buffer_size: int | None = None,
) -> BatchIterator:
    """Infinite, shuffled, (packed) training batches as numpy; deterministic given ``seed``.

    Args:
      mixture_or_task_name: a registered task or mixture (e.g. ``"flan_local"``).
      feature_lengths: ``{"inputs": Li, "targets": Lt}``; default 2048/512.
      batch_size: rows per batch on this shard.
      seed: seeds file shuffling, shuffle buffers and mixture sampling.
      pack: pack several examples per row (``encoder_segment_ids`` etc. are then included).
      split: the split to read.
      start_step: number of batches to skip (the trainer's step when resuming).
      shard_index, num_shards: this host's shard of the data.
      vocabulary: vocabulary spec ("byte" or a SentencePiece ``.model`` path).
      shuffle_buffer_size: SeqIO's per-task shuffle buffer (its default when None).
    """
    lengths = _check_lengths(feature_lengths or DEFAULT_FEATURE_LENGTHS)
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} must be in [0, {num_shards})")
    if batch_size < 1 or start_step < 0:
        raise ValueError(
            f"need batch_size >= 1 and start_step >= 0, got {batch_size}, {start_step}"
        )
    provider = seqio.get_mixture_or_task(resolve_name(mixture_or_task_name, vocabulary))
    kwargs = dict(
        sequence_length=lengths,
        split=split,
        shuffle=True,
        seed=seed,
        shard_info=seqio.ShardInfo(index=shard_index, num_shards=num_shards),
        num_epochs=None,
        trim_output_features=False,
    )
    if shuffle_buffer_size is not None and isinstance(provider, seqio.Task):
        kwargs["shuffle_buffer_size"] = shuffle_buffer_size
    ds = provider.get_dataset(**kwargs)
    stats = TruncationStats()
    ds = _count_and_trim(ds, lengths, stats)
    ds = seqio.EncDecFeatureConverter(pack=pack)(ds, lengths)
    ds = ds.batch(batch_size, drop_remainder=True).skip(start_step).prefetch(2)
    return BatchIterator(ds, stats, name=mixture_or_task_name, start_step=start_step)


def make_eval_iterator(
    task_name: str,
    *,
    feature_lengths: Mapping[str, int] | None = None,
    batch_size: int,
    split: str = "validation",
    vocabulary: str = BYTE_SPEC,
    pad_last_batch: bool = True,
) -> BatchIterator:
    """One pass over a task's split: no shuffling, no packing, finite.

    With ``pad_last_batch`` the last batch is filled up to ``batch_size`` with all-zero rows
    (``decoder_loss_weights`` 0), so every batch has the same shape.
    """
    lengths = _check_lengths(feature_lengths or DEFAULT_FEATURE_LENGTHS)
    provider = seqio.get_mixture_or_task(resolve_name(task_name, vocabulary))
    ds = provider.get_dataset(
        sequence_length=lengths,
        split=split,
        shuffle=False,
        num_epochs=1,
        trim_output_features=False,
    )
    stats = TruncationStats()
    ds = _count_and_trim(ds, lengths, stats)
    ds = seqio.EncDecFeatureConverter(pack=False)(ds, lengths)
    if pad_last_batch:
        ds = ds.padded_batch(batch_size, drop_remainder=False)
        ds = ds.map(lambda b: _pad_rows(b, batch_size))
    else:
        ds = ds.batch(batch_size, drop_remainder=False)
    return BatchIterator(ds.prefetch(2), stats, name=task_name, split=split)


@tf.autograph.experimental.do_not_convert
def _pad_rows(batch: dict, batch_size: int) -> dict:
    def pad(x):
        missing = batch_size - tf.shape(x)[0]
        return tf.pad(x, [[0, missing]] + [[0, 0]] * (len(x.shape) - 1))

    return {k: pad(v) for k, v in batch.items()}

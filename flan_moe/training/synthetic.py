"""Synthetic training batches (no TensorFlow): for tests, smoke runs and benchmarks.

Each batch is a pure function of (seed, step), so ``synthetic_batches(start_step=k)``
continues exactly where a run that consumed k batches stopped. Rows hold random
tokens in [2, vocab) ending in EOS (1) with padding (0) after a random length; the
target is the first tokens of the input (a copy task, so the loss can fall).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

SYNTHETIC_NAME = "synthetic"


def synthetic_batch(
    *,
    step: int,
    batch_size: int,
    feature_lengths: Mapping[str, int],
    vocab_size: int,
    seed: int = 0,
    full_length: bool = False,
) -> dict[str, np.ndarray]:
    """Batch ``step`` of the stream (``full_length``: no padding, for benchmarks)."""
    in_len, tgt_len = int(feature_lengths["inputs"]), int(feature_lengths["targets"])
    if vocab_size < 3:
        raise ValueError("synthetic batches need a vocabulary of at least 3 ids")
    rng = np.random.default_rng([seed, step])
    tokens = rng.integers(2, vocab_size, size=(batch_size, in_len), dtype=np.int32)
    if full_length:
        in_lengths = np.full(batch_size, in_len)
        tgt_lengths = np.full(batch_size, tgt_len)
    else:
        in_lengths = rng.integers(max(in_len // 2, 1), in_len + 1, size=batch_size)
        tgt_lengths = np.minimum(in_lengths, tgt_len)
    encoder = np.where(np.arange(in_len)[None] < in_lengths[:, None], tokens, 0).astype(np.int32)
    encoder[np.arange(batch_size), in_lengths - 1] = 1
    targets = np.zeros((batch_size, tgt_len), np.int32)
    copy = min(in_len, tgt_len)
    targets[:, :copy] = tokens[:, :copy]
    targets = np.where(np.arange(tgt_len)[None] < tgt_lengths[:, None], targets, 0)
    targets[np.arange(batch_size), tgt_lengths - 1] = 1
    decoder_inputs = np.concatenate([np.zeros((batch_size, 1), np.int32), targets[:, :-1]], 1)
    return {
        "encoder_input_tokens": encoder,
        "decoder_input_tokens": decoder_inputs.astype(np.int32),
        "decoder_target_tokens": targets.astype(np.int32),
        "decoder_loss_weights": (targets > 0).astype(np.float32),
    }


def synthetic_batches(
    *,
    batch_size: int,
    feature_lengths: Mapping[str, int],
    vocab_size: int,
    seed: int = 0,
    start_step: int = 0,
    full_length: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[dict[str, np.ndarray]]:
    """An endless, resumable stream of synthetic batches starting at ``start_step``.

    ``shard=(i, n)`` keeps rows ``[i * batch_size / n, (i + 1) * batch_size / n)`` of each
    global batch of ``batch_size`` rows (host ``i`` of ``n``), so a multi-host run sees the
    same global batches as a single-host run.
    """
    index, count = shard
    if batch_size % count or not 0 <= index < count:
        raise ValueError(f"shard {shard} does not split a batch of {batch_size} rows evenly")
    rows = slice(index * batch_size // count, (index + 1) * batch_size // count)
    step = start_step
    while True:
        batch = synthetic_batch(
            step=step,
            batch_size=batch_size,
            feature_lengths=feature_lengths,
            vocab_size=vocab_size,
            seed=seed,
            full_length=full_length,
        )
        yield {name: value[rows] for name, value in batch.items()}
        step += 1

"""Span-corruption pre-training tasks (T5's objective; ``flan_moe.data.span_corruption``).

- ``c4_span_corruption``: TFDS ``c4/en`` (version ``C4_VERSION``; build it with ``tfds build
  c4/en`` or point ``TFDS_DATA_DIR`` at a prepared copy), T5's ``c4_v220_span_corruption``
  recipe: text -> tokenize -> span corruption -> EOS. For base / paper-scale pre-training.
- ``local_corpus_span_corruption``: the same objective over the text of the local FLAN
  training records (``flan_mini`` + ``flan_cot``, split ``train`` only: never a held-out
  suite, never the 1-in-50 validation records), one document per record. For the tiny and
  small scales, so "before instruction tuning" is a pre-trained model there too.

Both tasks' vocabularies carry T5's 100 sentinel ids above the base vocabulary
(``SENTINEL_IDS``); training with another vocabulary spec keeps them (see
``flan_moe.data.iterators.resolve_name``).
"""

from __future__ import annotations

import seqio
import tensorflow as tf

from flan_moe.data import records as rec
from flan_moe.data.seqio_glue import generator_source, output_features, shuffled_order
from flan_moe.data.span_corruption import SENTINEL_IDS, span_corruption

from .flan_collection import MissingTfdsSource

C4_TASK = "c4_span_corruption"
LOCAL_CORPUS_TASK = "local_corpus_span_corruption"
C4_VERSION = "3.1.0"
CORPUS_SIGNATURE = {"text": tf.TensorSpec([], tf.string)}
PRETRAINING_TASKS = (C4_TASK, LOCAL_CORPUS_TASK)

_SPAN_CORRUPTION_PREPROCESSORS = (
    seqio.preprocessors.tokenize,
    span_corruption,
    seqio.preprocessors.append_eos_after_trim,
)


def record_document(record: rec.Record) -> str:
    """The text of one training record as a document: passage, question, options, answer."""
    parts = [record.context, record.question, *record.options, record.rationale, record.answer]
    return "\n".join(p.strip() for p in parts if p.strip())


def corpus_records(split: str) -> list[rec.Record]:
    """Every local FLAN record of ``split`` (``train`` or ``validation``), in a fixed order."""
    out: list[rec.Record] = []
    for collection, datasets in (("flan_mini", rec.MINI_DATASETS), ("flan_cot", rec.COT_DATASETS)):
        for dataset in datasets:
            out.extend(rec.read_records(collection, dataset, split))
    return out


def _corpus_examples(split: str, shuffle: bool, seed: int | None):
    records = corpus_records(split)
    for i in shuffled_order(len(records), shuffle, seed):
        yield {"text": record_document(records[i])}


def _add(name: str, source: seqio.DataSource, preprocessors: list) -> None:
    if name in seqio.TaskRegistry.names():
        return
    seqio.TaskRegistry.add(
        name,
        source=source,
        preprocessors=preprocessors,
        output_features=output_features(extra_ids=SENTINEL_IDS),
        metric_fns=[],
    )


def register() -> None:
    """Registers both pre-training tasks (idempotent; reads no file)."""
    _add(
        C4_TASK,
        MissingTfdsSource(tfds_name=f"c4/en:{C4_VERSION}", build_name=f"c4/en:{C4_VERSION}"),
        # T5 caches the tokenized C4 before the random corruption (seqio cache jobs)
        [_rekey_text, *_SPAN_CORRUPTION_PREPROCESSORS[:1], seqio.CacheDatasetPlaceholder(),
         *_SPAN_CORRUPTION_PREPROCESSORS[1:]],
    )  # fmt: skip
    _add(
        LOCAL_CORPUS_TASK,
        generator_source(_corpus_examples, splits=rec.SPLITS, signature=CORPUS_SIGNATURE),
        [_rekey_text, *_SPAN_CORRUPTION_PREPROCESSORS],
    )


def _rekey_text(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``{"text": ...}`` -> ``{"targets": ...}`` (span corruption builds ``inputs`` from it)."""
    return dataset.map(lambda ex: {"targets": ex["text"]}, num_parallel_calls=tf.data.AUTOTUNE)

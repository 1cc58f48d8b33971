"""The Flan 2022 collection from its public exports, as SeqIO tasks and mixtures.

The exports (e.g. the Hugging Face datasets conceptofmind/{flan2021,t0,niv2,cot,dialog}_
submix_original, linked from google-research/FLAN's flan/v2/README.md) are jsonl
(optionally .gz) or parquet files whose rows have ``inputs``, ``targets``, ``task_name``,
``task_source`` and ``template_type`` (``zs_opt``, ``zs_noopt``, ``fs_opt``, ``fs_noopt``).
Put them anywhere under ``$FLAN2022_DIR`` (default ``$FLAN_MOE_DATA_DIR/flan2022``).

- Tasks ``flan2022.<source>_<template type>`` for the sources ``flan2021``, ``t0``, ``niv2``,
  ``cot``, ``dialog`` and the four template types: the rows of that source and type,
  rendered prompts taken as they are (over-long ones are counted and cut by the iterators).
- Mixtures ``flan2022.<source>_submix`` (equal rates over the template types the FLAN repo
  mixes: all four for flan2021 and t0, ``zs_opt`` / ``fs_opt`` for niv2, cot and dialog)
  and ``flan2022_exports``: flan2021 0.4, t0 0.32, niv2 0.2, cot 0.05, dialog 0.03
  (google-research/FLAN flan/v2/run_example.py, ``flan2022_submix``).

Files are streamed row by row (jsonl line by line, parquet by record batch), never loaded
whole; shuffling is a seeded file order plus SeqIO's shuffle buffer. A file whose path
names one source (``t0`` in ``t0_submix/part-0.parquet``) is read only by that source's
tasks. A row from a held-out suite (MMLU, BBH, GSM8K test, SVAMP) is an error naming the
file and line.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import seqio
import tensorflow as tf

from flan_moe.data import paths
from flan_moe.data.seqio_glue import (
    TEXT_PREPROCESSORS,
    TEXT_SIGNATURE,
    StreamingSource,
    output_features,
)

SOURCES = ("flan2021", "t0", "niv2", "cot", "dialog")
TEMPLATE_TYPES = ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt")
SUBMIX_RATES = {"flan2021": 0.4, "t0": 0.32, "niv2": 0.2, "cot": 0.05, "dialog": 0.03}
SUBMIX_TEMPLATES = {
    "flan2021": TEMPLATE_TYPES,
    "t0": TEMPLATE_TYPES,
    "niv2": ("zs_opt", "fs_opt"),
    "cot": ("zs_opt", "fs_opt"),
    "dialog": ("zs_opt", "fs_opt"),
}
MIXTURE = "flan2022_exports"
SHUFFLE_BUFFER = 10_000
# task_source values seen in the exports -> our source names
_SOURCE_ALIASES = {"flan2021": "flan2021", "flan": "flan2021", "t0": "t0", "p3": "t0",
                   "niv2": "niv2", "cot": "cot", "dialog": "dialog"}  # fmt: skip
_HELDOUT = re.compile(r"mmlu|hendrycks|bbh|big_?bench_?hard|svamp|gsm8k.*test", re.IGNORECASE)
_REQUIRED = ("inputs", "targets", "task_name", "task_source", "template_type")
_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")


def task_name(source: str, template_type: str) -> str:
    return f"flan2022.{source}_{template_type}"


def exports_dir() -> Path:
    return Path(os.environ.get("FLAN2022_DIR") or Path(paths.data_dir()) / "flan2022")


def export_files(source: str) -> list[Path]:
    """The files ``source`` reads: those naming it, and those naming no source."""
    root = exports_dir()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(_SUFFIXES))
    if not files:
        raise FileNotFoundError(
            f"no Flan 2022 export files (*.jsonl, *.jsonl.gz, *.parquet) under {root}. Download "
            "the submixes (Hugging Face conceptofmind/flan2021_submix_original, t0_, niv2_, "
            "cot_, dialog_submix_original) into it, or set FLAN2022_DIR."
        )

    def named(p: Path) -> set[str]:
        words = re.split(r"[^a-z0-9]+", str(p.relative_to(root)).lower())
        return {_SOURCE_ALIASES[w] for w in words if w in _SOURCE_ALIASES}

    return [p for p in files if not named(p) or source in named(p)]


def _rows(path: Path) -> Iterator[tuple[int, Mapping]]:
    """(row number, row) of one file, streamed."""
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=list(_REQUIRED)):
            for row in batch.to_pylist():
                number += 1
                yield number, row
        return
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{number}: not a JSON object ({e})") from e


def _check(row: Mapping, path: Path, number: int) -> None:
    missing = [k for k in _REQUIRED if k not in row]
    if missing:
        raise ValueError(f"{path}:{number}: missing field(s) {missing}; need {list(_REQUIRED)}")
    if _HELDOUT.search(str(row["task_name"])):
        raise ValueError(
            f"{path}:{number}: task {row['task_name']!r} is a held-out evaluation suite "
            "(MMLU / BBH / GSM8K test / SVAMP) and must not be trained on; remove it"
        )


def stream_examples(source: str, template_type: str, seed: int | None) -> Iterator[dict]:
    """Rows of one (source, template type), file order shuffled by ``seed`` (None: sorted)."""
    files = export_files(source)
    if seed is not None:
        files = [files[i] for i in np.random.default_rng(seed).permutation(len(files))]
    for path in files:
        for number, row in _rows(path):
            _check(row, path, number)
            row_source = _SOURCE_ALIASES.get(str(row["task_source"]).lower())
            if row_source is None:
                raise ValueError(
                    f"{path}:{number}: unknown task_source {row['task_source']!r}; "
                    f"known: {sorted(_SOURCE_ALIASES)}"
                )
            if row_source == source and row["template_type"] == template_type:
                yield {
                    "inputs_candidates": [row["inputs"]],
                    "targets": row["targets"],
                    "dataset": f"{row_source}:{row['task_name']}",
                }


class ExportSource(StreamingSource):
    """A streaming source over the export files of one (source, template type); its size
    is unknown without reading every file."""

    def __init__(self, source: str, template_type: str) -> None:
        super().__init__(splits=("train",), caching_permitted=False)
        self._source, self._template_type = source, template_type

    def get_dataset(self, split="train", shuffle=True, seed=None, shard_info=None, **kwargs):
        del kwargs
        source, template_type = self._source, self._template_type
        file_seed = (0 if seed is None else int(seed)) if shuffle else None
        ds = tf.data.Dataset.from_generator(
            lambda: stream_examples(source, template_type, file_seed),
            output_signature=TEXT_SIGNATURE,
        )
        if shard_info is not None and shard_info.num_shards > 1:
            ds = ds.shard(shard_info.num_shards, shard_info.index)
        return ds


def register() -> None:
    """Registers the 20 tasks, 5 submixtures and the Flan 2022 mixture (reads no file)."""
    for source in SOURCES:
        for template_type in TEMPLATE_TYPES:
            name = task_name(source, template_type)
            if name not in seqio.TaskRegistry.names():
                seqio.TaskRegistry.add(
                    name,
                    source=ExportSource(source, template_type),
                    preprocessors=list(TEXT_PREPROCESSORS),
                    output_features=output_features(),
                    metric_fns=[],
                    shuffle_buffer_size=SHUFFLE_BUFFER,
                )
        submix = f"flan2022.{source}_submix"
        if submix not in seqio.MixtureRegistry.names():
            seqio.MixtureRegistry.add(
                submix, [(task_name(source, t), 1.0) for t in SUBMIX_TEMPLATES[source]]
            )
    if MIXTURE not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(
            MIXTURE, [(f"flan2022.{s}_submix", rate) for s, rate in SUBMIX_RATES.items()]
        )


EXPORT_MIXTURES = (MIXTURE, *(f"flan2022.{s}_submix" for s in SOURCES))

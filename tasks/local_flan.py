"""SeqIO tasks and mixtures over the local FLAN mix in ``$FLAN_MOE_DATA_DIR``.

Tasks (splits ``train`` and ``validation``; see ``flan_moe.data.records``):

- ``flan_mini.<dataset>``: the 14 FLAN-2021/T0-style datasets.
- ``flan_cot.<dataset>``: the 7 FLAN v2 chain-of-thought datasets.

Each example is rendered zero-shot or few-shot (``templates.DEFAULT_SHOTS`` exemplars from the
train split) with equal probability, and with or without options, by a stable hash of its id
(``templates.prompt_variant``), so each task holds FLAN 2022's zs/fs split within it.

Mixtures (examples-proportional with a cap of ``EXAMPLE_CAP`` examples per dataset, FLAN's
rule: rate = min(#train examples, cap)):

- ``flan_mini``, ``flan_cot``: one collection each; ``flan_local``: both, examples-proportional.
- ``flan2022_local``: Flan 2022's submix rates restricted to what exists locally
  (flan2021 40 : cot 5, i.e. 8/9 and 1/9; t0, niv2 and dialog are not available locally).
"""

from __future__ import annotations

import functools

import seqio

from flan_moe.data import records as rec
from flan_moe.data import templates
from flan_moe.data.seqio_glue import (
    TEXT_PREPROCESSORS,
    generator_source,
    output_features,
    shuffled_order,
)

EXAMPLE_CAP = 3000
FLAN2022_RATES = {"flan2021": 0.40, "t0": 0.32, "niv2": 0.20, "cot": 0.05, "dialog": 0.03}
COLLECTIONS = {"flan_mini": rec.MINI_DATASETS, "flan_cot": rec.COT_DATASETS}


def task_name(collection: str, dataset: str) -> str:
    return f"{collection}.{dataset}"


def _make_examples(collection: str, dataset: str):
    cot = collection == "flan_cot"

    def make(split: str, shuffle: bool, seed: int | None):
        records = rec.read_records(collection, dataset, split)
        pool = rec.read_records(collection, dataset, "train")
        for i in shuffled_order(len(records), shuffle, seed):
            record = records[i]
            shots = (
                templates.choose_exemplars(record, pool, templates.DEFAULT_SHOTS)
                if templates.prompt_variant(record) == "fs"
                else []
            )
            rendered = templates.render(record, cot=cot, exemplars=shots)
            yield {
                "inputs_candidates": list(rendered.candidates),
                "targets": rendered.targets,
                "dataset": f"{collection}.{dataset}",
            }

    return make


def _num_train(collection: str, dataset: str) -> int:
    return len(rec.read_records(collection, dataset, "train"))


def _capped_rate(collection: str, dataset: str, task: seqio.Task | None = None) -> float:
    """FLAN's examples-proportional rate with a cap."""
    return float(min(_num_train(collection, dataset), EXAMPLE_CAP))


def _add_task(collection: str, dataset: str) -> None:
    name = task_name(collection, dataset)
    if name in seqio.TaskRegistry.names():
        return
    seqio.TaskRegistry.add(
        name,
        source=generator_source(_make_examples(collection, dataset), splits=rec.SPLITS),
        preprocessors=list(TEXT_PREPROCESSORS),
        output_features=output_features(),
        metric_fns=[],
        shuffle_buffer_size=None,
    )


def _add_mixture(name: str, tasks: list) -> None:
    if name not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(name, tasks)


def register() -> None:
    """Registers every local task and mixture (idempotent; reads no file)."""
    collection_tasks: dict[str, list] = {}
    for collection, datasets in COLLECTIONS.items():
        entries = []
        for dataset in datasets:
            _add_task(collection, dataset)
            rate = functools.partial(_capped_rate, collection, dataset)
            entries.append((task_name(collection, dataset), rate))
        collection_tasks[collection] = entries
        _add_mixture(collection, entries)
    _add_mixture("flan_local", collection_tasks["flan_mini"] + collection_tasks["flan_cot"])
    _add_mixture(
        "flan2022_local",
        [("flan_mini", FLAN2022_RATES["flan2021"]), ("flan_cot", FLAN2022_RATES["cot"])],
    )


def local_task_names() -> list[str]:
    return [task_name(c, d) for c, datasets in COLLECTIONS.items() for d in datasets]


LOCAL_MIXTURES = ("flan_mini", "flan_cot", "flan_local", "flan2022_local")

"""SeqIO registries; importing the package registers every task and mixture (reads no data file).

Installed as ``flan_moe_tasks`` (not the generic top-level name ``tasks``); load it with
``flan_moe.cli.task_registry.register_tasks()``, which works from an installed wheel and
from a checkout alike. Imports inside the package are relative, so it works under
either name.

- ``tasks.local_flan``: the local FLAN mix (``flan_mini.*``, ``flan_cot.*``, ``flan_mini``,
  ``flan_cot``, ``flan_local``, ``flan2022_local``); ``tasks.local_clusters``: its two disjoint
  task clusters (``flan_local_knowledge``, ``flan_local_commonsense``; ablation_merging).
- ``tasks.flan_collection``: the TFDS-backed FLAN collection (``flan.*``, ``flan2021_tfds``,
  ``t0_tfds``, ``flan2022``).
- ``tasks.flan2022_exports``: the Flan 2022 collection from its public jsonl / parquet
  exports (``flan2022.<source>_<template type>``, ``flan2022.<source>_submix``,
  ``flan2022_exports``).
- ``tasks.pretraining``: span-corruption pre-training (``c4_span_corruption``,
  ``local_corpus_span_corruption``).
- ``tasks.heldout``: MMLU / BBH / GSM8K / SVAMP evaluation tasks (never in a training mixture).

Names are documented in WORKSPACE.md.
"""

from . import (
    flan2022_exports,
    flan_collection,
    heldout,
    local_clusters,
    local_flan,
    pretraining,
)

local_flan.register()
local_clusters.register()
heldout.register()
flan_collection.register()
pretraining.register()
flan2022_exports.register()

TRAINING_MIXTURES: tuple[str, ...] = (
    *local_flan.LOCAL_MIXTURES,
    *local_clusters.CLUSTER_MIXTURES,
    *flan_collection.TFDS_MIXTURES,
    *flan2022_exports.EXPORT_MIXTURES,
)

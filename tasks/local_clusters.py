"""Two disjoint clusters of the local FLAN mix, for merging models tuned on different data.

``ablation_merging`` instruction-tunes one model per cluster and merges them, against the
model tuned on their union (``flan_local``). The clusters split the 21 local datasets by
task type, read from their names:

- ``flan_local_knowledge``: answering from world or scientific knowledge, and arithmetic
  word problems: flan_mini.{aqua, arc_challenge, arc_easy, boolq, jeopardy_all, math_qa,
  openbook_qa, triviaqa_sm_sub} and flan_cot.{aqua, creak, gsm8k, qasc, strategyqa};
- ``flan_local_commonsense``: everyday physical / social commonsense and coreference:
  flan_mini.{commonsense_qa, copa, piqa, siqa, winograd_wsc, winogrande} and
  flan_cot.{ecqa, sensemaking}.

Together they hold exactly ``flan_local``'s tasks (a test checks), with its rates
(examples-proportional, capped at ``local_flan.EXAMPLE_CAP``).
"""

from __future__ import annotations

import functools

from . import local_flan

CLUSTERS: dict[str, dict[str, tuple[str, ...]]] = {
    "flan_local_knowledge": {
        "flan_mini": ("aqua", "arc_challenge", "arc_easy", "boolq", "jeopardy_all", "math_qa",
                      "openbook_qa", "triviaqa_sm_sub"),
        "flan_cot": ("aqua", "creak", "gsm8k", "qasc", "strategyqa"),
    },
    "flan_local_commonsense": {
        "flan_mini": ("commonsense_qa", "copa", "piqa", "siqa", "winograd_wsc", "winogrande"),
        "flan_cot": ("ecqa", "sensemaking"),
    },
}  # fmt: skip
CLUSTER_MIXTURES = tuple(CLUSTERS)
UNION_MIXTURE = "flan_local"


def cluster_tasks(cluster: str) -> list[str]:
    """The task names of one cluster (``flan_mini.aqua`` ...)."""
    return [
        local_flan.task_name(collection, dataset)
        for collection, datasets in CLUSTERS[cluster].items()
        for dataset in datasets
    ]


def register() -> None:
    """Registers the cluster mixtures (after ``local_flan.register``; reads no file)."""
    local_flan.register()
    for cluster, members in CLUSTERS.items():
        entries = [
            (local_flan.task_name(c, d), functools.partial(local_flan._capped_rate, c, d))
            for c, datasets in members.items()
            for d in datasets
        ]
        local_flan._add_mixture(cluster, entries)

"""The merging ablation's FLAN clusters are disjoint and together exactly flan_local."""

import seqio

from flan_moe.cli.task_registry import register_tasks

local_clusters = register_tasks().local_clusters  # registers every mixture


def _leaf_tasks(name):
    return sorted(t.name for t in seqio.get_mixture_or_task(name).tasks)


def test_clusters_partition_flan_local(data_dir):  # the rates count train examples
    knowledge, commonsense = (set(_leaf_tasks(m)) for m in local_clusters.CLUSTER_MIXTURES)
    assert knowledge and commonsense and not knowledge & commonsense
    assert sorted(knowledge | commonsense) == _leaf_tasks(local_clusters.UNION_MIXTURE)
    for name in local_clusters.CLUSTER_MIXTURES:
        assert _leaf_tasks(name) == sorted(local_clusters.cluster_tasks(name))
    # the same examples-proportional rates as in the union
    union = seqio.get_mixture_or_task("flan_local")
    mix = seqio.get_mixture_or_task("flan_local_knowledge")
    task = seqio.get_mixture_or_task("flan_mini.boolq")
    assert mix.get_rate(task) == union.get_rate(task)

"""The device mesh over ('data', 'expert', 'model') and the logical axis rules.

Model code names logical axes only (``batch``, ``embed``, ``expert`` ...);
``logical_axis_rules`` is the one place that maps them to mesh axes:

* data parallelism shards ``batch`` over both the ``data`` and ``expert`` axes (the
  expert axis is data-parallel for every non-expert computation, as in t5x's MoE);
* expert parallelism shards the stacked expert params and the dispatched tokens
  over ``expert`` (tokens move between the two layouts by all-to-all);
* model (tensor) parallelism shards ``mlp``, ``heads``, ``vocab`` and
  ``expert_mlp`` over ``model``.

Typical use::

    mesh = make_mesh(data=2, expert=2, model=2)
    with axis_rules(mesh):
        shardings = params_shardings(jax.eval_shape(model.init, rng, *inputs), mesh)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flan_moe.model.config import ModelConfig

MESH_AXES = ("data", "expert", "model")

LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]


def logical_axis_rules() -> LogicalRules:
    """Logical axis name -> mesh axis (or axes, or None = replicated)."""
    return (
        # activations
        ("batch", ("data", "expert")),
        ("length", None),
        ("embed", None),
        ("mlp", "model"),
        ("heads", "model"),
        ("kv", None),
        ("vocab", "model"),
        ("relpos_buckets", None),
        ("layers", None),  # the scanned-blocks axis (ModelConfig.scan_layers)
        # mixture of experts
        ("expert", "expert"),
        ("expert_mlp", "model"),
        ("expert_replicas", "data"),
        ("expert_group", ("data", "expert")),
        ("unmodeled", None),
    )


def make_mesh(
    *,
    data: int = -1,
    expert: int = 1,
    model: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A mesh of shape (data, expert, model); one of the counts may be -1 (= the rest).

    Raises a ValueError naming the counts when they do not divide the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    counts = {"data": data, "expert": expert, "model": model}
    unknown = [name for name, c in counts.items() if c == -1]
    if len(unknown) > 1:
        raise ValueError(f"at most one of data/expert/model may be -1, got {counts}")
    for name, c in counts.items():
        if c == 0 or c < -1:
            raise ValueError(f"{name} partitions must be positive (or -1), got {c}")
    known = int(np.prod([c for c in counts.values() if c != -1]))
    if unknown:
        if n % known:
            raise ValueError(
                f"{n} devices cannot be split into {counts}: {known} does not divide {n}. "
                "Choose partition counts whose product divides the device count."
            )
        counts[unknown[0]] = n // known
    elif known != n:
        raise ValueError(
            f"mesh {counts} needs {known} devices but {n} are available. "
            "Choose counts whose product is the device count, or set one to -1."
        )
    shape = (counts["data"], counts["expert"], counts["model"])
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


@contextlib.contextmanager
def axis_rules(mesh: Mesh, rules: LogicalRules | None = None) -> Iterator[None]:
    """Activate the mesh and logical rules so ``nn.with_logical_constraint`` applies."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules or logical_axis_rules()):
        yield


def logical_to_sharding(logical_specs, mesh: Mesh, rules: LogicalRules | None = None):
    """A tree of logical PartitionSpecs -> a tree of NamedShardings on ``mesh``."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, list(rules or logical_axis_rules()))


def params_partition_specs(abstract_variables, rules: LogicalRules | None = None):
    """Mesh PartitionSpecs for a (boxed) variable tree from ``jax.eval_shape(model.init)``."""
    logical = nn.get_partition_spec(abstract_variables)
    return nn.logical_to_mesh(logical, list(rules or logical_axis_rules()))


def params_shardings(abstract_variables, mesh: Mesh, rules: LogicalRules | None = None):
    """NamedShardings for every leaf of a (boxed) variable tree, by its logical axes."""
    return logical_to_sharding(nn.get_partition_spec(abstract_variables), mesh, rules)


def batch_spec() -> PartitionSpec:
    """Batch arrays [batch, length] are split over the data and expert axes."""
    return PartitionSpec(("data", "expert"))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, batch_spec())


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Place a host batch of numpy arrays onto the mesh, split along its first axis.

    Single-host: the whole batch is on this host. (Multi-host callers build global
    arrays from per-host shards with ``jax.make_array_from_process_local_data``.)
    """
    sharding = batch_sharding(mesh)
    batch_parts = mesh.shape["data"] * mesh.shape["expert"]
    out = {}
    for name, value in batch.items():
        if value.shape[0] % batch_parts:
            raise ValueError(
                f"batch feature {name!r} has {value.shape[0]} rows, not divisible by the "
                f"{batch_parts} data x expert partitions; use a batch size that is a multiple"
            )
        if jax.process_count() > 1:
            out[name] = jax.make_array_from_process_local_data(sharding, value)
        else:
            out[name] = jax.device_put(value, sharding)
    return out


def with_mesh_groups(config: ModelConfig, mesh: Mesh) -> ModelConfig:
    """``config`` with MoE routing groups a multiple of the data x expert devices.

    ``MoeConfig.num_groups_multiple`` becomes lcm(its value, data x expert), so every
    device routes whole groups of its own tokens (``expert_group`` is sharded over
    data x expert): with fewer groups than devices the MoE layer would run replicated.
    ``num_expert_replicas`` is set as flaxformer infers it from the mesh.
    Grouping changes no parameter; only the capacity per group follows the group size.
    """
    if config.moe is None or config.moe.route_per_sequence:
        return config
    devices = mesh.shape["data"] * mesh.shape["expert"]
    multiple = math.lcm(config.moe.num_groups_multiple, devices)
    # group_count="flaxformer" rounds to a multiple of E x num_expert_replicas, which
    # flaxformer infers from the mesh (moe_layers._num_expert_replicas): device_count //
    # (expert x model partitions).
    replicas = max(1, mesh.size // (mesh.shape["expert"] * mesh.shape["model"]))
    return config.replace(
        moe=config.moe.replace(num_groups_multiple=multiple, num_expert_replicas=replicas)
    )

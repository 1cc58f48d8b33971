"""The default switch_tiny_8 train step on the fake 8-device mesh runs the MoE layers
sharded: no all-gather of routing arrays or expert weights, all-to-alls for expert
parallelism, and per-device FLOPs close to total / devices (XLA's cost analysis; the
step is compiled, never run)."""

import re

import jax
import pytest

from flan_moe import partitioning
from flan_moe.model.config import get_config
from flan_moe.training import step_cost

BATCH, INPUTS, TARGETS = 16, 64, 16


@pytest.fixture(scope="module")
def compiled_step():
    mesh = partitioning.make_mesh(data=2, expert=4)
    config = get_config("switch_tiny_8")  # the default config: nothing overridden
    trainer_step = step_cost.compile_train_step(
        config, mesh, batch_size=BATCH, inputs=INPUTS, targets=TARGETS
    )
    return trainer_step


def test_groups_follow_the_mesh():
    mesh = partitioning.make_mesh(data=2, expert=4)
    config = partitioning.with_mesh_groups(get_config("switch_tiny_8"), mesh)
    assert config.moe.num_groups_multiple == 8
    assert partitioning.with_mesh_groups(get_config("tiny"), mesh) == get_config("tiny")


def test_no_all_gather_of_routing_or_expert_weights(compiled_step):
    ops = step_cost.collective_ops(compiled_step.compiled)
    moe_gathers = [line for line in ops["all-gather"] if re.search(r"/moe/", line)]
    assert moe_gathers == [], "\n".join(moe_gathers)
    # Expert parallelism (expert=4): tokens reach their experts by all-to-all.
    assert ops["all-to-all"], "no all-to-all in the partitioned step"


def test_per_device_flops_near_total_over_devices(compiled_step):
    per_device = step_cost.step_cost(compiled_step.compiled)["flops"]
    total = compiled_step.total_flops
    devices = jax.device_count()
    assert devices == 8
    assert per_device <= 1.2 * total / devices, (per_device, total / devices)

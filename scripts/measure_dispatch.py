"""Per-device FLOPs and temp memory of one MoE layer, per size and dispatch path (XLA only).

For each registered MoE size, one sparse encoder ``MoeBlock`` of that size's shapes
(forward + backward: grads of a mean-square loss w.r.t. params and inputs) is compiled
on a fake 8-device CPU mesh (data=2 x expert=4, routing groups a multiple of 8, as the
Trainer sets them) for ``--tokens`` = batch x length tokens, once per path: ``einsum``,
``gather``, ``dropless``. Nothing runs: XLA's cost analysis gives per-device FLOPs, its
memory analysis the temp bytes. One JSON line per (size, path), then a table.

    python scripts/measure_dispatch.py                          # all MoE base/large sizes
    python scripts/measure_dispatch.py --size switch_base_8 --setting 32x512
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # before JAX starts: the fake 8-device CPU mesh
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    os.environ["JAX_PLATFORMS"] = "cpu"

import argparse
import json

import flax.linen as nn
import jax
import jax.numpy as jnp

from flan_moe import partitioning
from flan_moe.model.config import ModelConfig, get_config
from flan_moe.model.moe import MoeBlock

SIZES = ("switch_base_8", "switch_base_128", "switch_large_128", "gs_base", "ec_base")
PATHS = ("einsum", "gather", "dropless")


def path_config(config: ModelConfig, path: str, mesh) -> ModelConfig | None:
    """The size's config with one dispatch path; None where the path does not apply."""
    moe = config.moe
    if path == "dropless" and moe.encoder_router == "experts_choose":
        return None  # expert choice always has a capacity
    moe = moe.replace(
        dispatch="einsum" if path == "einsum" else "gather", dropless=path == "dropless"
    )
    return partitioning.with_mesh_groups(config.replace(moe=moe), mesh)


def measure(size: str, path: str, batch: int, length: int, mesh) -> dict | None:
    config = path_config(get_config(size, dtype="bfloat16", dropout_rate=0.0), path, mesh)
    if config is None:
        return None
    block = MoeBlock(config, decoder=False)
    x = jax.ShapeDtypeStruct((batch, length, config.d_model), jnp.bfloat16)
    mask = jnp.ones((batch, length), bool)
    with partitioning.axis_rules(mesh):
        abstract = jax.eval_shape(
            lambda x: block.init(jax.random.PRNGKey(0), x, padding_mask=mask, enable_dropout=False),
            x,
        )
    # unbox outside the rules: under them it would apply sharding constraints eagerly
    shardings = nn.unbox(partitioning.params_shardings(abstract, mesh)["params"])
    params = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        nn.unbox(abstract["params"]),
        shardings,
    )
    x = jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=partitioning.batch_sharding(mesh))
    with partitioning.axis_rules(mesh):

        def loss(params, x):
            y = block.apply(
                {"params": params}, x, padding_mask=mask, enable_dropout=False,
                mutable=["moe_losses", "moe_metrics"],
            )[0]  # fmt: skip
            return jnp.mean(jnp.square(y.astype(jnp.float32)))

        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    memory = compiled.memory_analysis()
    return {
        "size": size, "path": path, "tokens": f"{batch}x{length}",
        "experts": config.moe.num_experts, "groups_multiple": config.moe.num_groups_multiple,
        "gflops_per_device": round(cost["flops"] / 1e9, 3),
        "temp_mib_per_device": round(memory.temp_size_in_bytes / 2**20, 1),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", action="append", help="size-table name (repeatable)")
    parser.add_argument("--setting", default="32x512", help="BATCHxLENGTH tokens")
    parser.add_argument("--paths", default=",".join(PATHS))
    args = parser.parse_args(argv)
    batch, length = (int(v) for v in args.setting.split("x"))
    mesh = partitioning.make_mesh(data=2, expert=4)
    rows = []
    for size in args.size or SIZES:
        for path in args.paths.split(","):
            row = measure(size, path, batch, length, mesh)
            if row is not None:
                print(json.dumps(row), flush=True)
                rows.append(row)
    header = ("size", "path", "tokens", "gflops_per_device", "temp_mib_per_device")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in header) + " |")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])

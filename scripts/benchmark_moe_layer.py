"""Micro-benchmark of one MoE layer for each dispatch path: tokens/s, ms, TFLOP/s.

Paths: ``einsum`` (one-hot dispatch/combine), ``gather`` (precomputed-index gathers +
one batched expert matmul), ``dropless`` (sort + ``jax.lax.ragged_dot``).

Prints one JSON line per path, then a table. TFLOP/s counts only the useful expert
matmul FLOPs (2 * tokens * k * d_model * d_ff * {2 ReLU, 3 gated}), so it compares
paths directly ("TFLOP/s-equivalent" in DESIGN.md).

    python scripts/benchmark_moe_layer.py                      # tiny, runs on CPU
    python scripts/benchmark_moe_layer.py --size switch_base --dtype bfloat16 --backward
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from flan_moe.model.config import ModelConfig, MoeConfig
from flan_moe.model.moe import MoeBlock

PRESETS = {
    # name: (batch, length, d_model, d_ff, experts, k, activation)
    "tiny": (8, 256, 64, 256, 8, 1, "relu"),
    "switch_base": (32, 512, 768, 3072, 8, 1, "relu"),
    "switch_base_64": (32, 512, 768, 3072, 64, 1, "relu"),
    "gs_base": (32, 512, 768, 2048, 32, 2, "gated-gelu"),
}
PATHS = ("einsum", "gather", "dropless")


def build(args: argparse.Namespace, path: str) -> tuple[MoeBlock, ModelConfig]:
    moe = MoeConfig(
        num_experts=args.experts,
        num_selected_experts=args.k,
        capacity_factor_train=args.capacity_factor,
        capacity_factor_eval=args.capacity_factor,
        max_group_size=args.max_group_size,
        dispatch="einsum" if path == "einsum" else "gather",
        dropless=path == "dropless",
        aux_loss_coef=0.01,
    )
    config = ModelConfig(
        name="bench",
        d_model=args.d_model,
        d_ff=args.d_ff,
        mlp_activation=args.activation,
        dtype=args.dtype,
        dropout_rate=0.0,
        moe=moe,
    )
    return MoeBlock(config, decoder=False), config


def time_fn(fn, *fn_args, steps: int, warmup: int) -> float:
    """Median seconds per call of a jitted function (compile excluded)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*fn_args))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*fn_args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(args: argparse.Namespace) -> list[dict]:
    tokens = args.batch * args.length
    x = jax.random.normal(jax.random.PRNGKey(0), (args.batch, args.length, args.d_model))
    x = x.astype(jnp.dtype(args.dtype))
    mask = jnp.ones((args.batch, args.length), bool)
    params = None
    rows = []
    gated = args.activation.startswith("gated")
    useful_flops = 2 * tokens * args.k * args.d_model * args.d_ff * (3 if gated else 2)
    for path in args.paths:
        block, _ = build(args, path)
        if params is None:  # all paths share one parameter layout
            init = jax.jit(
                lambda r, x, block=block: block.init(r, x, padding_mask=mask, enable_dropout=False)
            )
            params = nn.unbox(init(jax.random.PRNGKey(1), x)["params"])

        def forward(params, x, block=block):
            y, state = block.apply(
                {"params": params}, x, padding_mask=mask, enable_dropout=False,
                mutable=["moe_losses", "moe_metrics"],
            )  # fmt: skip
            return y, state["moe_metrics"]["fraction_dropped"]

        def loss(params, x, block=block):
            y = block.apply({"params": params}, x, padding_mask=mask, enable_dropout=False)
            return jnp.mean(jnp.square(y.astype(jnp.float32)))

        fwd = jax.jit(forward)
        _, dropped = fwd(params, x)
        seconds = time_fn(fwd, params, x, steps=args.steps, warmup=args.warmup)
        row = {
            "path": path,
            "device": jax.devices()[0].device_kind,
            "tokens": tokens,
            "d_model": args.d_model,
            "d_ff": args.d_ff,
            "experts": args.experts,
            "k": args.k,
            "dtype": args.dtype,
            "fraction_dropped": float(dropped),
            "forward_ms": seconds * 1e3,
            "forward_tokens_per_s": tokens / seconds,
            "forward_tflops": useful_flops / seconds / 1e12,
        }
        if args.backward:
            grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
            seconds = time_fn(grad, params, x, steps=args.steps, warmup=args.warmup)
            row["train_ms"] = seconds * 1e3
            row["train_tokens_per_s"] = tokens / seconds
            row["train_tflops"] = 3 * useful_flops / seconds / 1e12
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = f"{'path':<9} {'dropped':>8} {'fwd ms':>9} {'fwd tok/s':>12} {'fwd TFLOP/s':>12}"
    if rows and "train_ms" in rows[0]:
        head += f" {'train ms':>9} {'train tok/s':>12} {'train TFLOP/s':>14}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (
            f"{r['path']:<9} {r['fraction_dropped']:>8.3f} {r['forward_ms']:>9.3f} "
            f"{r['forward_tokens_per_s']:>12,.0f} {r['forward_tflops']:>12.4f}"
        )
        if "train_ms" in r:
            line += (
                f" {r['train_ms']:>9.3f} {r['train_tokens_per_s']:>12,.0f} "
                f"{r['train_tflops']:>14.4f}"
            )
        lines.append(line)
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--size", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--batch", type=int)
    p.add_argument("--length", type=int)
    p.add_argument("--d_model", type=int)
    p.add_argument("--d_ff", type=int)
    p.add_argument("--experts", type=int)
    p.add_argument("--k", type=int)
    p.add_argument("--activation", choices=["relu", "gated-gelu", "gated-silu"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--capacity_factor", type=float, default=1.25)
    p.add_argument("--max_group_size", type=int, default=4096)
    p.add_argument(
        "--paths", default=",".join(PATHS), help="comma-separated subset of " + ",".join(PATHS)
    )
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--backward", action="store_true", help="also time forward+backward")
    args = p.parse_args(argv)
    preset = dict(
        zip(
            ("batch", "length", "d_model", "d_ff", "experts", "k", "activation"), PRESETS[args.size]
        )
    )
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    unknown = sorted(set(args.paths) - set(PATHS))
    if unknown:
        p.error(f"unknown paths {unknown}; choose from {list(PATHS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rows = run(args)
    print(table(rows))


if __name__ == "__main__":
    main()

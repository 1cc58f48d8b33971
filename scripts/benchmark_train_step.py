"""Train-step throughput on synthetic batches (no TensorFlow needed).

For each (model, batch x inputs/targets) setting: compile the train step, run warm-up
steps, then time ``--steps`` steps. Reports step time, tokens/s (batch x (inputs +
targets) per step, every position a real token), model TFLOP/s = 6 x active params x
tokens / step time (attention FLOPs left out, as the Hugging Face reference numbers
in benchmarks/RESULTS.md), and MFU against a dense matmul ceiling measured on the
same device. Prints one JSON line per setting, then a table.

Examples::

    # CPU smoke numbers
    python scripts/benchmark_train_step.py --model tiny --setting 8x512x128 --steps 5
    # one GPU, the issue's settings
    python scripts/benchmark_train_step.py --model switch_base_8 --model base \\
        --setting 32x512x128 --setting 8x2048x512
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from flan_moe import partitioning
from flan_moe.model.config import get_config
from flan_moe.model.flops import model_cost
from flan_moe.training.optimizers import OptimizerConfig
from flan_moe.training.synthetic import synthetic_batch
from flan_moe.training.trainer import Trainer


def matmul_ceiling_tflops(dtype: str, *, size: int | None = None, repeats: int = 10) -> float:
    """Measured TFLOP/s of a square matmul on the default device (the MFU denominator)."""
    on_cpu = jax.default_backend() == "cpu"
    n = size or (1024 if on_cpu else 8192)
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = f(a, a)
    out.block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def parse_setting(text: str) -> tuple[int, int, int]:
    try:
        batch, inputs, targets = (int(x) for x in text.lower().split("x"))
    except ValueError:
        message = f"--setting {text!r}: write BATCHxINPUTSxTARGETS, e.g. 32x512x128"
        raise SystemExit(message) from None
    return batch, inputs, targets


def benchmark(
    model: str, setting: str, *, steps: int, warmup: int, mesh_shape, dtype: str, optimizer: str,
    ceiling: float, microbatches: int,
) -> dict:  # fmt: skip
    batch_size, inputs, targets = parse_setting(setting)
    config = get_config(model, dtype=dtype)
    mesh = partitioning.make_mesh(data=mesh_shape[0], expert=mesh_shape[1], model=mesh_shape[2])
    trainer = Trainer(
        model_config=config,
        optimizer_config=OptimizerConfig(name=optimizer, learning_rate=1e-4),
        mesh=mesh,
        num_microbatches=microbatches,
    )
    lengths = {"inputs": inputs, "targets": targets}
    batches = [
        trainer.shard(
            synthetic_batch(
                step=i,
                batch_size=batch_size,
                feature_lengths=lengths,
                vocab_size=config.vocab_size,
                full_length=True,
            )
        )
        for i in range(2)
    ]
    state = trainer.init(0)
    start = time.perf_counter()
    state, metrics = trainer.train_step(state, batches[0])
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    for i in range(warmup):
        state, metrics = trainer.train_step(state, batches[i % 2])
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = trainer.train_step(state, batches[i % 2])
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / steps
    tokens = batch_size * (inputs + targets)
    cost = model_cost(config, input_length=inputs, target_length=targets)
    tflops = 6 * cost.active_params * tokens / step_s / 1e12
    return {
        "model": model,
        "setting": setting,
        "device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
        "dtype": dtype,
        "optimizer": optimizer,
        "mesh": list(mesh_shape),
        "total_params": int(cost.total_params),
        "active_params": float(cost.active_params),
        "compile_s": round(compile_s, 2),
        "step_ms": round(step_s * 1e3, 2),
        "steps_per_s": round(1 / step_s, 3),
        "tokens_per_s": round(tokens / step_s, 1),
        "model_tflops": round(tflops, 4),
        "matmul_ceiling_tflops": round(ceiling, 4),
        "mfu": round(tflops / ceiling, 4),
        "final_loss": float(np.asarray(metrics["loss"])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="size-table name (repeatable)")
    parser.add_argument("--setting", action="append", help="BATCHxINPUTSxTARGETS (repeatable)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mesh", default="-1,1,1", help="data,expert,model partitions")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--optimizer", default="adafactor", choices=["adafactor", "adamw"])
    parser.add_argument("--microbatches", type=int, default=1)
    args = parser.parse_args()
    mesh_shape = tuple(int(x) for x in args.mesh.split(","))
    ceiling = matmul_ceiling_tflops(args.dtype)
    rows = []
    for model in args.model or ["tiny"]:
        for setting in args.setting or ["8x512x128"]:
            row = benchmark(
                model, setting, steps=args.steps, warmup=args.warmup, mesh_shape=mesh_shape,
                dtype=args.dtype, optimizer=args.optimizer, ceiling=ceiling,
                microbatches=args.microbatches,
            )  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    header = ("model", "setting", "step_ms", "tokens_per_s", "model_tflops", "mfu", "device")
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in header) + " |")


if __name__ == "__main__":
    main()

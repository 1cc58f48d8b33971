"""Train-step throughput on synthetic batches (no TensorFlow needed).

For each (model, batch x inputs/targets) setting: compile the train step, run warm-up
steps, then time ``--steps`` steps. Reports step time, tokens/s (batch x (inputs +
targets) per step, every position a real token), model TFLOP/s = 6 x active params x
tokens / step time (attention FLOPs left out, as the Hugging Face reference numbers
in benchmarks/RESULTS.md), and MFU against a dense matmul ceiling measured on the
same device. Prints one JSON line per setting, then a table.

``--cpu-bars`` measures the issue-15 CPU bars from XLA alone (compile, never run, on
a fake 8-device CPU mesh; each compile in a fresh process with no compilation cache;
one JSON line per measurement and per bar, then a table): per-device FLOPs of the
switch_base_8 train step over its dense twin's (default dispatch), compile time with
``scan_layers`` over unrolled (trace + lower and XLA compile, wall clock and CPU
seconds; the bar holds only if both ratios do), and XLA's memory analysis at 8 x 2048/512 with the
default remat for that setting (``default_remat``). ``--vs-hf`` also times the Hugging
Face transformers model of the same config (PyTorch, bf16 autocast, AdamW) in the same
process on the same device and prints our tokens/s over theirs.

Examples::

    # the CPU bars (10-40 minutes on 2 shared cores)
    python scripts/benchmark_train_step.py --cpu-bars
    # ours vs Hugging Face, one GPU
    python scripts/benchmark_train_step.py --model switch_base_8 --setting 32x512x128 --vs-hf

    # CPU smoke numbers
    python scripts/benchmark_train_step.py --model tiny --setting 8x512x128 --steps 5
    # one GPU, the issue's settings
    python scripts/benchmark_train_step.py --model switch_base_8 --model base \\
        --setting 32x512x128 --setting 8x2048x512
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

if "--cpu-bars" in sys.argv or "--cpu-bars-arm" in sys.argv:
    # Before JAX starts: the fake 8-device CPU mesh, and no persistent compilation cache
    # (every compile the bars time is a cold one).
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"

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


def default_remat(inputs: int, targets: int) -> str:
    """The remat policy for a setting: none up to 512 tokens, "full" for longer rows.

    At 8 x 2048/512 the switch_base_8 step holds 131 GiB without remat (attention
    buffers grow with length^2); see benchmarks/RESULTS.md for the measurement."""
    return "full" if max(inputs, targets) > 512 else "none"


def model_config(
    model: str, setting: str, *, dtype: str, remat: str, scan: bool, overrides: dict | None = None
):
    """The size's config for a setting; ``overrides``: attention, dispatch, dropout."""
    _, inputs, targets = parse_setting(setting)
    remat = default_remat(inputs, targets) if remat == "auto" else remat
    config = get_config(model, dtype=dtype, remat_policy=remat, scan_layers=scan)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "attention" in overrides:
        config = config.replace(attention_implementation=overrides["attention"])
    if "dropout" in overrides:
        config = config.replace(dropout_rate=overrides["dropout"])
    if "dispatch" in overrides and config.moe is not None:
        path = overrides["dispatch"]
        moe = config.moe.replace(
            dispatch="einsum" if path == "einsum" else "gather", dropless=path == "dropless"
        )
        config = config.replace(moe=moe)
    return config


def benchmark(
    model: str, setting: str, *, steps: int, warmup: int, mesh_shape, dtype: str, optimizer: str,
    ceiling: float, microbatches: int, remat: str = "auto", scan: bool = False,
    overrides: dict | None = None,
) -> dict:  # fmt: skip
    batch_size, inputs, targets = parse_setting(setting)
    config = model_config(model, setting, dtype=dtype, remat=remat, scan=scan, overrides=overrides)
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
        "remat": config.remat_policy,
        "scan_layers": config.scan_layers,
        "attention": config.attention_implementation,
        "dispatch": (
            None
            if config.moe is None
            else "dropless"
            if config.moe.dropless
            else config.moe.dispatch
        ),
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


# --- the CPU bars (XLA cost / memory analysis; nothing runs) ---------------------

BARS = {"flops_ratio": 1.15, "compile_ratio": 1 / 3, "memory_gib": 70.0}


def _compiled(model: str, setting: str, mesh, *, remat: str = "auto", scan: bool = False):
    """Compile one train step (cold: in-process caches cleared) and measure it.

    ``lower_s``: trace + lower to StableHLO (Python); ``xla_compile_s``: XLA's
    ``Lowered.compile()``; ``compile_s`` their sum (wall clock); ``compile_cpu_s``: the
    process's CPU seconds over both (all threads), less sensitive to other jobs on a
    shared machine than the wall clock."""
    from flan_moe.training.step_cost import compile_train_step, step_cost

    jax.config.update("jax_enable_compilation_cache", False)
    jax.clear_caches()
    batch, inputs, targets = parse_setting(setting)
    config = model_config(model, setting, dtype="bfloat16", remat=remat, scan=scan)
    cpu_start = time.process_time()
    step = compile_train_step(config, mesh, batch_size=batch, inputs=inputs, targets=targets)
    cpu_s = time.process_time() - cpu_start
    cost = step_cost(step.compiled)
    row = {
        "model": model, "setting": setting, "mesh": dict(mesh.shape), "remat": config.remat_policy,
        "scan_layers": scan, "dispatch": config.moe.dispatch if config.moe else None,
        "lower_s": round(step.lower_s, 1), "xla_compile_s": round(step.compile_s, 1),
        "compile_s": round(step.lower_s + step.compile_s, 1), "compile_cpu_s": round(cpu_s, 1),
        "load_average": round(os.getloadavg()[0], 1),
        "flops_per_device": cost["flops"], "total_flops": step.total_flops,
        "temp_gib": round(cost["temp_bytes"] / 2**30, 2),
        "memory_gib": round(cost["total_bytes"] / 2**30, 2),
    }  # fmt: skip
    print(json.dumps({"measurement": row}), flush=True)
    return row


ARMS = {  # name: (model, setting key, mesh, scan)
    "moe_unrolled": ("switch_base_8", "setting", "data2_expert4", False),
    "moe_scanned": ("switch_base_8", "setting", "data2_expert4", True),
    "dense_unrolled": ("switch_base_dense", "setting", "data2_expert4", False),
    "memory": ("switch_base_8", "memory_setting", "one_device", True),
}


def _measure_arm(arm: str, setting: str) -> dict:
    """One arm in this process (``--cpu-bars-arm``): compile it and print its row."""
    model, _, mesh_name, scan = ARMS[arm]
    if mesh_name == "one_device":
        mesh = partitioning.make_mesh(data=1, devices=jax.devices()[:1])
    else:
        mesh = partitioning.make_mesh(data=2, expert=4)
    return _compiled(model, setting, mesh, scan=scan)


def _arm_in_fresh_process(arm: str, setting: str) -> dict:
    """Run one arm in a new Python process (cold JAX and XLA), return its row."""
    command = [sys.executable, __file__, "--cpu-bars-arm", arm, "--bars-setting", setting]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not rows:
        raise SystemExit(f"arm {arm} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    print(json.dumps(rows[-1]), flush=True)
    return rows[-1]["measurement"]


def cpu_bars(setting: str, memory_setting: str) -> list[dict]:
    """The three issue-15 bars, each a JSON line; returns the rows for the table.

    Every arm compiles in its own fresh process; the two compile-time arms run back to
    back so they see about the same machine load."""
    settings = {"setting": setting, "memory_setting": memory_setting}
    rows = {arm: _arm_in_fresh_process(arm, settings[ARMS[arm][1]]) for arm in ARMS}
    moe, dense, scanned, memory = (
        rows["moe_unrolled"],
        rows["dense_unrolled"],
        rows["moe_scanned"],
        rows["memory"],
    )
    bars = [
        {"bar": "flops_ratio", "what": f"per-device FLOPs switch_base_8 / dense twin, {setting}, "
         "mesh data=2 x expert=4", "value": moe["flops_per_device"] / dense["flops_per_device"]},
        {"bar": "compile_ratio", "what": f"compile s (lower + XLA, wall) scanned / unrolled "
         f"switch_base_8, {setting}, fresh process each",
         "value": scanned["compile_s"] / moe["compile_s"],
         "cpu_value": round(scanned["compile_cpu_s"] / moe["compile_cpu_s"], 4),
         "lower_ratio": round(scanned["lower_s"] / moe["lower_s"], 4),
         "xla_compile_ratio": round(scanned["xla_compile_s"] / moe["xla_compile_s"], 4)},
        {"bar": "memory_gib", "what": f"XLA memory analysis switch_base_8 {memory_setting}, one "
         f"device, remat={memory['remat']}", "value": memory["memory_gib"]},
    ]  # fmt: skip
    for bar in bars:
        bar["limit"] = round(BARS[bar["bar"]], 4)
        bar["value"] = round(bar["value"], 4)
        # The compile bar must hold on the wall clock and on CPU seconds alike.
        bar["holds"] = bar["value"] <= bar["limit"] and bar.get("cpu_value", 0) <= bar["limit"]
        print(json.dumps(bar), flush=True)
    return bars


# --- Hugging Face in the same process ---------------------------------------------


def hf_model(config):
    """The Hugging Face model of the same shapes (Switch or T5), random weights."""
    import transformers

    common = dict(
        vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.head_dim,
        d_ff=config.d_ff, num_layers=config.num_encoder_layers,
        num_decoder_layers=config.num_decoder_layers, num_heads=config.num_heads,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance,
        dropout_rate=config.dropout_rate, tie_word_embeddings=config.tie_embeddings,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    if config.moe is None:
        act = {"relu": "relu", "gated-gelu": "gated-gelu"}[config.mlp_activation]
        hf = transformers.T5Config(feed_forward_proj=act, **common)
        return transformers.T5ForConditionalGeneration(hf)
    moe = config.moe
    hf = transformers.SwitchTransformersConfig(
        num_experts=moe.num_experts, expert_capacity=64, encoder_sparse_step=moe.sparse_interval,
        decoder_sparse_step=moe.sparse_interval, router_aux_loss_coef=moe.aux_loss_coef,
        router_z_loss_coef=moe.router_z_loss_coef, **common,
    )  # fmt: skip
    return transformers.SwitchTransformersForConditionalGeneration(hf)


def benchmark_hf(model: str, setting: str, *, steps: int, warmup: int) -> dict:
    """HF transformers train step: PyTorch, bf16 autocast, AdamW, full-length random rows.

    Switch's capacity is per sequence: 1.25 x tokens / experts, as our train factor."""
    import torch

    batch, inputs, targets = parse_setting(setting)
    config = get_config(model)
    net = hf_model(config)
    if config.moe is not None:
        for name, module in net.named_modules():
            if hasattr(module, "expert_capacity") and name.endswith("router"):
                length = targets if ".decoder." in f".{name}" else inputs
                module.expert_capacity = max(1, round(1.25 * length / config.moe.num_experts))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    enc = torch.randint(2, config.vocab_size, (batch, inputs), generator=gen).to(device)
    labels = torch.randint(2, config.vocab_size, (batch, targets), generator=gen).to(device)

    def step():
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = net(input_ids=enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup + 1):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    step_s = (time.perf_counter() - start) / steps
    tokens = batch * (inputs + targets)
    step_ms, tokens_per_s = round(step_s * 1e3, 2), round(tokens / step_s, 1)
    return {"model": f"hf:{model}", "setting": setting, "device": device, "step_ms": step_ms,
            "tokens_per_s": tokens_per_s}  # fmt: skip


def _table(rows: list[dict], header: tuple[str, ...]) -> None:
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row.get(k, "")) for k in header) + " |")


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
    parser.add_argument("--remat", default="auto", choices=["auto", "none", "full", "dots"])
    parser.add_argument("--scan", action="store_true", help="scan_layers=True")
    parser.add_argument("--attention", choices=["xla", "dot_product", "cudnn"])
    parser.add_argument("--dispatch", choices=["einsum", "gather", "dropless"])
    parser.add_argument("--dropout", type=float, help="override dropout_rate (fused attention: 0)")
    parser.add_argument("--vs-hf", action="store_true", help="also time Hugging Face's model")
    parser.add_argument("--cpu-bars", action="store_true", help="the XLA-only CPU bars")
    parser.add_argument("--bars-setting", default="32x512x128")
    parser.add_argument("--memory-setting", default="8x2048x512")
    parser.add_argument("--cpu-bars-arm", choices=sorted(ARMS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_bars_arm:
        _measure_arm(args.cpu_bars_arm, args.bars_setting)
        return
    if args.cpu_bars:
        bars = cpu_bars(args.bars_setting, args.memory_setting)
        _table(bars, ("bar", "what", "value", "limit", "holds"))
        raise SystemExit(0 if all(b["holds"] for b in bars) else 1)
    mesh_shape = tuple(int(x) for x in args.mesh.split(","))
    ceiling = matmul_ceiling_tflops(args.dtype)
    rows = []
    for model in args.model or ["tiny"]:
        for setting in args.setting or ["8x512x128"]:
            row = benchmark(
                model, setting, steps=args.steps, warmup=args.warmup, mesh_shape=mesh_shape,
                dtype=args.dtype, optimizer=args.optimizer, ceiling=ceiling,
                microbatches=args.microbatches, remat=args.remat, scan=args.scan,
                overrides={"attention": args.attention, "dispatch": args.dispatch,
                           "dropout": args.dropout},
            )  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
            if args.vs_hf:
                hf = benchmark_hf(model, setting, steps=args.steps, warmup=args.warmup)
                hf["ours_over_hf"] = round(row["tokens_per_s"] / hf["tokens_per_s"], 3)
                row["ours_over_hf"] = hf["ours_over_hf"]
                print(json.dumps(hf), flush=True)
                rows.append(hf)
    header = ("model", "setting", "dispatch", "attention", "remat", "step_ms", "tokens_per_s",
              "model_tflops", "mfu", "device")  # fmt: skip
    _table(rows, header + (("ours_over_hf",) if args.vs_hf else ()))


if __name__ == "__main__":
    main()

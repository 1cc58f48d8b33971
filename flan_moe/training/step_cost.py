"""What a compiled train step costs, from XLA alone (no step is run).

``compile_train_step`` lowers and compiles a ``Trainer``'s train step for abstract
inputs of a given batch shape and returns the executable and the compile time;
``step_cost`` reads XLA's cost analysis (FLOPs, bytes accessed: *per device* for a
partitioned step) and memory analysis (argument, output, temp and generated-code
bytes per device); ``CompiledStep.total_flops`` is the unpartitioned step's;
``collective_ops`` lists the collectives in the optimised HLO.
These are what ``scripts/benchmark_train_step.py --cpu-bars`` and the HLO tests use.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from flan_moe import partitioning
from flan_moe.model.config import ModelConfig
from flan_moe.training.optimizers import OptimizerConfig
from flan_moe.training.synthetic import synthetic_batch
from flan_moe.training.trainer import Trainer, select_features

GIB = 1024**3
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "reduce-scatter", "collective-permute")


@dataclass(frozen=True)
class CompiledStep:
    compiled: Any  # jax.stages.Compiled
    compile_s: float
    lower_s: float
    # FLOPs of the whole step before partitioning (XLA's cost analysis of the lowering).
    total_flops: float


def abstract_batch(trainer: Trainer, batch_size: int, inputs: int, targets: int) -> dict:
    """Shape/dtype/sharding structs of a full-length train batch for ``trainer``."""
    host = select_features(
        synthetic_batch(
            step=0,
            batch_size=batch_size,
            feature_lengths={"inputs": inputs, "targets": targets},
            vocab_size=trainer.model_config.vocab_size,
            full_length=True,
        )
    )
    return {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=trainer.batch_sharding)
        for k, v in host.items()
    }


def compile_train_step(
    config: ModelConfig,
    mesh: Mesh,
    *,
    batch_size: int,
    inputs: int,
    targets: int,
    optimizer: OptimizerConfig | None = None,
) -> CompiledStep:
    """Lower and compile the train step (nothing is allocated or run)."""
    trainer = Trainer(
        model_config=config,
        optimizer_config=optimizer or OptimizerConfig(name="adafactor", learning_rate=1e-3),
        mesh=mesh,
    )
    batch = abstract_batch(trainer, batch_size, inputs, targets)
    with partitioning.axis_rules(mesh):
        start = time.perf_counter()
        lowered = trainer._train_step.lower(trainer.abstract_state, batch)
        lower_s = time.perf_counter() - start
        start = time.perf_counter()
        compiled = lowered.compile()
        compile_s = time.perf_counter() - start
    return CompiledStep(compiled, compile_s, lower_s, _flops(lowered.cost_analysis()))


def _flops(cost: Any) -> float:
    if isinstance(cost, list | tuple):  # older JAX: one dict per computation
        cost = cost[0]
    return float((cost or {}).get("flops", np.nan))


def step_cost(compiled: Any) -> dict[str, float]:
    """Per-device FLOPs / bytes accessed and memory sizes of a compiled step."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0]
    memory = compiled.memory_analysis()
    out = {"flops": _flops(cost), "bytes_accessed": float(cost.get("bytes accessed", np.nan))}
    for name in ("argument", "output", "temp", "alias", "generated_code"):
        out[f"{name}_bytes"] = float(getattr(memory, f"{name}_size_in_bytes", np.nan))
    # Peak estimate: inputs + outputs + temporaries, less the donated (aliased) buffers.
    out["total_bytes"] = (
        out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    )
    return out


def collective_ops(compiled: Any) -> dict[str, list[str]]:
    """{collective kind: the HLO lines of that op} in the optimised, partitioned HLO."""
    text = compiled.as_text()
    out: dict[str, list[str]] = {kind: [] for kind in COLLECTIVES}
    for line in text.splitlines():
        for kind in COLLECTIVES:
            if re.search(rf"\b{kind}(-start)?\(", line):
                out[kind].append(line.strip())
    return out

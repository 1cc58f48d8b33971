"""The report's "Models" table: total and active parameters and forward FLOPs per token of
every run's model, from the model config its newest checkpoint records.

Counting convention (``flan_moe.model.flops``, named in the caption): total = every parameter;
active = what one token uses (the k routed experts it is sent to, or capacity-factor experts
for expert choice, plus everything dense); FLOPs = 2 x the multiply-adds of the forward
matmuls one token goes through (attention projections, active experts, router, LM head,
attention scores and values over ``INPUT_LENGTH`` / ``TARGET_LENGTH`` positions); embedding
lookups, norms, softmax and dispatch data movement are not counted; a training step is about
3x. The config is read from the checkpoint's metadata (no weights are loaded).
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path

from flan_moe.model.config import ModelConfig
from flan_moe.model.flops import model_cost

INPUT_LENGTH, TARGET_LENGTH = 512, 128
_STEP = re.compile(r"^checkpoint_(\d+)$")

CONVENTION = (
    "Counting convention (flan_moe.model.flops): total = every parameter; active = the "
    "parameters one token uses (its k routed experts, or capacity-factor experts under expert "
    "choice, plus every dense part); FLOPs per token = 2 x forward multiply-adds of the "
    "matmuls one token goes through (projections, active experts, router, LM head, attention "
    f"over {INPUT_LENGTH} input / {TARGET_LENGTH} target positions), embedding lookup, norms, "
    "softmax and dispatch not counted; a training step costs about 3x."
)


def checkpoint_config(model_dir: Path) -> ModelConfig | None:
    """The model config recorded by the newest ``checkpoint_<step>`` in ``model_dir``."""
    found = []
    for meta in model_dir.glob("checkpoint_*/metadata/metadata"):
        match = _STEP.match(meta.parent.parent.name)
        if match:
            found.append((int(match.group(1)), meta))
    if not found:
        return None
    metadata = json.loads(max(found)[1].read_text())
    return ModelConfig.from_dict(metadata["model_config"]) if "model_config" in metadata else None


def run_config(results_files: Sequence[str]) -> ModelConfig | None:
    """The config of the model that wrote these results.json files (beside its checkpoints)."""
    for path in results_files:
        config = checkpoint_config(Path(path).parent)
        if config is not None:
            return config
    return None


def si(value: float) -> str:
    """3 significant digits with a K / M / G / T suffix: 61952 -> "62.0K"."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def models_html(runs: Sequence) -> str:
    """The "Models" section (a captioned table); one line saying why when no run records a
    config; "" when there are no runs."""
    if not runs:
        return ""
    rows, missing = [], []
    for run in runs:
        config = run_config(run.results_files)
        if config is None:
            missing.append(run.label)
            continue
        cost = model_cost(config, input_length=INPUT_LENGTH, target_length=TARGET_LENGTH)
        experts = config.moe.num_experts if config.moe is not None else 1
        rows.append(
            f"<tr><td>{html.escape(run.label)}</td><td>{html.escape(config.name)}</td>"
            f"<td>{experts}</td><td>{si(cost.total_params)}</td>"
            f"<td>{si(cost.active_params)}</td>"
            f"<td>{si(cost.encoder_flops_per_token)}</td>"
            f"<td>{si(cost.decoder_flops_per_token)}</td></tr>"
        )
    lost = (
        f"<p class='note'>No checkpoint config found for: {html.escape(', '.join(missing))}.</p>"
        if missing
        else ""
    )
    if not rows:
        return f"<h2>Models</h2><p class='note'>No run has a checkpoint with its config.</p>{lost}"
    caption = "<b>Models.</b> " + html.escape(
        "Parameters and forward compute per token of every model. " + CONVENTION
    )
    return (
        f"<h2>Models</h2><table><caption>{caption}</caption><thead><tr>"
        "<th>Model</th><th>config</th><th>experts</th><th>total params</th>"
        "<th>active params</th><th>FLOPs / encoder token</th><th>FLOPs / decoder token</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>{lost}"
    )

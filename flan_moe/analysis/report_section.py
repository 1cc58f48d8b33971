"""The experiment report's routing-analysis section, from a ``routing_analysis.json``.

For one run: a table per sparse layer (tokens, consecutive-token repeat rates beside their
random baselines, router entropy and confidence, drop rate, the largest JS divergence of a
task's load from the global load), the figures (drawn into the report folder), and each
expert's top tokens by count and by lift behind a click.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flan_moe.analysis import figures


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _layer_rows(analysis: Mapping[str, Any]) -> str:
    rows = []
    for name, layer in sorted(analysis["layers"].items()):
        rep = layer["repeat"]
        js = [v for v in layer["js_divergence"].values() if v == v]  # drop NaN (empty task)
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    name,
                    layer["num_experts"],
                    layer["k"] if layer["k"] is not None else "expert choice",
                    layer["tokens"],
                    f"{_pct(rep['first_choice'])} ({_pct(rep['random_first_choice'])})",
                    f"{_pct(rep['topk_overlap'])} ({_pct(rep['random_topk_overlap'])})",
                    f"{layer['router_entropy']:.3f}",
                    f"{layer['router_confidence']:.3f}",
                    _pct(layer["drop_rate"]),
                    f"{max(js):.3f}" if js else "—",
                )
            )
            + "</tr>"
        )
    head = (
        "layer", "experts", "k", "tokens", "same first choice % (random)",
        "shared top-2 % (random)", "router entropy (nats)", "router confidence",
        "dropped %", "largest task JS divergence (bits)",
    )  # fmt: skip
    return (
        "<table><caption>Routing per sparse layer, padding excluded; consecutive pairs "
        "stop at padding and packing boundaries</caption><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )


def _token_tables(analysis: Mapping[str, Any]) -> str:
    parts = []
    for name, layer in sorted(analysis["layers"].items()):
        rows = []
        for expert in layer["top_tokens"]:

            def cell(entries, key):
                return ", ".join(
                    f"{html.escape(repr(e['token']))} ({e[key]:.4g})" if key == "lift"
                    else f"{html.escape(repr(e['token']))} ({e[key]})"
                    for e in entries
                ) or "—"  # fmt: skip

            rows.append(
                f"<tr><td>{expert['expert']}</td><td>{cell(expert['by_count'], 'count')}</td>"
                f"<td>{cell(expert['by_lift'], 'lift')}</td></tr>"
            )
        parts.append(
            f"<details><summary>Top tokens per expert: {html.escape(name)} (first choices)"
            "</summary><table><caption>Top tokens of each expert of "
            f"{html.escape(name)} among the tokens it received as first choice: by count, and "
            "by lift over the token's corpus frequency (tokens it received fewer than the "
            "analysis' --min_count times are not ranked by lift); — = the expert received "
            "no such token</caption><tr><th>expert</th><th>by count (count)</th>"
            "<th>by lift over corpus frequency (lift)</th></tr>"
            + "".join(rows)
            + "</table></details>"
        )
    return "".join(parts)


def section(label: str, analysis_file: Path, out_dir: Path) -> str:
    """HTML for one run; its figures are drawn into ``out_dir`` (named after the run)."""
    analysis = json.loads(Path(analysis_file).read_text())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    drawn = [
        (figures.load_heatmap(analysis, out_dir / f"routing_{slug}_load.png"),
         "Expert load per task and sparse layer (share of routing choices; JS divergence "
         "from the layer's global load in the row label)"),
        (figures.repeat_rates(analysis, out_dir / f"routing_{slug}_repeats.png"),
         "Consecutive tokens sharing their first / any top-2 expert, against a uniform "
         "random router (dashed)"),
    ]  # fmt: skip
    metrics = Path(analysis_file).parent / "train" / "metrics.jsonl"
    if metrics.is_file():
        curves = figures.training_curves(
            figures.read_metrics(metrics), out_dir / f"routing_{slug}_training.png",
            title=f"Training of {label}",
        )  # fmt: skip
        if curves is not None:
            drawn.append(
                (curves, "Training curves: loss, router losses, drop rate, largest expert share")
            )
    figs = "".join(
        f"<figure><img class='wide' src='{html.escape(p.name)}' alt='{html.escape(c)}'>"
        f"<figcaption>{html.escape(c)}</figcaption></figure>"
        for p, c in drawn
    )
    examples = sum(analysis.get("examples", {}).values())
    return (
        f"<h3>{html.escape(label)}</h3><p class='note'>{examples} examples, checkpoint "
        f"{html.escape(str(analysis.get('checkpoint', '?')))}, tasks grouped by "
        f"{html.escape(str(analysis.get('group_by', '?')))}; inputs cut: "
        f"{analysis.get('truncated', {}).get('inputs', '?')}, targets cut: "
        f"{analysis.get('truncated', {}).get('targets', '?')}</p>"
        + _layer_rows(analysis)
        + figs
        + _token_tables(analysis)
    )

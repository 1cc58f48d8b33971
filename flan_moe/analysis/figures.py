"""Figures of a routing analysis and of training curves (matplotlib, PNG, Agg backend).

* ``load_heatmap``: one panel per sparse layer, expert load (share of the task's routing
  choices) by task, with the JS divergence from the global load in the row label;
* ``repeat_rates``: consecutive-token first-choice and top-2 repeat rates per layer against
  their random baselines (dashed lines);
* ``training_curves``: loss, router losses, drop rate and expert usage from a run's
  ``metrics.jsonl`` (one JSON object per line with ``step`` and scalar metrics).

Layout rules: constrained layout, legends outside the axes, titles wrapped to the width.
"""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(text: str, width: int = 60) -> str:
    return "\n".join(textwrap.wrap(text, width))


def layout_problems(fig: Any) -> list[str]:
    """Texts that stick out of the figure, and legends that overlap an axes' plotting area."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    problems = []

    def outside(box: Any) -> bool:
        return bool(
            box.x0 < frame.x0 - 1 or box.y0 < frame.y0 - 1
            or box.x1 > frame.x1 + 1 or box.y1 > frame.y1 + 1
        )  # fmt: skip

    # Tight boxes hold what is drawn: titles, labels, tick labels, legends.
    for ax in fig.axes:
        if ax.get_visible() and outside(ax.get_tightbbox(renderer)):
            problems.append(f"axes {ax.get_title()!r}: text is clipped at the figure's edge")
    title = fig._suptitle
    if title is not None and outside(title.get_window_extent(renderer)):
        problems.append(f"title {title.get_text()!r} is clipped")
    for ax in fig.axes:
        legend = ax.get_legend()
        for other in fig.axes:
            if legend is not None and legend.get_window_extent(renderer).overlaps(
                other.get_window_extent(renderer)
            ):
                problems.append(f"the legend of {ax.get_title()!r} overlaps an axes")
    return problems


def save_figure(fig: Any, path: Path) -> Path:
    """Save (PNG, 110 dpi) and close; the one place figures are written (tests check it).

    The layout is checked first (``layout_problems``: clipped texts, legends over an axes);
    each problem is logged as a warning naming the file, so a bad figure in a pipeline run
    shows in its stage log."""
    for problem in layout_problems(fig):
        logging.getLogger(__name__).warning("figure %s: %s", Path(path).name, problem)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def load_heatmap(analysis: Mapping[str, Any], path: Path) -> Path:
    plt = _plt()
    layers = analysis["layers"]
    names = sorted(layers)
    tasks = sorted(t for t in next(iter(layers.values()))["load"] if t != "all")
    e = max(layer["num_experts"] for layer in layers.values())
    fig, axes = plt.subplots(
        len(names),
        1,
        figsize=(max(5.0, 0.5 * e + 4), 0.32 * len(tasks) * len(names) + 1.6 * len(names)),
        layout="constrained",
        squeeze=False,
    )
    for ax, name in zip(axes[:, 0], names, strict=True):
        layer = layers[name]
        rows = [layer["load"].get(t, [0.0] * layer["num_experts"]) for t in tasks]
        image = ax.imshow(rows, aspect="auto", cmap="viridis", vmin=0.0)
        ax.set_yticks(range(len(tasks)))
        ax.set_yticklabels([f"{t} (JS {layer['js_divergence'].get(t, float('nan')):.3f})"
                            for t in tasks], fontsize=7)  # fmt: skip
        ax.set_xticks(range(layer["num_experts"]))
        ax.set_xlabel("expert")
        ax.set_title(f"{name}: expert load by task", fontsize=9)
        fig.colorbar(image, ax=ax, label="share of choices")
    fig.suptitle(_title(f"Expert load per task ({analysis.get('model', '')})"), fontsize=10)
    return save_figure(fig, path)


def repeat_rates(analysis: Mapping[str, Any], path: Path) -> Path:
    plt = _plt()
    layers = analysis["layers"]
    names = sorted(layers)
    # Wide enough that the axes keep about half the width beside the outside legend.
    fig, ax = plt.subplots(figsize=(max(6.8, 1.2 * len(names) + 4.5), 3.4), layout="constrained")
    xs = range(len(names))
    for key, marker, colour in (
        ("first_choice", "o", "tab:blue"),
        ("topk_overlap", "s", "tab:orange"),
    ):
        ys = [100 * layers[n]["repeat"][key] for n in names]
        label = "same first choice" if key == "first_choice" else "shared top-2 choice"
        ax.plot(xs, ys, marker=marker, color=colour, label=label)
        base = [100 * layers[n]["repeat"][f"random_{key}"] for n in names]
        ax.plot(xs, base, linestyle="--", color=colour, label=f"{label}: random router")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("consecutive token pairs (%)")
    ax.set_ylim(0, 104)  # a rate of 100% keeps its whole marker inside the axes
    ax.set_xlim(-0.4, len(names) - 0.6)
    ax.set_title(_title("Consecutive tokens routed to the same experts"), fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save_figure(fig, path)


def routing_figures(analysis: Mapping[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        load_heatmap(analysis, out_dir / "expert_load_by_task.png"),
        repeat_rates(analysis, out_dir / "consecutive_token_rates.png"),
    ]


TRAINING_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss", "cross_entropy")),
    ("router losses", ("load_balancing_loss", "router_z_loss")),
    ("drop rate", ("moe/fraction_dropped",)),
    ("largest expert share", ("moe/expert_usage_max",)),
)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a malformed line is an error naming the file and line."""
    rows = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not JSON ({err})") from None
    return rows


def training_curves(rows: Sequence[Mapping[str, Any]], path: Path, *, title: str) -> Path | None:
    """One panel per group in ``TRAINING_PANELS`` that has data; None when none has."""
    panels = [
        (name, [k for k in keys if any(k in r for r in rows)]) for name, keys in TRAINING_PANELS
    ]
    panels = [(name, keys) for name, keys in panels if keys]
    if not panels:
        return None
    plt = _plt()
    cols = min(2, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols + 1.0, 2.8 * rows_n + 0.6),
                             layout="constrained", squeeze=False)  # fmt: skip
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (name, keys) in zip(axes.flat, panels, strict=False):
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=key)
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=9)
        if len(keys) > 1:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(_title(title), fontsize=10)
    return save_figure(fig, path)

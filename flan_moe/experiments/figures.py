"""The paper's figures, drawn from the runs' results.json scores (matplotlib, PNG).

* ``instruction_tuning_gain``: dense vs MoE, score before and after instruction tuning
  and the gain (Flan-MoE Fig. 1: MoE gains more from instruction tuning);
* ``expert_scaling``: few-shot average against the number of experts (Fig. 4);
* ``data_efficiency``: average against the fraction of instruction-tuning data (Fig. 5);
* ``finetune_with_without_it``: single-task finetuning scores with and without
  instruction tuning first (settings 1 and 3).

A run with no score is left out of a plot, never drawn as zero. Scores come from the entries
of one `scores.Selection` (MMLU split, subsample), the same the report's tables read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flan_moe.experiments import report, scores


def _average(run: report.Run, shots: int, selection: scores.Selection) -> float | None:
    return report.run_scores(run, shots=shots, selection=selection)["Average"]


def instruction_tuning_gain(
    runs: Sequence[report.Run],
    path: Path,
    *,
    shots: int,
    selection: scores.Selection = scores.VAL_ALL,
) -> Path:
    groups: dict[str, dict[str, float | None]] = {}
    for run in runs:
        if "untuned_of" in run.attributes:
            continue
        before = next((r for r in runs if r.attributes.get("untuned_of") == run.label), None)
        after = _average(run, shots, selection)
        base = _average(before, shots, selection) if before is not None else None
        groups[run.label] = {
            "before instruction tuning": base,
            "after instruction tuning": after,
            "gain": None if after is None or base is None else after - base,
        }
    title = f"Gain from instruction tuning (few-shot: MMLU {shots}-shot)"
    return report.bar_figure(path, groups, title=title, ylabel="average accuracy (%)")


def _by_attribute(
    runs: Sequence[report.Run],
    key: str,
    shots: int,
    selection: scores.Selection,
    series_key: str | None = None,
) -> dict[str, list[tuple[float, float | None]]]:
    series: dict[str, list[tuple[float, float | None]]] = {}
    for run in runs:
        if key not in run.attributes:
            continue
        name = str(run.attributes.get(series_key, "all")) if series_key else f"{shots}-shot"
        point = (float(run.attributes[key]), _average(run, shots, selection))
        series.setdefault(name, []).append(point)
    return series


def draw(
    experiment: Any,
    runs: Sequence[report.Run],
    out_dir: Path,
    *,
    few_shot: int,
    selection: scores.Selection = scores.VAL_ALL,
) -> list[tuple[str, Path]]:
    """Draw the experiment's figures into ``out_dir``; returns (caption, path) pairs."""
    drawn: list[tuple[str, Path]] = []
    for kind in experiment.figures:
        path = out_dir / f"{kind}.png"
        if kind == "instruction_tuning_gain":
            instruction_tuning_gain(runs, path, shots=few_shot, selection=selection)
            caption = "Average held-out score before and after instruction tuning, dense vs MoE"
        elif kind == "expert_scaling":
            series = _by_attribute(runs, "num_experts", 0, selection)
            series.update(_by_attribute(runs, "num_experts", few_shot, selection))
            report.line_figure(path, series, title="Expert-count scaling",
                               xlabel="experts per sparse layer", ylabel="average accuracy (%)",
                               logx=True)  # fmt: skip
            caption = "Held-out average against the number of experts (fixed active compute)"
        elif kind == "data_efficiency":
            by_fraction = _by_attribute(runs, "data_fraction", few_shot, selection, "family")
            report.line_figure(path, by_fraction,
                               title="Instruction-tuning data efficiency",
                               xlabel="fraction of instruction-tuning steps (examples seen)",
                               ylabel="average accuracy (%)")  # fmt: skip
            caption = "Held-out few-shot average against the fraction of instruction data"
        elif kind == "finetune_with_without_it":
            groups = {
                run.label: {
                    col: report.run_scores(
                        run, shots=0, columns=report.REASONING_COLUMNS, selection=selection
                    )[col]
                    for _, col in report.REASONING_COLUMNS
                }
                for run in runs
            }
            report.bar_figure(path, groups, title="Single-task finetuning (GSM8K CoT)",
                              ylabel="accuracy (%)")  # fmt: skip
            caption = "Finetuned on GSM8K CoT, with and without instruction tuning first"
        else:
            raise ValueError(f"unknown figure kind {kind!r}")
        drawn.append((caption + f" [{selection.caption()}]", path))
    return drawn

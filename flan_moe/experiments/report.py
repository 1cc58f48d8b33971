"""Paper-style tables, figures and one HTML report from the evaluator's results.json files.

Every number shown comes from a results.json entry written by the evaluator; a
result that is not there is shown as missing ("—" in Markdown/HTML, an empty
cell in CSV), never as zero.

Score definitions (as printed under each table):
* MMLU: macro average over the 57 subjects (``summary.macro_avg``);
* BBH: macro average over its 23 tasks (``summary.macro_avg_tasks``; the three
  logical_deduction and three tracking_shuffled_objects files each count once);
* Average: mean of the four columns, only when all four are present.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flan_moe.evaluation import results as results_lib

# (suite family, mode) -> column name
HELDOUT_COLUMNS = (
    (("mmlu", "direct"), "MMLU-Direct"),
    (("mmlu", "cot"), "MMLU-CoT"),
    (("bbh", "direct"), "BBH-Direct"),
    (("bbh", "cot"), "BBH-CoT"),
)
REASONING_COLUMNS = ((("gsm8k", "cot"), "GSM8K-CoT"), (("svamp", "cot"), "SVAMP-CoT"))
Columns = tuple[tuple[tuple[str, str], str], ...]
# The evaluator caps shots at a suite's exemplar count (BBH has 3 per file) and records
# the shots actually used; a k-shot column reads those entries.
MAX_SHOTS = {"bbh": 3}
MISSING = "—"


@dataclasses.dataclass(frozen=True)
class Run:
    """One trained model as it appears in the report.

    ``results_files``: the results.json files its evaluations wrote. ``attributes``:
    what the figures group by (e.g. ``{"family": "moe", "num_experts": 8,
    "instruction_tuned": True, "task_fraction": 0.5}``).
    """

    label: str
    results_files: tuple[str, ...]
    attributes: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    config_text: str = ""


def entry_score(entry: results_lib.EvalEntry) -> float | None:
    """The paper's number for an entry, in percent (None when not computable)."""
    summary = entry.summary
    value = summary.get("macro_avg_tasks") if entry.family == "bbh" else summary.get("macro_avg")
    return None if value is None else 100.0 * value


def run_scores(
    run: Run, *, shots: int, method: str | None = None, columns: Columns = HELDOUT_COLUMNS
) -> dict[str, float | None]:
    """A run's column scores at a shot count (the newest entry wins) and their average."""
    entries: list[results_lib.EvalEntry] = []
    for path in run.results_files:
        entries.extend(results_lib.read_results(path))
    scores: dict[str, float | None] = {}
    for (family, mode), column in columns:
        matching = [
            e
            for e in entries
            if (e.family or results_lib.suite_family(e.suite)) == family
            and e.mode == mode
            and e.shots == min(shots, MAX_SHOTS.get(family, shots))
            and (method is None or e.method == method)
        ]
        matching.sort(key=lambda e: e.created)
        scores[column] = entry_score(matching[-1]) if matching else None
    present = [v for v in scores.values() if v is not None]
    scores["Average"] = sum(present) / len(present) if len(present) == len(columns) else None
    return scores


def _fmt(value: float | None, *, delta: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:+.1f}" if delta else f"{value:.1f}"


@dataclasses.dataclass(frozen=True)
class Table:
    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, tuple[float | None, ...]], ...]
    note: str = ""
    delta_columns: int = 0  # trailing columns that are deltas to the baseline

    def values(self) -> dict[str, dict[str, float | None]]:
        return {label: dict(zip(self.header[1:], vals)) for label, vals in self.rows}

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        n_plain = len(self.header) - 1 - self.delta_columns
        for label, vals in self.rows:
            cells = [_fmt(v, delta=i >= n_plain) for i, v in enumerate(vals)]
            lines.append("| " + " | ".join([label, *cells]) + " |")
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(self.header)
        for label, vals in self.rows:
            writer.writerow([label, *("" if v is None else f"{v:.4f}" for v in vals)])
        return buf.getvalue()

    def html(self) -> str:
        n_plain = len(self.header) - 1 - self.delta_columns
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr><td>"
            + html.escape(label)
            + "</td>"
            + "".join(f"<td>{_fmt(v, delta=i >= n_plain)}</td>" for i, v in enumerate(vals))
            + "</tr>"
            for label, vals in self.rows
        )
        note = f"<p class='note'>{html.escape(self.note)}</p>" if self.note else ""
        return (
            f"<h3>{html.escape(self.title)}</h3><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>{note}"
        )


SCORE_NOTE = (
    "Accuracy in %. MMLU: macro average over 57 subjects; BBH: macro average over 23 "
    "tasks; GSM8K/SVAMP: accuracy of the extracted final number; Average: mean of the "
    f"columns (missing when any is missing). {MISSING} = no results.json entry."
)


def results_table(
    runs: Sequence[Run],
    *,
    shots: int,
    title: str,
    method: str | None = None,
    columns: Columns = HELDOUT_COLUMNS,
) -> Table:
    """Rows = models; columns e.g. MMLU-Direct, MMLU-CoT, BBH-Direct, BBH-CoT, Average."""
    header = ("Model", *(name for _, name in columns), "Average")
    rows = []
    for run in runs:
        scores = run_scores(run, shots=shots, method=method, columns=columns)
        rows.append((run.label, tuple(scores[c] for c in header[1:])))
    return Table(title, header, tuple(rows), SCORE_NOTE)


def ablation_table(
    runs: Sequence[Run], *, baseline: str, shots: int, title: str, method: str | None = None
) -> Table:
    """Like ``results_table`` plus the Average's delta to the baseline row."""
    base = results_table(runs, shots=shots, title=title, method=method)
    values = base.values()
    if baseline not in values:
        raise ValueError(f"baseline {baseline!r} is not one of the runs {list(values)}")
    base_avg = values[baseline]["Average"]
    rows = []
    for label, vals in base.rows:
        avg = values[label]["Average"]
        delta = None if avg is None or base_avg is None else avg - base_avg
        rows.append((label, (*vals, delta)))
    return Table(
        title,
        (*base.header, f"Δ Average vs {baseline}"),
        tuple(rows),
        SCORE_NOTE,
        delta_columns=1,
    )


# ----------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_figure(
    path: Path, groups: Mapping[str, Mapping[str, float | None]], *, title: str, ylabel: str
) -> Path:
    """Grouped bars: ``groups[group][series] = value``; missing values are left out
    and marked "n/a" on the axis."""
    plt = _plt()
    group_names = list(groups)
    series = list(dict.fromkeys(s for g in groups.values() for s in g))  # first-seen order
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(group_names)), 3.2))
    width = 0.8 / max(1, len(series))
    for j, name in enumerate(series):
        xs, ys = [], []
        for i, g in enumerate(group_names):
            value = groups[g].get(name)
            if value is not None:
                xs.append(i + j * width)
                ys.append(value)
        ax.bar(xs, ys, width=width, label=name)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(group_names))])
    ax.set_xticklabels(
        [g + ("" if any(v is not None for v in groups[g].values()) else "\n(n/a)")
         for g in group_names]
    )  # fmt: skip
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def line_figure(
    path: Path,
    series: Mapping[str, Sequence[tuple[float, float | None]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
) -> Path:
    """One line per series of (x, y) points; points with a missing y are left out."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    for name, points in series.items():
        pts = sorted((x, y) for x, y in points if y is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------ report


@dataclasses.dataclass(frozen=True)
class Report:
    title: str
    tables: tuple[Table, ...]
    figures: tuple[tuple[str, Path], ...]  # (caption, png path)
    runs: tuple[Run, ...]
    notes: tuple[str, ...] = ()


def write_report(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """Write tables (CSV + Markdown), the HTML page and a JSON of every table value."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for i, table in enumerate(report.tables):
        stem = f"table_{i + 1}"
        (out / f"{stem}.csv").write_text(table.csv())
        (out / f"{stem}.md").write_text(table.markdown() + "\n")
        paths[f"{stem}.csv"] = out / f"{stem}.csv"
    (out / "tables.json").write_text(
        json.dumps({t.title: t.values() for t in report.tables}, indent=2)
    )
    markdown = "\n\n".join([f"# {report.title}", *(t.markdown() for t in report.tables)])
    (out / "report.md").write_text(markdown + "\n")

    figures_html = "".join(
        f"<figure><img src='{html.escape(p.name)}' alt='{html.escape(c)}'>"
        f"<figcaption>{html.escape(c)}</figcaption></figure>"
        for c, p in report.figures
    )
    configs_html = "".join(
        f"<details><summary>{html.escape(r.label)}</summary>"
        f"<pre>{html.escape(r.config_text or '(no config recorded)')}</pre>"
        f"<p>results: {', '.join(html.escape(f) for f in r.results_files) or MISSING}</p>"
        "</details>"
        for r in report.runs
    )
    notes_html = "".join(f"<p>{html.escape(n)}</p>" for n in report.notes)
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(report.title)}</title><style>"
        "body{font-family:sans-serif;max-width:1000px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;"
        "padding:3px 8px;text-align:right}td:first-child{text-align:left}"
        "figure{display:inline-block;margin:0.5em}img{max-width:460px}.note{color:#555}"
        "</style></head><body>"
        f"<h1>{html.escape(report.title)}</h1>{notes_html}"
        "<h2>Tables</h2>" + "".join(t.html() for t in report.tables) + "<h2>Figures</h2>"
        f"{figures_html}<h2>Runs and their configs</h2>{configs_html}</body></html>"
    )
    (out / "report.html").write_text(page)
    paths["report.html"] = out / "report.html"
    paths["report.md"] = out / "report.md"
    return paths

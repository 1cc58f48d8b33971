"""Paper-style tables, figures and one HTML report from the evaluator's results.json files.

Every number shown comes from a results.json entry written by the evaluator; a
result that is not there is shown as missing ("—" in Markdown/HTML, an empty
cell in CSV), never as zero.

Score definitions (as printed under each table):
* MMLU: macro average over the 57 subjects (``summary.macro_avg``, the paper's); the micro
  average over questions (hendrycks / lm-eval) and the category averages are in results.json
  and the eval CLI's table;
* BBH: macro average over its 23 tasks (``summary.macro_avg_tasks``; the three
  logical_deduction and three tracking_shuffled_objects files each count once);
* Average: mean of the four columns, only when all four are present.

Every cell carries its 95% bootstrap interval "[low, high]" and, in few-shot tables, the mean
effective shots next to the requested k ("3.2/5 shots*": * = fewer than k kept on average);
every table ends with the "chance" and "constant answer" reference rows; every difference
carries a paired-bootstrap interval and says "not significant" when that interval contains 0
(`flan_moe.experiments.scores`). Captions name the MMLU split and the subsample.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flan_moe.evaluation import results as results_lib
from flan_moe.experiments import scores
from flan_moe.experiments.scores import Cell, Selection

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
MAX_SHOTS = scores.MAX_SHOTS
MISSING = "—"
NOT_SIGNIFICANT = "not significant"


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


entry_score = scores.entry_score


def run_scores(
    run: Run,
    *,
    shots: int,
    method: str | None = None,
    columns: Columns = HELDOUT_COLUMNS,
    selection: Selection = scores.VAL_ALL,
) -> dict[str, float | None]:
    """A run's column scores at a shot count for a selection (the newest entry wins), and
    their average."""
    cells, _ = scores.run_cells(
        run.results_files, columns, shots=shots, selection=selection, method=method
    )
    return {column: cell.value for column, cell in cells.items()}


def _fmt(value: float | None, *, delta: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:+.1f}" if delta else f"{value:.1f}"


def _cell_text(value: float | None, cell: Cell | None, *, delta: bool) -> str:
    """ "26.3 [22.1, 30.5] (3.2/5 shots*)"; a difference adds "(not significant)"."""
    text = _fmt(value, delta=delta)
    if cell is None or value is None:
        return text
    if cell.interval is not None:
        low, high = cell.interval
        text += f" [{low:+.1f}, {high:+.1f}]" if delta else f" [{low:.1f}, {high:.1f}]"
        if delta and cell.significant is False:
            text += f" ({NOT_SIGNIFICANT})"
    if cell.shots is not None:
        mean, k = cell.shots
        text += f" ({mean:.1f}/{k} shots{'*' if mean < k - 1e-9 else ''})"
    return text


@dataclasses.dataclass(frozen=True)
class Table:
    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, tuple[float | None, ...]], ...]
    note: str = ""
    delta_columns: int = 0  # trailing columns that are deltas to the baseline
    cells: Mapping[str, Mapping[str, Cell]] = dataclasses.field(default_factory=dict)
    all_deltas: bool = False  # every column is a difference (a differences table)
    # What a reader needs to read the numbers: scale, split, protocol, shots (`table_caption`).
    caption: str = ""
    paper_rows: frozenset[str] = frozenset()  # labels of the paper's own rows (paper_numbers)
    details_html: str = ""  # per-task breakdowns, each behind a <details> click

    def values(self) -> dict[str, dict[str, float | None]]:
        return {label: dict(zip(self.header[1:], vals)) for label, vals in self.rows}

    def intervals(self) -> dict[str, dict[str, list[float] | None]]:
        """{row: {column: [low, high] or None}} (tables.json's "intervals")."""
        return {
            label: {
                col: list(c.interval)
                if (c := self.cells.get(label, {}).get(col)) and c.interval
                else None
                for col in self.header[1:]
            }
            for label, _ in self.rows
        }

    def _texts(self, label: str, vals: tuple[float | None, ...]) -> list[str]:
        n_plain = 0 if self.all_deltas else len(self.header) - 1 - self.delta_columns
        row = self.cells.get(label, {})
        return [
            _cell_text(v, row.get(col), delta=i >= n_plain)
            for i, (v, col) in enumerate(zip(vals, self.header[1:]))
        ]

    def markdown(self) -> str:
        lines = [f"**{self.title}**", ""]
        if self.caption:
            lines += [f"*{self.caption}*", ""]
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append("|" + "|".join("---" for _ in self.header) + "|")
        for label, vals in self.rows:
            lines.append("| " + " | ".join([label, *self._texts(label, vals)]) + " |")
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

    def html(self, number: int | None = None) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            ("<tr class='paper'><td>" if label in self.paper_rows else "<tr><td>")
            + html.escape(label)
            + "</td>"
            + "".join(f"<td>{html.escape(t)}</td>" for t in self._texts(label, vals))
            + "</tr>"
            for label, vals in self.rows
        )
        note = f"<p class='note'>{html.escape(self.note)}</p>" if self.note else ""
        prefix = f"Table {number}. " if number is not None else ""
        caption = f"<b>{html.escape(prefix + self.title)}.</b> {html.escape(self.caption)}"
        return (
            f"<table><caption>{caption.strip()}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>{note}{self.details_html}"
        )


SCORE_NOTE = (
    "Accuracy in %. MMLU: macro average over the 57 subjects (the paper's); BBH: macro average "
    "over 23 tasks; GSM8K/SVAMP: accuracy of the extracted final number; Average: mean of the "
    "columns (missing when any is missing). [low, high]: 95% bootstrap interval (questions "
    "resampled within subtasks, 1000 samples, seed 0). (m/k shots): mean exemplars kept of the "
    "k requested, * = fewer than k. Rows 'chance' (uniform guess among the options) and "
    "'constant answer' (always (A), or the most common exemplar answer) are the floors. "
    f"{MISSING} = no results.json entry."
)
REFERENCE_ROWS = ("chance", "constant answer")


def _caption(title: str, selection: Selection) -> str:
    return f"{title} [{selection.caption()}]"


MODE_TEXT = {"direct": "direct answer", "cot": "chain of thought"}


def _shots_text(cells: Mapping[str, Mapping[str, Cell]], columns: Columns, shots: int) -> str:
    """Requested shots per suite and the effective mean (range over the runs) per column."""
    if shots == 0:
        return "Shots: zero-shot (0 requested, 0 used)."
    requested = ", ".join(
        dict.fromkeys(f"{f.upper()} {scores.used_shots(f, shots)}" for (f, _), _c in columns)
    )
    effective = []
    for _, column in columns:
        kept = sorted(row[column].shots[0] for row in cells.values()
                      if column in row and row[column].shots is not None)  # fmt: skip
        if kept:
            low, high = kept[0], kept[-1]
            span = f"{low:.1f}" if high - low < 0.05 else f"{low:.1f}-{high:.1f}"
            effective.append(f"{column} {span}")
    used = "; effective (mean exemplars kept): " + ", ".join(effective) if effective else ""
    return f"Shots: {shots} requested (used: {requested}){used}."


def table_caption(
    selection: Selection,
    columns: Columns,
    cells: Mapping[str, Mapping[str, Cell]],
    *,
    shots: int,
    scale: str = "",
) -> str:
    """A table's caption (printed after its title): scale, split and subsample, protocol (how each
    column was scored: ranked / generation, direct / chain of thought) and shots (requested
    and effective)."""
    protocol = []
    for (_, mode), column in columns:
        methods = sorted({results_lib.method_label(row[column].method) for row in cells.values()
                          if column in row and row[column].method})  # fmt: skip
        how = "/".join(methods) if methods else "no entries"
        protocol.append(f"{column}: {how}, {MODE_TEXT.get(mode, mode)}")
    parts = [
        f"Scale: {scale}." if scale else "",
        f"Data: {selection.caption()}.",
        "Protocol: " + "; ".join(protocol) + ".",
        _shots_text(cells, columns, shots),
    ]
    return " ".join(p for p in parts if p)


def _paper_rows(
    paper: Mapping[str, Mapping[str, Any]], header: tuple[str, ...]
) -> list[tuple[str, tuple[float | None, ...]]]:
    """The paper's rows (``paper_numbers.rows_for``): its values where it reports the column,
    missing elsewhere; no Average (it would mix reported and unreported columns)."""
    return [
        (
            label,
            tuple(None if c == "Average" or c not in row else row[c].value for c in header[1:]),
        )
        for label, row in paper.items()
    ]


def _methods_note(cells: Mapping[str, Mapping[str, Cell]], columns: Columns) -> str:
    """Which method produced each column ("ranked" = rank classification over the options)."""
    parts = []
    for _, column in columns:
        used = sorted(
            {results_lib.method_label(row[column].method) for row in cells.values()
             if column in row and row[column].method and row[column].value is not None}
        )  # fmt: skip
        if used:
            parts.append(f"{column}: {', '.join(used)}")
    return ("Methods: " + "; ".join(parts) + ".") if parts else ""


def _cap_note(cells: Mapping[str, Mapping[str, Cell]]) -> str:
    """Generations that hit the decode length cap (their answers may be cut off)."""
    parts = [
        f"{label} {column} {cell.at_cap[0]}/{cell.at_cap[1]}"
        for label, row in cells.items()
        for column, cell in row.items()
        if cell.at_cap is not None and cell.at_cap[0] > 0
    ]
    return ("Generations that hit the decode cap: " + ", ".join(parts) + ".") if parts else ""


def _with_references(
    rows: list, cells: dict, columns: Columns, header: tuple[str, ...], selection: Selection
) -> str:
    """Appends the chance and constant-answer rows; returns a note when they cannot be made."""
    try:
        refs = scores.reference_cells(tuple(columns), selection)
    except (OSError, ValueError) as err:  # no data here: say so under the table
        return f"Reference rows unavailable: {err}"
    for label in REFERENCE_ROWS:
        cells[label] = refs[label]
        rows.append((label, tuple(refs[label][c].value for c in header[1:])))
    return ""


def results_table(
    runs: Sequence[Run],
    *,
    shots: int,
    title: str,
    method: str | None = None,
    columns: Columns = HELDOUT_COLUMNS,
    selection: Selection = scores.VAL_ALL,
    references: bool = True,
    scale: str = "",
    paper: Mapping[str, Mapping[str, Any]] | None = None,
) -> Table:
    """Rows = models (+ chance, constant answer, + the paper's own rows from ``paper``:
    ``paper_numbers.rows_for``); columns e.g. MMLU-Direct, ..., Average. Per-task
    breakdowns of every run go under the table behind a click."""
    from flan_moe.experiments import paper_numbers, report_breakdown

    header = ("Model", *(name for _, name in columns), "Average")
    rows, cells = [], {}
    for run in runs:
        cells[run.label], _ = scores.run_cells(
            run.results_files, columns, shots=shots, selection=selection, method=method
        )
        rows.append((run.label, tuple(cells[run.label][c].value for c in header[1:])))
    caption = table_caption(selection, columns, cells, shots=shots, scale=scale)
    notes = [SCORE_NOTE, _methods_note(cells, columns), _cap_note(cells)]
    if references:
        notes.append(_with_references(rows, cells, columns, header, selection))
    if paper is not None:  # {}: the table could have paper rows, and none is sourced
        rows += _paper_rows(paper, header)
        notes.append(paper_numbers.note(dict(paper)))
    note = " ".join(n for n in notes if n)
    details = report_breakdown.breakdown_html(
        runs, columns, shots=shots, selection=selection, method=method
    )
    return Table(_caption(title, selection), header, tuple(rows), note, cells=cells,
                 caption=caption, paper_rows=frozenset(paper or ()),
                 details_html=details)  # fmt: skip


def paired_cells(
    a: Run, b: Run, *, shots: int, columns: Columns, selection: Selection, method=None
) -> dict[str, Cell]:
    """{column: the paired difference a - b} (percent points), "Average" included."""
    cells_a, comps_a = scores.run_cells(
        a.results_files, columns, shots=shots, selection=selection, method=method
    )
    cells_b, comps_b = scores.run_cells(
        b.results_files, columns, shots=shots, selection=selection, method=method
    )
    out = {}
    for _, column in columns:
        va, vb = cells_a[column].value, cells_b[column].value
        diff = None if va is None or vb is None else va - vb
        out[column] = scores.difference_cell([comps_a[column]], [comps_b[column]], diff)
    va, vb = cells_a["Average"].value, cells_b["Average"].value
    diff = None if va is None or vb is None else va - vb
    names = [c for _, c in columns]
    out["Average"] = scores.difference_cell(
        [comps_a[c] for c in names], [comps_b[c] for c in names], diff
    )
    return out


def stated_differences(runs: Sequence[Run]) -> list[tuple[Run, Run]]:
    """The differences a report states: each instruction-tuned run vs itself before
    instruction tuning (``untuned_of``), and MoE vs dense at the same data fraction."""
    pairs = []
    for run in runs:
        before = next((r for r in runs if r.attributes.get("untuned_of") == run.label), None)
        if before is not None:
            pairs.append((run, before))
    tuned = [r for r in runs if "untuned_of" not in r.attributes]
    for moe in (r for r in tuned if r.attributes.get("family") == "moe"):
        for dense in (r for r in tuned if r.attributes.get("family") == "dense"):
            if moe.attributes.get("data_fraction") == dense.attributes.get("data_fraction"):
                pairs.append((moe, dense))
    return pairs


def differences_table(
    pairs: Sequence[tuple[Run, Run]],
    *,
    shots: int,
    title: str,
    columns: Columns = HELDOUT_COLUMNS,
    selection: Selection = scores.VAL_ALL,
    scale: str = "",
) -> Table:
    """One row per stated difference "A − B" with paired-bootstrap intervals."""
    header = ("Difference", *(name for _, name in columns), "Average")
    rows, cells = [], {}
    for a, b in pairs:
        label = f"{a.label} − {b.label}"
        cells[label] = paired_cells(a, b, shots=shots, columns=columns, selection=selection)
        rows.append((label, tuple(cells[label][c].value for c in header[1:])))
    note = (
        "Differences in percent points with 95% paired-bootstrap intervals (the same resampled "
        f"questions for both models); '{NOT_SIGNIFICANT}' = the interval contains 0."
    )
    both = {}
    for a, b in pairs:  # the protocol and shots of the compared runs' own cells
        for run in (a, b):
            both[run.label], _ = scores.run_cells(
                run.results_files, columns, shots=shots, selection=selection
            )
    caption = table_caption(selection, columns, both, shots=shots, scale=scale)
    return Table(_caption(title, selection), header, tuple(rows), note, cells=cells,
                 all_deltas=True, caption=caption)  # fmt: skip


def ablation_table(
    runs: Sequence[Run],
    *,
    baseline: str,
    shots: int,
    title: str,
    method: str | None = None,
    selection: Selection = scores.VAL_ALL,
    scale: str = "",
    paper: Mapping[str, Mapping[str, Any]] | None = None,
) -> Table:
    """Like ``results_table`` plus the Average's paired difference to the baseline row."""
    base = results_table(runs, shots=shots, title=title, method=method, selection=selection,
                         scale=scale, paper=paper)  # fmt: skip
    by_label = {run.label: run for run in runs}
    if baseline not in by_label:
        raise ValueError(f"baseline {baseline!r} is not one of the runs {list(by_label)}")
    column = f"Δ Average vs {baseline}"
    cells = {label: dict(row) for label, row in base.cells.items()}
    rows = []
    for label, vals in base.rows:
        delta = None
        if label in by_label:
            delta = paired_cells(by_label[label], by_label[baseline], shots=shots,
                                 columns=HELDOUT_COLUMNS, selection=selection,
                                 method=method)["Average"]  # fmt: skip
            cells[label][column] = delta
        rows.append((label, (*vals, None if delta is None else delta.value)))
    return dataclasses.replace(
        base, header=(*base.header, column), rows=tuple(rows), delta_columns=1, cells=cells
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
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(group_names)) + 2.5, 3.4),
                           layout="constrained")  # fmt: skip
    width = 0.8 / max(1, len(series))
    for j, name in enumerate(series):
        xs, ys = [], []
        for i, g in enumerate(group_names):
            value = groups[g].get(name)
            if value is not None:
                xs.append(i + j * width)
                ys.append(value)
        bars = ax.bar(xs, ys, width=width, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)  # a zero bar still shows "0.0"
    ax.margins(y=0.12)  # room for the value labels inside the axes
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(group_names))])
    ax.set_xticklabels(
        [g + ("" if any(v is not None for v in groups[g].values()) else "\n(n/a)")
         for g in group_names]
    )  # fmt: skip
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel(ylabel)
    ax.set_title("\n".join(textwrap.wrap(title, 48)), fontsize=10)
    if series:  # beside the axes: never over the data
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    from flan_moe.analysis.figures import save_figure

    return save_figure(fig, path)


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
    fig, ax = plt.subplots(figsize=(6.8, 3.4), layout="constrained")
    for name, points in series.items():
        pts = sorted((x, y) for x, y in points if y is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("\n".join(textwrap.wrap(title, 48)), fontsize=10)
    if series:  # beside the axes: never over the data
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    from flan_moe.analysis.figures import save_figure

    return save_figure(fig, path)


# ------------------------------------------------------------------------------ report


@dataclasses.dataclass(frozen=True)
class Report:
    title: str
    tables: tuple[Table, ...]
    figures: tuple[tuple[str, Path], ...]  # (caption, png path)
    runs: tuple[Run, ...]
    notes: tuple[str, ...] = ()


def routing_section(runs: Sequence[Run], out: Path) -> str:
    """ "Routing analysis" HTML for the runs with a ``routing_analysis.json`` beside one of
    their results.json files (written by ``flan_moe.cli.analyze``); "" when none has one."""
    from flan_moe.analysis import report_section

    parts = []
    for run in runs:
        found = [Path(f).parent / "routing_analysis.json" for f in run.results_files]
        found = [f for f in found if f.is_file()]
        if found:
            parts.append(report_section.section(run.label, found[0], out))
    return "<h2>Routing analysis</h2>" + "".join(parts) if parts else ""


PAGE_CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:0.5em 0 1em;font-size:13px}"
    "td,th{border:1px solid #bbb;padding:3px 6px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}"
    "caption{caption-side:top;text-align:left;font-size:14px;padding:1em 0 4px;"
    "overflow-wrap:anywhere}"
    "tr.paper td{background:#f3f0ff;font-style:italic}"
    "details{margin:0.3em 0}summary{cursor:pointer;color:#225}"
    "figure{display:inline-block;margin:0.5em;max-width:100%}"
    "figcaption{font-size:13px;overflow-wrap:anywhere}"
    "img{max-width:100%;height:auto}"
    ".note{color:#555;font-size:13px}"
)


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
    (out / "intervals.json").write_text(
        json.dumps({t.title: t.intervals() for t in report.tables}, indent=2)
    )
    markdown = "\n\n".join(
        [f"# {report.title}", *report.notes, *(t.markdown() for t in report.tables)]
    )
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
    routing_html = routing_section(report.runs, out)
    from flan_moe.experiments import report_models

    tables_html = (
        "<h2>Results</h2>" + "".join(t.html(i + 1) for i, t in enumerate(report.tables))
        if report.tables
        else "<h2>Results</h2><p class='note'>No tables: no run has evaluation results.</p>"
    )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(report.title)}</title><style>{PAGE_CSS}</style></head><body>"
        f"<h1>{html.escape(report.title)}</h1>{notes_html}"
        + report_models.models_html(report.runs)
        + tables_html
        + (f"<h2>Figures</h2>{figures_html}" if figures_html else "")
        + routing_html
        + (f"<h2>Runs and their configs</h2>{configs_html}" if configs_html else "")
        + "</body></html>"
    )
    (out / "report.html").write_text(page)
    paths["report.html"] = out / "report.html"
    paths["report.md"] = out / "report.md"
    return paths

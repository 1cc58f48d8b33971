"""Per-task breakdowns under a results table: every MMLU subject / BBH task file of every run,
with its question count and a 95% Wilson interval, behind ``<details>`` clicks (one per run,
inside it one per column).

The counts are the evaluator's (``SubtaskResult.correct`` / ``total`` in results.json);
the interval is the Wilson score interval of that binomial count
(``scipy.stats.binomtest(...).proportion_ci(method="wilson")``), which stays inside [0, 1]
and is sensible for the few questions per subtask of a subsampled run.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from scipy import stats

from flan_moe.experiments import scores
from flan_moe.experiments.scores import Selection

SUBTASK_NAME = {"mmlu": "subject", "bbh": "task file"}


def wilson_interval(correct: int, total: int) -> tuple[float, float]:
    """95% Wilson score interval of ``correct`` of ``total``, in percent."""
    found = stats.binomtest(correct, total).proportion_ci(confidence_level=0.95, method="wilson")
    return 100 * found.low, 100 * found.high


def _subtask_table(run_label: str, column: str, entry, family: str, shots: int) -> str:
    rows, skipped = [], 0
    for name in sorted(entry.subtasks):
        result = entry.subtasks[name]
        if result.total == 0:
            skipped += 1
            continue
        low, high = wilson_interval(result.correct, result.total)
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{result.total}</td>"
            f"<td>{100 * result.correct / result.total:.1f}</td>"
            f"<td>[{low:.1f}, {high:.1f}]</td><td>{result.no_answer}</td></tr>"
        )
    kind = SUBTASK_NAME.get(family, "subtask")
    caption = (
        f"{run_label}, {column}, {shots} shot(s) requested ({entry.shots} used): accuracy per "
        f"{kind} in %, n = questions scored, 95% Wilson interval, no answer = outputs with no "
        "extractable answer"
        + (f"; {skipped} {kind}(s) with no questions left out" if skipped else "")
    )
    return (
        f"<details><summary>{html.escape(column)} ({len(rows)} {kind}s)</summary>"
        f"<table class='breakdown'><caption>{html.escape(caption)}</caption><thead><tr>"
        f"<th>{kind}</th><th>n</th><th>accuracy</th><th>95% interval</th><th>no answer</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></details>"
    )


def breakdown_html(
    runs: Sequence,
    columns: Sequence[tuple[tuple[str, str], str]],
    *,
    shots: int,
    selection: Selection,
    method: str | None = None,
) -> str:
    """One ``<details>`` per run with one folded table per column that has an entry; columns
    without one are named in a line; "" when no run has any entry (no empty section)."""
    parts = []
    for run in runs:
        entries = scores.read_entries(run.results_files)
        tables, missing = [], []
        for (family, mode), column in columns:
            entry = scores.find_entry(entries, family, mode, shots, selection, method)
            if entry is None:
                missing.append(column)
            else:
                tables.append(_subtask_table(run.label, column, entry, family, shots))
        if not tables:
            continue
        absent = (
            f"<p class='note'>No results.json entry for: {html.escape(', '.join(missing))}.</p>"
            if missing
            else ""
        )
        parts.append(
            f"<details><summary>Per-task breakdown: {html.escape(run.label)}</summary>"
            f"{''.join(tables)}{absent}</details>"
        )
    return "".join(parts)

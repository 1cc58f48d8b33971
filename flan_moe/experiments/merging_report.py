"""Report tables of the averaging, merging and proxy-tuning ablations (``merging_stages``).

Every table reads results.json entries through ``flan_moe.experiments.scores`` (the same
cells, intervals and paired differences as every other report):

* all experiments: every arm with its 95% bootstrap interval, plus chance / constant rows;
* the stated differences, paired bootstrap ("not significant" when the interval holds 0):
  averaging: EMA / SWA / LAWA - last checkpoint, per model; merging: each merge - the
  model tuned on the union, and aligned - unaligned merges; proxy-tuning: proxy - base,
  tuned - base, expert - anti-expert;
* proxy-tuning: the gap closed, (proxy - base) / (tuned - base) in %, with a paired
  bootstrap interval over the same resampled questions for the three models
  (``bootstrap.gap_closed``).
"""

from __future__ import annotations

from collections.abc import Sequence

from flan_moe.evaluation import bootstrap
from flan_moe.experiments import report, scores
from flan_moe.experiments.report import Run, Table
from flan_moe.experiments.scores import Cell, Selection

COLUMNS: report.Columns = ((("mmlu", "direct"), "MMLU-Direct"), (("bbh", "direct"), "BBH-Direct"))
NOTES = {
    "ablation_weight_averaging": (
        "Each model is instruction-tuned once with EMA and SWA kept in its optimizer state; "
        "the arms are weight choices of that one run (flan_moe.cli.eval --weights=...)."
    ),
    "ablation_merging": (
        "Clusters (tasks/local_clusters.py): 'knowledge' = arc, openbook_qa, triviaqa, "
        "jeopardy, boolq, math_qa, aqua, gsm8k, qasc, strategyqa, creak; 'commonsense' = "
        "commonsense_qa, copa, piqa, siqa, winograd_wsc, winogrande, ecqa, sensemaking. Each "
        "cluster model and the union model get the same steps from the same pre-trained "
        "model, which is the task-vector base. 'experts aligned': the second model's experts "
        "permuted to the first's by Hungarian weight matching before merging."
    ),
    "ablation_proxy_tuning": (
        "Proxy-tuning: next-token logits = base + alpha (expert - anti-expert) at every step "
        "and in rank classification (flan_moe.cli.eval --proxy). Gap closed = (proxy - base) "
        "/ (tuned - base); undefined where tuned == base."
    ),
}


def _by(runs: Sequence[Run], **attributes) -> list[Run]:
    return [r for r in runs if all(r.attributes.get(k) == v for k, v in attributes.items())]


def stated_pairs(name: str, runs: Sequence[Run]) -> list[tuple[Run, Run]]:
    """The (a, b) differences a - b the experiment's report states."""
    pairs: list[tuple[Run, Run]] = []
    if name == "ablation_weight_averaging":
        for raw in _by(runs, weights="raw"):
            family = raw.attributes["family"]
            pairs += [(r, raw) for r in _by(runs, family=family) if r is not raw]
    elif name == "ablation_merging":
        for union in _by(runs, arm="union"):
            merged = _by(runs, family=union.attributes["family"], arm="merged")
            pairs += [(m, union) for m in merged]
            for m in (m for m in merged if m.attributes.get("aligned")):
                plain = _by(merged, method=m.attributes["method"], aligned=False)
                pairs += [(m, p) for p in plain]
    elif name == "ablation_proxy_tuning":
        role = {r.attributes.get("role"): r for r in runs}
        for a, b in (("proxy", "base"), ("tuned", "base"), ("expert", "antiexpert")):
            if a in role and b in role:
                pairs.append((role[a], role[b]))
    return pairs


def gap_closed_table(runs: Sequence[Run], *, title: str, selection: Selection) -> Table:
    """One row: the gap closed by the proxy per column and for the Average, in %."""
    role = {r.attributes.get("role"): r for r in runs}
    header = ("Gap closed (%)", *(c for _, c in COLUMNS), "Average")
    comps = {
        side: scores.run_cells(role[side].results_files, COLUMNS, shots=0, selection=selection)
        for side in ("proxy", "base", "tuned")
        if side in role
    }
    cells: dict[str, Cell] = {}
    notes = []
    names = [c for _, c in COLUMNS]
    for column in (*names, "Average"):
        use = names if column == "Average" else [column]
        sides = [[comps[s][1].get(c) for c in use] for s in ("proxy", "base", "tuned")
                 if s in comps]  # fmt: skip
        if len(sides) < 3 or any(c is None for side in sides for c in side):
            cells[column] = Cell(None)
            continue
        try:
            found = bootstrap.gap_closed(*sides)
        except ValueError as err:  # evaluated on different questions
            cells[column] = Cell(None)
            notes.append(f"{column}: {err}")
            continue
        if found.interval is None:
            cells[column] = Cell(None)
            notes.append(f"{column}: undefined (tuned == base)")
            continue
        iv = found.interval.scaled(100)
        cells[column] = Cell(iv.value, (iv.low, iv.high), significant=iv.significant)
        if found.undefined:
            notes.append(f"{column}: {found.undefined}/{found.num_samples} resamples with "
                         "tuned == base left out")  # fmt: skip
    label = "proxy vs base, of tuned vs base"
    note = (
        "Gap closed = (proxy − base) / (tuned − base) × 100, with a 95% paired-bootstrap "
        f"interval (the same resampled questions for the three models); '{report.NOT_SIGNIFICANT}'"
        " = the interval contains 0. " + "; ".join(notes)
    )
    return Table(report._caption(title, selection), header,
                 ((label, tuple(cells[c].value for c in header[1:])),), note.strip(),
                 cells={label: cells}, all_deltas=True)  # fmt: skip


def tables(name: str, runs: Sequence[Run], *, title: str, selection: Selection) -> list[Table]:
    """The experiment's tables: arms, stated differences, and (proxy) the gap closed."""
    out = [report.results_table(runs, shots=0, title=title, columns=COLUMNS, selection=selection)]
    if pairs := stated_pairs(name, runs):
        out.append(report.differences_table(pairs, shots=0, columns=COLUMNS,
                                             title=f"Differences — {title}",
                                             selection=selection))  # fmt: skip
    if name == "ablation_proxy_tuning":
        out.append(gap_closed_table(runs, title=f"Gap closed — {title}", selection=selection))
    return out

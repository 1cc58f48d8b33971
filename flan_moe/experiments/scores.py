"""The numbers in the report's cells: a score, its 95% interval, the effective shots, and the
reference rows (chance, constant answer) and paired differences, all from results.json.

Entries are selected explicitly by (suite family, mode, shots, method) AND by a `Selection`
(MMLU split, subsample per subtask): a val result never stands in for a test one, nor a
subsampled one for a full one. A cell's score is the paper's number for its suite (MMLU: macro
over the 57 subjects; BBH: macro over its 23 tasks; GSM8K/SVAMP: accuracy); its interval is a
percentile bootstrap over the entry's per-question outcomes, resampled within subtasks
(`flan_moe.evaluation.bootstrap`, fixed seed). The "Average" cell is the mean of the columns'
scores, its interval from the same bootstrap with each suite resampled independently.
Differences (MoE vs dense, after vs before instruction tuning, an ablation arm vs its baseline)
use a paired bootstrap: the same resampled questions for both models.

Reference rows: "chance" is the expected score of a uniform guess among each question's options
(MMLU 1/4; BBH 1/#options where the question lists options or the task has at most 4 distinct
answers, else 0; GSM8K/SVAMP 0); "constant answer" is the score of always giving option (A),
or the subtask's most common exemplar answer where there are no options
(`flan_moe.evaluation.baselines.ConstantPredictor`), with its interval.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from flan_moe.evaluation import bootstrap
from flan_moe.evaluation import results as results_lib

#: The evaluator caps shots at a suite's exemplar count (BBH has 3 per file).
MAX_SHOTS = {"bbh": 3}
STATISTIC = {"mmlu": "macro", "bbh": "bbh_tasks"}  # others: "micro" (one subtask)


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which entries a table reads: the MMLU split and the examples per subtask (None: all)."""

    split: str = "val"
    subsample: int | None = None

    def caption(self) -> str:
        sub = "all examples" if self.subsample is None else f"first {self.subsample} per subtask"
        return f"MMLU {self.split} split; {sub}"


VAL_ALL = Selection()  # every example of MMLU's val split


@dataclasses.dataclass(frozen=True)
class Cell:
    """One table cell. ``interval``: (low, high) in percent; ``shots``: (mean effective,
    requested) for few-shot cells; ``significant``: for differences, whether the 95% interval
    excludes 0 (None when there is no interval)."""

    value: float | None
    interval: tuple[float, float] | None = None
    shots: tuple[float, int] | None = None
    significant: bool | None = None
    method: str = ""
    at_cap: tuple[int, int] | None = None  # (generations that hit the decode cap, generations)


def used_shots(family: str, shots: int) -> int:
    return min(shots, MAX_SHOTS.get(family, shots))


@functools.lru_cache(maxsize=256)
def _read(path: str, mtime: float) -> tuple[results_lib.EvalEntry, ...]:
    del mtime  # part of the cache key only
    return tuple(results_lib.read_results(path))


def read_entries(paths: Sequence[str]) -> list[results_lib.EvalEntry]:
    import os

    return [e for p in paths for e in _read(p, os.path.getmtime(p) if os.path.exists(p) else 0)]


def find_entry(
    entries: Sequence[results_lib.EvalEntry],
    family: str,
    mode: str,
    shots: int,
    selection: Selection,
    method: str | None = None,
) -> results_lib.EvalEntry | None:
    """The newest entry of this suite/mode/shots/method for the selection (split, subsample)."""
    matching = [
        e
        for e in entries
        if (e.family or results_lib.suite_family(e.suite)) == family
        and e.mode == mode
        and e.shots == used_shots(family, shots)
        and (method is None or e.method == method)
        and e.subsample == selection.subsample
        and (family != "mmlu" or (e.split or "val") == selection.split)
        and not e.method.startswith("baseline_")
    ]
    return max(matching, key=lambda e: e.created) if matching else None


def entry_score(entry: results_lib.EvalEntry) -> float | None:
    """The paper's number for an entry, in percent (None when not computable)."""
    summary = entry.summary
    value = summary.get("macro_avg_tasks") if entry.family == "bbh" else summary.get("macro_avg")
    return None if value is None else 100.0 * value


def component(family: str, outcomes: Mapping[str, Any]) -> bootstrap.Component | None:
    """The bootstrap component of one entry's outcomes (None when it stored none)."""
    if not outcomes:
        return None
    arrays = (
        bootstrap.outcomes_from_bits(outcomes)
        if all(isinstance(v, str) for v in outcomes.values())
        else {k: np.asarray(v) for k, v in outcomes.items()}
    )
    groups = {n: results_lib.bbh_task_of(n) for n in arrays if n in results_lib.BBH_FILES}
    return bootstrap.Component(arrays, STATISTIC.get(family, "micro"), groups)


def _pct_interval(found: bootstrap.Interval) -> tuple[float, float]:
    return (100 * found.low, 100 * found.high)


def entry_cell(entry: results_lib.EvalEntry | None, family: str) -> Cell:
    if entry is None:
        return Cell(None)
    comp = component(family, entry.outcomes)
    interval = _pct_interval(bootstrap.interval([comp])) if comp is not None else None
    eff = (entry.metadata.get("effective_shots") or {}).get("mean")
    shots = (float(eff), entry.shots) if eff is not None and entry.shots > 0 else None
    cap = entry.metadata.get("decode_cap") or {}
    at_cap = (int(cap["hit"]), int(cap["generated"])) if "hit" in cap else None
    return Cell(entry_score(entry), interval, shots, method=entry.method, at_cap=at_cap)


def average_cell(cells: Sequence[Cell], components: Sequence[Any]) -> Cell:
    """Mean of the columns (missing when any is); interval when every column has outcomes."""
    if not cells or any(c.value is None for c in cells):
        return Cell(None)
    value = sum(c.value for c in cells) / len(cells)  # type: ignore[misc]
    if any(comp is None for comp in components):
        return Cell(value)
    return Cell(value, _pct_interval(bootstrap.interval(list(components))))


def run_cells(
    paths: Sequence[str],
    columns: Sequence[tuple[tuple[str, str], str]],
    *,
    shots: int,
    selection: Selection,
    method: str | None = None,
) -> tuple[dict[str, Cell], dict[str, bootstrap.Component | None]]:
    """({column: Cell} with "Average", {column: bootstrap component}) of one run."""
    entries = read_entries(paths)
    cells: dict[str, Cell] = {}
    comps: dict[str, bootstrap.Component | None] = {}
    for (family, mode), column in columns:
        entry = find_entry(entries, family, mode, shots, selection, method)
        cells[column] = entry_cell(entry, family)
        comps[column] = None if entry is None else component(family, entry.outcomes)
    cells["Average"] = average_cell(list(cells.values()), list(comps.values()))
    return cells, comps


def difference_cell(a: Sequence[Any], b: Sequence[Any], value: float | None) -> Cell:
    """A paired difference (percent points) of matching components; no interval when either
    side lacks outcomes or the two were not evaluated on the same questions."""
    if value is None:
        return Cell(None)
    if not a or any(c is None for c in (*a, *b)):
        return Cell(value)
    try:
        found = bootstrap.paired_difference(list(a), list(b))
    except ValueError:
        return Cell(value)
    return Cell(100 * found.value, _pct_interval(found), significant=found.significant)


# ----------------------------------------------------------------------------- references


@functools.lru_cache(maxsize=64)
def _examples(family: str, mode: str, split: str, subsample: int | None):
    from flan_moe.data import heldout

    loaded = heldout.load_suite(family, mode=mode, shots=0, split=split)
    return {name: list(exs)[:subsample] for name, exs in loaded.items()}


def _num_options(example: Any, answer_set: Sequence[str]) -> int:
    count = len(example.options) or len(getattr(example, "option_texts", ()))
    if count:
        return count
    return len(answer_set) if 0 < len(answer_set) <= 4 else 0


def chance_cell(family: str, mode: str, selection: Selection) -> Cell:
    """Expected score of a uniform guess among each question's options (module docstring)."""
    examples = _examples(family, mode, selection.split, selection.subsample)
    every = _examples(family, mode, selection.split, None)  # a subtask's answer set: all of it
    sets = {name: sorted({ex.answer for ex in exs}) for name, exs in every.items()}
    per_subtask, sizes = {}, {}
    for name, exs in examples.items():
        if exs:
            counts = [_num_options(ex, sets.get(name, ())) for ex in exs]
            per_subtask[name] = np.mean([1 / n if n else 0.0 for n in counts])
            sizes[name] = len(exs)
    groups = {n: results_lib.bbh_task_of(n) for n in per_subtask if n in results_lib.BBH_FILES}
    value = bootstrap.combine(STATISTIC.get(family, "micro"), per_subtask, sizes, groups)
    return Cell(100 * float(value))


def constant_cell(family: str, mode: str, selection: Selection) -> tuple[Cell, Any]:
    """(score of the constant-answer baseline with its interval, its bootstrap component)."""
    from flan_moe.evaluation import baselines

    examples = _examples(family, mode, selection.split, selection.subsample)
    predictor = baselines.ConstantPredictor.from_exemplar_answers(
        baselines.exemplar_answers(family)
    )
    entry, records = baselines.run_baseline(
        predictor, examples, suite=family, mode=mode, split=selection.split
    )
    comp = component(family, results_lib.outcomes_of(records))
    interval = _pct_interval(bootstrap.interval([comp])) if comp is not None else None
    return Cell(entry_score(entry), interval, method=entry.method), comp


@functools.lru_cache(maxsize=32)
def reference_cells(
    columns: tuple[tuple[tuple[str, str], str], ...], selection: Selection
) -> dict[str, dict[str, Cell]]:
    """{"chance": {column: Cell}, "constant answer": {...}} with their "Average" columns
    (computed once per columns and selection; treat the result as read-only)."""
    chance: dict[str, Cell] = {}
    constant: dict[str, Cell] = {}
    comps = []
    for (family, mode), column in columns:
        chance[column] = chance_cell(family, mode, selection)
        constant[column], comp = constant_cell(family, mode, selection)
        comps.append(comp)
    chance["Average"] = average_cell(list(chance.values()), [None])
    constant["Average"] = average_cell(list(constant.values()), comps)
    return {"chance": chance, "constant answer": constant}

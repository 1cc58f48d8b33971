"""Evaluation results: per-subtask counts, the paper's averages, results.json and predictions.

Pure Python (no TensorFlow, SeqIO, gin or JAX).

results.json (one file per checkpoint directory or per MODEL_DIR; both work, because every
entry names its checkpoint)::

    {
      "schema_version": 1,
      "entries": [                         # sorted by key; one per key
        {
          # --- the key: a sweep skips a (checkpoint, suite, mode, shots, method, subsample,
          #     split) that is already here (`has_entry`) unless forced
          "checkpoint": "checkpoint_2000", # whatever id the evaluator uses (dir name or step)
          "suite": "mmlu",                 # suite name as given on the command line
          "mode": "direct",                # "direct" | "cot"
          "shots": 5,                      # int
          "method": "generation",          # e.g. "generation", "scoring", "scoring_len_norm",
                                           #      "baseline_constant", "baseline_random"
          "subsample": null,               # null = every example; k = k examples per subtask
          "split": "val",                  # MMLU "val" | "test"; null for one-split suites.
                                           # A file written before splits were keyed has no
                                           # MMLU split: it is read as "val" (one notice)
          # --- data
          "family": "mmlu",                # "mmlu" | "bbh" | "gsm8k" | "svamp" | other
          "outcomes": {"abstract_algebra": "0110..."},  # 1/0 per question in order (bootstrap)
          "created": "2025-01-01T00:00:00Z",
          "predictions_file": "predictions/mmlu.direct.5shot.generation.jsonl",  # or null
          "metadata": {...},               # free-form: decode settings, seed, timings
          "subtasks": {                    # one per MMLU subject / BBH file / dataset
            "abstract_algebra": {"correct": 3, "total": 11, "no_answer": 1,
                                 "accuracy": 0.2727...}          # null when total == 0
          },
          "summary": {                     # recomputed from "subtasks" by `summarize`
            "num_subtasks": 57, "num_examples": 1531, "num_correct": 400, "num_no_answer": 2,
            "micro_avg": 0.26,             # correct / examples, over all questions
            "macro_avg": 0.25,             # mean of subtask accuracies
            "missing_subtasks": [],        # MMLU/BBH: expected subtasks with no result
            # MMLU only: per category (STEM, humanities, social sciences, other)
            "categories": {"STEM": {"macro_avg": .., "micro_avg": .., "num_subtasks": 18,
                                    "num_examples": ..}, ...},
            # BBH only: macro over the 27 files (== macro_avg) and over the 23 tasks, where
            # the three logical_deduction_* files form one task and the three
            # tracking_shuffled_objects_* files another (a task's accuracy is the mean of its
            # files' accuracies)
            "macro_avg_files": .., "macro_avg_tasks": .., "tasks": {"logical_deduction": ..}
          }
        }
      ]
    }

A value that could not be computed (no examples, no subtask) is null or absent, never 0.
Writes are atomic: a temporary file in the same directory, fsync, then `os.replace`; a crash
mid-write leaves the previous file intact. Two processes updating the same results.json at the
same moment are not coordinated (run one sweep per MODEL_DIR).

Every ``metadata`` of the evaluator holds ``effective_shots`` (``requested``, ``counts`` =
{exemplars kept: prompts}, ``mean``), ``decode_cap`` (outputs that hit ``max_decode_len``) and
``intervals`` (95% bootstrap intervals of micro/macro/bbh_tasks, `flan_moe.evaluation.bootstrap`).

Per-example predictions are JSONL, one `PredictionRecord` per line: example_id, task, output
(the raw model text, or the predicted option for scoring), extracted, answer, correct, extra.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from flan_moe.data import heldout
from flan_moe.evaluation import metrics

SCHEMA_VERSION = 1

# ------------------------------------------------------------------------- MMLU categories

# The tables of subjects, categories and files live with the suites' readers.
MMLU_CATEGORY_NAMES: tuple[str, ...] = heldout.MMLU_CATEGORIES  # STEM, humanities, ...
#: The 57 MMLU subjects -> their category (the 4 groups of the MMLU paper's categories).
MMLU_CATEGORIES: dict[str, str] = heldout.MMLU_SUBJECT_CATEGORY
#: The 27 BBH files (bbh/bbh/<name>.json).
BBH_FILES: tuple[str, ...] = heldout.BBH_FILES


def bbh_task_of(file_name: str) -> str:
    """The BBH task (of 23) a file (of 27) belongs to: "logical_deduction_five_objects" ->
    "logical_deduction"; every other file is its own task."""
    if file_name not in BBH_FILES:
        raise ValueError(f"{file_name!r} is not one of the 27 BBH files (see BBH_FILES)")
    return heldout.bbh_family(file_name)


BBH_TASKS: tuple[str, ...] = tuple(dict.fromkeys(bbh_task_of(name) for name in BBH_FILES))
#: BBH files whose tasks come in 3 sizes; each group counts as ONE task in the 23-task average.
BBH_TASK_GROUPS: dict[str, tuple[str, ...]] = {
    task: files
    for task in BBH_TASKS
    if len(files := tuple(f for f in BBH_FILES if bbh_task_of(f) == task)) > 1
}

_EXPECTED_SUBTASKS: dict[str, tuple[str, ...]] = {
    "mmlu": tuple(MMLU_CATEGORIES),
    "bbh": BBH_FILES,
}


def suite_family(suite: str) -> str:
    """The family of a suite name: "mmlu", "mmlu_test", "mmlu:val" -> "mmlu"; "bbh_cot" ->
    "bbh"; "gsm8k" -> "gsm8k"; an unknown name is its own family (generic summary)."""
    for family in ("mmlu", "bbh", "gsm8k", "svamp"):
        if suite == family or (suite.startswith(family) and suite[len(family)] in "_:-./"):
            return family
    return suite


# ---------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class SubtaskResult:
    """Counts for one subtask; `no_answer` counts outputs with no extractable answer."""

    correct: int
    total: int
    no_answer: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.correct <= self.total or not 0 <= self.no_answer <= self.total:
            raise ValueError(
                f"inconsistent subtask counts: correct={self.correct}, "
                f"no_answer={self.no_answer}, total={self.total}"
            )

    @property
    def accuracy(self) -> float | None:
        return None if self.total == 0 else self.correct / self.total

    def to_json(self) -> dict[str, Any]:
        return {
            "correct": self.correct,
            "total": self.total,
            "no_answer": self.no_answer,
            "accuracy": self.accuracy,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SubtaskResult:
        return cls(int(data["correct"]), int(data["total"]), int(data.get("no_answer", 0)))


@dataclasses.dataclass(frozen=True)
class PredictionRecord:
    """One evaluated example, as written to the predictions JSONL."""

    example_id: str
    task: str
    output: str | None
    extracted: str | None
    answer: str
    correct: bool
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class EvalExampleLike(Protocol):
    """The fields of `flan_moe.data.heldout.EvalExample` that grading and baselines read.

    ``task`` is the suite ("mmlu", "bbh", "gsm8k", "svamp"), ``subtask`` the MMLU subject /
    BBH file stem / suite name, ``answer`` the gold answer as compared, ``options`` the strings
    a rank-classification scorer compares (MMLU: "A".."D"; empty when not multiple choice) and
    ``choices`` the option texts (MMLU).
    """

    @property
    def task(self) -> str: ...
    @property
    def subtask(self) -> str: ...
    @property
    def inputs(self) -> str: ...
    @property
    def answer(self) -> str: ...
    @property
    def options(self) -> tuple[str, ...]: ...
    @property
    def choices(self) -> tuple[str, ...]: ...
    @property
    def example_id(self) -> str: ...


def grade_examples(
    examples: Sequence[EvalExampleLike],
    outputs: Sequence[str | None],
    *,
    cot: bool,
    answer_format: metrics.AnswerFormat | None = None,
) -> list[PredictionRecord]:
    """Grades one output per example (`metrics.grade_output`) into prediction records.

    The answer format comes from the example's suite (`metrics.ANSWER_FORMATS`, via
    `suite_family(example.task)`) unless given. For "choice", the option texts are the
    example's ``choices`` (or its ``options`` when it has no ``choices``).
    """
    if len(examples) != len(outputs):
        raise ValueError(f"{len(examples)} examples but {len(outputs)} outputs")
    records = []
    for example, output in zip(examples, outputs):
        fmt = answer_format or metrics.ANSWER_FORMATS.get(suite_family(example.task))
        if fmt is None:
            raise ValueError(
                f"no answer format known for suite {example.task!r}; pass answer_format "
                f"(one of 'exact', 'choice', 'number')"
            )
        choices = tuple(
            getattr(example, "choices", ())
            or getattr(example, "options", ())
            or getattr(example, "option_texts", ())  # BBH: for strict grading
        )
        graded = metrics.grade_output(
            output, answer=example.answer, answer_format=fmt, choices=choices, cot=cot
        )
        records.append(
            PredictionRecord(
                example_id=example.example_id,
                task=getattr(example, "subtask", "") or example.task,
                output=output,
                extracted=graded.extracted,
                answer=example.answer,
                correct=graded.correct,
            )
        )
    return records


def tally(records: Iterable[PredictionRecord]) -> dict[str, SubtaskResult]:
    """Per-task counts from graded records (no_answer = records whose `extracted` is None)."""
    counts: dict[str, list[int]] = {}
    for record in records:
        c = counts.setdefault(record.task, [0, 0, 0])
        c[0] += bool(record.correct)
        c[1] += 1
        c[2] += record.extracted is None
    return {task: SubtaskResult(*c) for task, c in sorted(counts.items())}


# --------------------------------------------------------------------------- averages


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _group_summary(subtasks: Mapping[str, SubtaskResult]) -> dict[str, Any]:
    accs = [r.accuracy for r in subtasks.values() if r.accuracy is not None]
    total = sum(r.total for r in subtasks.values())
    correct = sum(r.correct for r in subtasks.values())
    return {
        "num_subtasks": len(accs),
        "num_examples": total,
        "macro_avg": _mean(accs),
        "micro_avg": correct / total if total else None,
    }


def _canonical_subtask(family: str, name: str) -> str:
    expected = _EXPECTED_SUBTASKS[family]
    if name in expected:
        return name
    for sep in ":_/.-":
        prefix = family + sep
        if name.startswith(prefix) and name[len(prefix) :] in expected:
            return name[len(prefix) :]
    known = "MMLU_CATEGORIES" if family == "mmlu" else "BBH_FILES"
    raise ValueError(
        f"subtask {name!r} is not a known {family} subtask; use the bare subject/file name "
        f"as in {known} (e.g. {expected[0]!r})"
    )


def summarize(family: str, subtasks: Mapping[str, SubtaskResult]) -> dict[str, Any]:
    """The averages of one suite run (layout in the module docstring).

    Every family: micro_avg (over questions), macro_avg (over subtasks with examples),
    counts. "mmlu": per-category macro/micro averages and the missing subjects of the 57.
    "bbh": macro over files (27) and over tasks (23) and the missing files. A subtask with no
    examples contributes nothing (its accuracy is missing, not 0).
    """
    if family in _EXPECTED_SUBTASKS:
        subtasks = {_canonical_subtask(family, name): r for name, r in subtasks.items()}
    summary = _group_summary(subtasks)
    summary["num_correct"] = sum(r.correct for r in subtasks.values())
    summary["num_no_answer"] = sum(r.no_answer for r in subtasks.values())
    if family in _EXPECTED_SUBTASKS:
        present = {n for n, r in subtasks.items() if r.total > 0}
        summary["missing_subtasks"] = [n for n in _EXPECTED_SUBTASKS[family] if n not in present]
    if family == "mmlu":
        summary["categories"] = {
            category: _group_summary(
                {n: r for n, r in subtasks.items() if MMLU_CATEGORIES[n] == category}
            )
            for category in MMLU_CATEGORY_NAMES
        }
    elif family == "bbh":
        task_accs: dict[str, list[float]] = {}
        for name, result in subtasks.items():
            if result.accuracy is not None:
                task_accs.setdefault(bbh_task_of(name), []).append(result.accuracy)
        tasks = {task: _mean(task_accs[task]) for task in BBH_TASKS if task in task_accs}
        summary["macro_avg_files"] = summary["macro_avg"]
        summary["macro_avg_tasks"] = _mean(list(tasks.values()))
        summary["tasks"] = tasks
    return summary


# ----------------------------------------------------------------------------- entries


@dataclasses.dataclass(frozen=True)
class EntryKey:
    """What identifies one evaluation; a sweep skips keys already in results.json."""

    checkpoint: str
    suite: str
    mode: str
    shots: int
    method: str
    subsample: int | None = None
    split: str | None = None  # MMLU "val"/"test"; None for suites with one evaluation set


@dataclasses.dataclass(frozen=True)
class EvalEntry:
    """One (checkpoint, suite, mode, shots, method, subsample) result; see module docstring."""

    checkpoint: str
    suite: str
    mode: str
    shots: int
    method: str
    subtasks: Mapping[str, SubtaskResult]
    subsample: int | None = None
    family: str = ""
    split: str | None = None
    created: str = ""
    predictions_file: str | None = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    outcomes: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def key(self) -> EntryKey:
        return EntryKey(
            self.checkpoint,
            self.suite,
            self.mode,
            self.shots,
            self.method,
            self.subsample,
            self.split,
        )

    @property
    def summary(self) -> dict[str, Any]:
        return summarize(self.family or suite_family(self.suite), self.subtasks)

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "suite": self.suite,
            "mode": self.mode,
            "shots": self.shots,
            "method": self.method,
            "subsample": self.subsample,
            "family": self.family or suite_family(self.suite),
            "split": self.split,
            "created": self.created,
            "predictions_file": self.predictions_file,
            "metadata": dict(self.metadata),
            "outcomes": dict(sorted(self.outcomes.items())),
            "subtasks": {name: r.to_json() for name, r in sorted(self.subtasks.items())},
            "summary": self.summary,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvalEntry:
        return cls(
            checkpoint=str(data["checkpoint"]),
            suite=str(data["suite"]),
            mode=str(data["mode"]),
            shots=int(data["shots"]),
            method=str(data["method"]),
            subsample=None if data.get("subsample") is None else int(data["subsample"]),
            family=str(data.get("family") or ""),
            split=data.get("split"),
            created=str(data.get("created", "")),
            predictions_file=data.get("predictions_file"),
            metadata=dict(data.get("metadata") or {}),
            subtasks={n: SubtaskResult.from_json(r) for n, r in data["subtasks"].items()},
            outcomes=dict(data.get("outcomes") or {}),
        )


def make_entry(
    *,
    checkpoint: str,
    suite: str,
    mode: str,
    shots: int,
    method: str,
    subtasks: Mapping[str, SubtaskResult],
    subsample: int | None = None,
    family: str | None = None,
    split: str | None = None,
    predictions_file: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    outcomes: Mapping[str, str] | None = None,
) -> EvalEntry:
    """Builds an entry stamped with the current UTC time; checks the subtask names now.

    An MMLU entry without a split is the "val" split (the evaluator's default)."""
    family = family or suite_family(suite)
    if family == "mmlu" and split is None:
        split = "val"
    if mode not in ("direct", "cot"):
        raise ValueError(f"mode must be 'direct' or 'cot', got {mode!r}")
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    if family in _EXPECTED_SUBTASKS:
        canonical = {_canonical_subtask(family, name): r for name, r in subtasks.items()}
        if len(canonical) != len(subtasks):
            raise ValueError(f"two subtask names map to the same {family} subtask: {subtasks}")
        subtasks = canonical
    created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return EvalEntry(
        checkpoint=checkpoint,
        suite=suite,
        mode=mode,
        shots=shots,
        method=method,
        subtasks=dict(subtasks),
        subsample=subsample,
        family=family,
        split=split,
        created=created,
        predictions_file=predictions_file,
        metadata=dict(metadata or {}),
        outcomes=dict(outcomes or {}),
    )


def outcomes_of(records: Iterable[PredictionRecord]) -> dict[str, str]:
    """Per-subtask "0110..." strings of graded records, in record order (`bootstrap`)."""
    bits: dict[str, list[str]] = {}
    for record in records:
        bits.setdefault(record.task, []).append("1" if record.correct else "0")
    return {task: "".join(b) for task, b in sorted(bits.items())}


def _sort_key(entry: EvalEntry) -> tuple[Any, ...]:
    k = entry.key
    return (
        k.checkpoint,
        k.suite,
        k.split or "",
        k.mode,
        k.shots,
        k.method,
        k.subsample is not None,
        k.subsample,
    )


def merge_entries(existing: Iterable[EvalEntry], new: Iterable[EvalEntry]) -> list[EvalEntry]:
    """Union of two entry lists; for a key in both, the entry from `new` wins."""
    merged = {entry.key: entry for entry in existing}
    merged.update((entry.key, entry) for entry in new)
    return sorted(merged.values(), key=_sort_key)


def find_entry(entries: Iterable[EvalEntry], key: EntryKey) -> EvalEntry | None:
    """The entry with this key, or None."""
    return next((entry for entry in entries if entry.key == key), None)


def has_entry(results: str | os.PathLike[str] | Iterable[EvalEntry], key: EntryKey) -> bool:
    """Whether results (a results.json path, possibly absent, or entries) hold this key."""
    entries = read_results(results) if isinstance(results, str | os.PathLike) else results
    return find_entry(entries, key) is not None


# ----------------------------------------------------------------------------------- files


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"refusing to write non-finite number {value} into results")
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def read_results(path: str | os.PathLike[str]) -> list[EvalEntry]:
    """Entries of a results.json; an absent file has none. A bad file raises ValueError."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {version!r}, this code reads {SCHEMA_VERSION}")
        entries = [EvalEntry.from_json(item) for item in data["entries"]]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(
            f"cannot read results file {path}: {err}. Restore it, or move it aside to start a "
            "fresh one (evaluations in it would then be redone)"
        ) from err
    return _legacy_split(entries, path)


def _legacy_split(entries: list[EvalEntry], path: Path) -> list[EvalEntry]:
    """MMLU entries written before the split was part of the key are read as "val"."""
    old = [e for e in entries if e.split is None and (e.family or suite_family(e.suite)) == "mmlu"]
    if not old:
        return entries
    print(
        f"note: {path} has {len(old)} MMLU entries without a split (written before splits "
        "were keyed); reading them as split 'val'",
        file=sys.stderr,
    )
    return [dataclasses.replace(e, split="val") if e in old else e for e in entries]


def write_results(path: str | os.PathLike[str], entries: Iterable[EvalEntry]) -> None:
    """Writes results.json atomically (entries sorted by key, duplicates rejected)."""
    entries = list(entries)
    if len({e.key for e in entries}) != len(entries):
        raise ValueError("duplicate entry keys; combine them with merge_entries first")
    payload = {
        "schema_version": SCHEMA_VERSION,
        "entries": [e.to_json() for e in sorted(entries, key=_sort_key)],
    }
    _atomic_write_text(Path(path), json.dumps(_json_safe(payload), indent=2) + "\n")


def update_results(
    path: str | os.PathLike[str], new_entries: Iterable[EvalEntry]
) -> list[EvalEntry]:
    """Merges `new_entries` into the results.json at `path` (created if absent); returns all."""
    merged = merge_entries(read_results(path), new_entries)
    write_results(path, merged)
    return merged


def write_predictions_jsonl(
    path: str | os.PathLike[str], records: Iterable[PredictionRecord]
) -> int:
    """Writes one JSON object per record, atomically; returns the number written."""
    lines = [
        json.dumps(_json_safe(dataclasses.asdict(record)), ensure_ascii=False) for record in records
    ]
    _atomic_write_text(Path(path), "".join(line + "\n" for line in lines))
    return len(lines)


def read_predictions_jsonl(path: str | os.PathLike[str]) -> list[PredictionRecord]:
    """Reads a predictions JSONL written by `write_predictions_jsonl`."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(PredictionRecord(**json.loads(line)))
            except (ValueError, TypeError) as err:
                raise ValueError(f"{path}:{line_no}: not a prediction record: {err}") from err
    return records


# ----------------------------------------------------------------------------------- table


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


_TABLE_COLUMNS = (
    "checkpoint",
    "suite",
    "split",
    "mode",
    "shots",
    "eff_shots",
    "method",
    "n",
    "macro",
    "macro_95ci",
    "micro",
    "bbh23",
    "STEM",
    "hum",
    "soc",
    "other",
    "no_ans",
    "at_cap",
)


def method_label(method: str) -> str:
    """The method as shown in tables: rank classification is labelled "ranked"."""
    return method.replace("scoring", "ranked")


def effective_shots_text(entry: EvalEntry) -> str:
    """Mean exemplars kept, "*" when fewer than the requested k on average ("-" if unknown)."""
    eff = entry.metadata.get("effective_shots") or {}
    if eff.get("mean") is None:
        return "-"
    return f"{eff['mean']:.2f}" + ("*" if eff["mean"] < entry.shots - 1e-9 else "")


def _interval_text(entry: EvalEntry, statistic: str) -> str:
    found = (entry.metadata.get("intervals") or {}).get(statistic)
    return "-" if not found else f"[{100 * found[1]:.1f}, {100 * found[2]:.1f}]"


def format_table(entries: Iterable[EvalEntry]) -> str:
    """A plain-text table, one row per entry, accuracies in percent; '-' marks missing.

    macro/micro: averages over subtasks/questions; macro 95% CI: its bootstrap interval;
    bbh23: BBH over its 23 tasks (macro is over the 27 files); STEM/hum/soc/other: MMLU
    category macro averages; n: examples (with "/k" when subsampled to k per subtask);
    eff_shots: mean exemplars kept in the prompts ("*": fewer than shots); no_ans: outputs
    without an answer; at_cap: generations that hit the decode length cap; method "ranked":
    rank classification over the options.
    """
    rows = [list(_TABLE_COLUMNS)]
    for entry in sorted(entries, key=_sort_key):
        s = entry.summary
        cats = s.get("categories", {})
        n = str(s["num_examples"]) + ("" if entry.subsample is None else f"/{entry.subsample}")
        cap = (entry.metadata.get("decode_cap") or {}).get("hit")
        rows.append(
            [
                entry.checkpoint,
                entry.suite,
                entry.split or "-",
                entry.mode,
                str(entry.shots),
                effective_shots_text(entry),
                method_label(entry.method),
                n,
                _pct(s["macro_avg"]),
                _interval_text(entry, "macro"),
                _pct(s["micro_avg"]),
                _pct(s.get("macro_avg_tasks")),
                *(_pct(cats.get(c, {}).get("macro_avg")) for c in MMLU_CATEGORY_NAMES),
                str(s["num_no_answer"]),
                "-" if cap is None else str(cap),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(_TABLE_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

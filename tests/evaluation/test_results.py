"""Results schema, the paper's averages on hand-made results, results.json files."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from flan_moe.evaluation import results
from flan_moe.evaluation.results import EntryKey, PredictionRecord, SubtaskResult
from tests.evaluation.examples import example

R = SubtaskResult


def test_mmlu_category_table_has_the_57_subjects_in_4_groups():
    table = results.MMLU_CATEGORIES
    assert len(table) == 57
    sizes = {c: sum(v == c for v in table.values()) for c in results.MMLU_CATEGORY_NAMES}
    assert sizes == {"STEM": 18, "humanities": 13, "social sciences": 12, "other": 14}
    assert table["abstract_algebra"] == "STEM"
    assert table["professional_law"] == "humanities"
    assert table["human_sexuality"] == "social sciences"
    assert table["professional_accounting"] == "other"


def test_mmlu_subjects_are_exactly_the_val_files(data_root):
    names = {p.name.removesuffix("_val.csv") for p in (data_root / "mmlu" / "val").glob("*.csv")}
    assert len(names) == 57
    assert names == set(results.MMLU_CATEGORIES)


def test_bbh_27_files_collapse_to_23_tasks():
    assert len(results.BBH_FILES) == len(set(results.BBH_FILES)) == 27
    assert len(results.BBH_TASKS) == 23
    collapsed = {
        f: results.bbh_task_of(f) for f in results.BBH_FILES if results.bbh_task_of(f) != f
    }
    assert collapsed == {
        "logical_deduction_three_objects": "logical_deduction",
        "logical_deduction_five_objects": "logical_deduction",
        "logical_deduction_seven_objects": "logical_deduction",
        "tracking_shuffled_objects_three_objects": "tracking_shuffled_objects",
        "tracking_shuffled_objects_five_objects": "tracking_shuffled_objects",
        "tracking_shuffled_objects_seven_objects": "tracking_shuffled_objects",
    }
    with pytest.raises(ValueError, match="27 BBH files"):
        results.bbh_task_of("logical_deduction")


def test_bbh_files_are_exactly_the_data_files(data_root):
    stems = {p.stem for p in (data_root / "bbh" / "bbh").glob("*.json")}
    assert stems == set(results.BBH_FILES)


def test_suite_family():
    assert results.suite_family("mmlu") == "mmlu"
    assert results.suite_family("mmlu_test") == "mmlu"
    assert results.suite_family("bbh:cot") == "bbh"
    assert results.suite_family("gsm8k") == "gsm8k"
    assert results.suite_family("mmlux") == "mmlux"


def test_mmlu_averages_on_hand_made_results():
    subtasks = {
        "abstract_algebra": R(3, 4),  # STEM 0.75
        "astronomy": R(1, 1),  # STEM 1.0
        "philosophy": R(1, 2, no_answer=1),  # humanities 0.5
        "sociology": R(0, 1),  # social sciences 0.0
        "anatomy": R(2, 3),  # other 2/3
        "virology": R(0, 0),  # no examples: missing, not 0
    }
    s = results.summarize("mmlu", subtasks)
    assert s["num_subtasks"] == 5
    assert s["num_examples"] == 11
    assert s["num_correct"] == 7
    assert s["num_no_answer"] == 1
    assert s["macro_avg"] == pytest.approx((0.75 + 1.0 + 0.5 + 0.0 + 2 / 3) / 5, abs=1e-12)
    assert s["micro_avg"] == pytest.approx(7 / 11, abs=1e-12)
    cats = s["categories"]
    assert cats["STEM"]["macro_avg"] == pytest.approx(0.875, abs=1e-12)
    assert cats["STEM"]["micro_avg"] == pytest.approx(0.8, abs=1e-12)
    assert cats["STEM"]["num_subtasks"] == 2
    assert cats["humanities"]["macro_avg"] == pytest.approx(0.5, abs=1e-12)
    assert cats["social sciences"]["macro_avg"] == 0.0
    assert cats["other"]["macro_avg"] == pytest.approx(2 / 3, abs=1e-12)
    assert cats["other"]["num_subtasks"] == 1  # virology (0 examples) does not count
    assert len(s["missing_subtasks"]) == 57 - 5
    assert "virology" in s["missing_subtasks"]


def test_mmlu_category_with_nothing_is_missing_not_zero():
    s = results.summarize("mmlu", {"anatomy": R(1, 2)})
    assert s["categories"]["STEM"]["macro_avg"] is None
    assert s["categories"]["STEM"]["micro_avg"] is None
    assert results.summarize("mmlu", {})["macro_avg"] is None


def test_bbh_averages_on_hand_made_results():
    subtasks = {
        "logical_deduction_three_objects": R(2, 4),  # 0.5
        "logical_deduction_five_objects": R(1, 4),  # 0.25
        "logical_deduction_seven_objects": R(0, 2),  # 0.0 -> task mean 0.25
        "boolean_expressions": R(3, 4),  # 0.75
        "word_sorting": R(0, 0),  # missing
    }
    s = results.summarize("bbh", subtasks)
    assert s["macro_avg_files"] == s["macro_avg"] == pytest.approx(1.5 / 4, abs=1e-12)
    assert s["macro_avg_tasks"] == pytest.approx((0.25 + 0.75) / 2, abs=1e-12)
    assert s["micro_avg"] == pytest.approx(6 / 14, abs=1e-12)
    assert s["tasks"] == pytest.approx({"logical_deduction": 0.25, "boolean_expressions": 0.75})
    assert "word_sorting" in s["missing_subtasks"]
    assert len(s["missing_subtasks"]) == 27 - 4


def test_unknown_or_prefixed_subtask_names():
    with pytest.raises(ValueError, match="not a known mmlu subtask"):
        results.summarize("mmlu", {"astrology": R(1, 1)})
    entry = _entry(subtasks={"mmlu_anatomy": R(1, 2)})
    assert set(entry.subtasks) == {"anatomy"}


def test_subtask_counts_are_checked():
    with pytest.raises(ValueError, match="inconsistent"):
        R(3, 2)


def _entry(**overrides):
    kwargs = dict(
        checkpoint="checkpoint_100",
        suite="mmlu",
        mode="direct",
        shots=5,
        method="generation",
        subtasks={"anatomy": R(2, 3), "astronomy": R(0, 0)},
    )
    kwargs.update(overrides)
    return results.make_entry(**kwargs)


def test_results_file_round_trip_and_missing_values(tmp_path):
    path = tmp_path / "ckpt" / "results.json"
    entry = _entry(predictions_file="predictions/x.jsonl", metadata={"seed": 3})
    results.write_results(path, [entry])
    data = json.loads(path.read_text())
    assert data["schema_version"] == results.SCHEMA_VERSION
    stored = data["entries"][0]
    assert stored["subtasks"]["astronomy"] == {
        "correct": 0,
        "total": 0,
        "no_answer": 0,
        "accuracy": None,
    }
    assert stored["summary"]["categories"]["humanities"]["macro_avg"] is None
    assert stored["summary"]["macro_avg"] == pytest.approx(2 / 3)
    (back,) = results.read_results(path)
    assert back == entry
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temp files left


def test_merge_has_entry_and_skip(tmp_path):
    path = tmp_path / "results.json"
    assert results.read_results(path) == []
    assert not results.has_entry(path, _entry().key)
    first = _entry(subtasks={"anatomy": R(1, 3)})
    other = _entry(suite="bbh", subtasks={"navigate": R(1, 2)}, shots=3)
    results.update_results(path, [first, other])
    newer = _entry(subtasks={"anatomy": R(3, 3)})
    sub = _entry(subsample=2, subtasks={"anatomy": R(0, 2)})
    merged = results.update_results(path, [newer, sub])
    assert len(merged) == 3
    on_disk = results.read_results(path)
    assert results.find_entry(on_disk, first.key).subtasks["anatomy"] == R(3, 3)  # new wins
    assert results.has_entry(path, other.key)
    assert results.has_entry(
        str(path), EntryKey("checkpoint_100", "mmlu", "direct", 5, "generation", 2, "val")
    )
    assert not results.has_entry(path, EntryKey("checkpoint_100", "mmlu", "cot", 5, "generation"))
    assert not results.has_entry(
        path, EntryKey("checkpoint_200", "mmlu", "direct", 5, "generation")
    )
    with pytest.raises(ValueError, match="duplicate"):
        results.write_results(path, [first, newer])


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    results.write_results(path, [_entry()])
    before = path.read_text()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        results.write_results(path, [_entry(subtasks={"anatomy": R(0, 1)})])
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_corrupt_results_file_names_the_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read results file .*results.json"):
        results.read_results(path)
    path.write_text(json.dumps({"schema_version": 99, "entries": []}))
    with pytest.raises(ValueError, match="schema_version 99"):
        results.read_results(path)


def test_predictions_jsonl_round_trip(tmp_path):
    records = [
        PredictionRecord("mmlu/val/anatomy/0", "anatomy", "B", "B", "B", True),
        PredictionRecord("mmlu/val/anatomy/1", "anatomy", "zzz", None, "C", False, {"ll": [-1.5]}),
    ]
    path = tmp_path / "preds" / "mmlu.jsonl"
    assert results.write_predictions_jsonl(path, records) == 2
    assert len(path.read_text().splitlines()) == 2
    back = results.read_predictions_jsonl(path)
    assert [dataclasses.asdict(r) for r in back] == [dataclasses.asdict(r) for r in records]
    assert results.tally(back) == {"anatomy": R(1, 2, no_answer=1)}


def test_grade_examples_by_suite():
    examples = [
        example("mmlu", "anatomy", "B", "m0", ("A", "B", "C", "D"), ("w", "x", "y", "z")),
        example("mmlu", "anatomy", "C", "m1", ("A", "B", "C", "D"), ("w", "x", "y", "z")),
        example("bbh", "navigate", "Yes", "b0"),
        example("gsm8k", "gsm8k", "1,000", "g0"),
    ]
    outputs = ["x", "D", "yes.", "It is 1000 dollars"]
    records = results.grade_examples(examples, outputs, cot=False)
    assert [r.correct for r in records] == [True, False, True, True]
    assert [r.extracted for r in records] == ["B", "D", "yes", "1000"]
    assert results.tally(records) == {"anatomy": R(1, 2), "navigate": R(1, 1), "gsm8k": R(1, 1)}
    with pytest.raises(ValueError, match="2 examples but 1 outputs"):
        results.grade_examples(examples[:2], ["A"], cot=False)
    with pytest.raises(ValueError, match="no answer format"):
        results.grade_examples([example("squad", "squad", "x", "s0")], ["x"], cot=False)


def test_format_table_shows_missing_as_dash():
    mmlu = _entry(subtasks={"anatomy": R(2, 3), "abstract_algebra": R(1, 4)})
    bbh = _entry(suite="bbh", shots=3, subtasks={"navigate": R(1, 2)}, subsample=2)
    table = results.format_table([mmlu, bbh])
    lines = table.splitlines()
    assert lines[0].split() == list(results._TABLE_COLUMNS)
    mmlu_row = next(line for line in lines if " mmlu " in line).split()
    # macro (66.7 + 25) / 2 = 45.8; micro 3 / 7 = 42.9; bbh23 missing; STEM 25.0; hum/soc -.
    assert mmlu_row[2] == "val"
    assert mmlu_row[7:] == ["7", "45.8", "-", "42.9", "-", "25.0", "-", "-", "66.7", "0", "-"]
    bbh_row = next(line for line in lines if " bbh " in line).split()
    assert bbh_row[7:] == ["2/2", "50.0", "-", "50.0", "50.0", "-", "-", "-", "-", "0", "-"]

"""The tiny setting-2 pipeline, 2 training steps per stage, end to end (in process):
pre-train (span corruption on the local training text) -> instruction-tune -> evaluate,
and the pre-trained models evaluated as the "before IT" rows."""

import dataclasses
import io
import json
import re

import pytest

from flan_moe.evaluation import results as R
from flan_moe.experiments import report, runner, settings

pytestmark = pytest.mark.usefixtures("data_dir")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    scale = dataclasses.replace(
        settings.get_scale("tiny"),
        name="test",
        instruction_tune_steps=2,
        pretrain_steps=2,
        feature_lengths={"inputs": 64, "targets": 16},
        eval_subsample=1,
        eval_max_input_length=128,
        max_decode_length=6,
    )
    experiment = settings.get_experiment("setting2")
    base = tmp_path_factory.mktemp("experiments")
    out = io.StringIO()
    outcomes, paths = runner.run_experiment(
        experiment, scale, base, in_process=True, verbose=False, out=out
    )
    return experiment, scale, base, outcomes, paths, out.getvalue()


def test_every_stage_finishes_and_writes_results(finished):
    experiment, scale, base, outcomes, paths, log = finished
    assert [o.status for o in outcomes] == ["done"] * len(outcomes), log
    root = runner.experiment_root(base, experiment, scale)
    plans = runner.plan_experiment(experiment, scale, root)
    assert len(plans) == 4  # two models, and each before instruction tuning
    for plan in plans:
        files = runner.results_files(plan.final_model_dir)
        assert len(files) == 1
        entries = R.read_results(files[0])
        keys = {(e.suite, e.mode, e.shots) for e in entries}
        # BBH's few-shot entry records the shots used: min(k, 3).
        assert keys == {
            (suite, mode, shots if suite == "mmlu" else min(shots, 3))
            for suite in ("mmlu", "bbh")
            for mode in ("direct", "cot")
            for shots in (0, scale.few_shot)
        }


def test_table_values_equal_results_json(finished):
    experiment, scale, base, outcomes, paths, log = finished
    tables = json.loads((paths["report.md"].parent / "tables.json").read_text())
    root = runner.experiment_root(base, experiment, scale)
    checked = 0
    for plan in runner.plan_experiment(experiment, scale, root):
        entries = R.read_results(runner.results_files(plan.final_model_dir)[0])
        for title, table in tables.items():
            if title.startswith("Differences"):
                continue
            shots = 0 if "zero-shot" in title else scale.few_shot
            row = table[plan.run.label]
            for (family, mode), column in report.HELDOUT_COLUMNS:
                want = min(shots, report.MAX_SHOTS.get(family, shots))
                (entry,) = [
                    e for e in entries if (e.suite, e.mode, e.shots) == (family, mode, want)
                ]
                summary = entry.summary
                value = summary["macro_avg_tasks"] if family == "bbh" else summary["macro_avg"]
                assert row[column] == pytest.approx(100 * value)
                checked += 1
    assert checked == 4 * 2 * 4
    assert all("[MMLU val split; first 1 per subtask]" in title for title in tables)
    html = paths["report.html"].read_text()
    assert "<table>" in html and "instruction_tuning_gain.png" in html
    png = paths["report.html"].parent / "instruction_tuning_gain.png"
    assert png.stat().st_size > 1000


def test_rerun_skips_finished_stages(finished):
    experiment, scale, base, outcomes, paths, log = finished
    again, _ = runner.run_experiment(
        experiment, scale, base, in_process=True, verbose=False, out=io.StringIO()
    )
    assert [o.status for o in again] == ["skipped"] * len(outcomes)


def test_pretrained_models_start_instruction_tuning_and_are_the_before_rows(finished):
    experiment, scale, base, outcomes, paths, log = finished
    root = runner.experiment_root(base, experiment, scale)
    names = [o.name for o in outcomes]
    assert names[0] == "pretrain/dense" and "pretrain/switch" in names
    plans = runner.plan_experiment(experiment, scale, root)
    pretrained = {role: root / "pretrain" / role / "model" for role in ("dense", "switch")}
    for plan in plans[:2]:  # instruction-tuned runs start from their role's pre-trained model
        (tune,) = [s for s in plan.stages if s.name.endswith("/instruction_tune")]
        config = (root / tune.name / "model" / "config.gin").read_text()
        flat = " ".join(config.replace("\\\n", " ").split())  # gin may wrap long values
        path = re.escape(str(pretrained[plan.run.role]))
        assert re.search(rf"INITIAL_CHECKPOINT_PATH = ['\"]{path}['\"]", flat), config
        assert "pretrain" in tune.depends_on[0]
    for plan in plans[2:]:  # "before IT" = the pre-trained model itself
        assert plan.run.label.endswith("(before IT)")
        assert plan.final_model_dir == pretrained[plan.run.role]
    pretrain_config = (pretrained["switch"] / "config.gin").read_text()
    assert "local_corpus_span_corruption" in pretrain_config
    # equal pre-training tokens: same steps, batch and lengths for both roles
    dense_config = (pretrained["dense"] / "config.gin").read_text()
    for line in pretrain_config.splitlines():
        if line.startswith(("BATCH_SIZE", "TRAIN_STEPS", "TASK_FEATURE_LENGTHS")):
            assert line in dense_config


def test_report_shows_uncertainty_references_and_effective_shots(finished):
    experiment, scale, base, outcomes, paths, log = finished
    md = paths["report.md"].read_text()
    tables = json.loads((paths["report.md"].parent / "tables.json").read_text())
    intervals = json.loads((paths["report.md"].parent / "intervals.json").read_text())
    results_titles = [t for t in tables if not t.startswith("Differences")]
    for title in results_titles:
        # chance and constant-answer rows in every table; MMLU chance is 1/4
        assert tables[title]["chance"]["MMLU-Direct"] == pytest.approx(25.0)
        assert tables[title]["constant answer"]["MMLU-Direct"] is not None
        # every model cell has an interval around its value
        for label, row in tables[title].items():
            if label == "chance" or "(paper, at paper scale" in label:  # no intervals: not ours
                continue
            for column, value in row.items():
                low, high = intervals[title][label][column]
                assert low - 1e-9 <= value <= high + 1e-9
    # the few-shot table shows effective shots next to the requested k
    assert f"/{scale.few_shot} shots" in md
    # each stated difference has a paired interval; those containing 0 are "not significant"
    differences = [t for t in tables if t.startswith("Differences")]
    assert differences
    for title in differences:
        section = md.split(f"**{title}**", 1)[1].split("\n**", 1)[0]
        for label, row in tables[title].items():
            line = next(x for x in section.splitlines() if x.startswith(f"| {label} |"))
            cells = line.strip("| ").split(" | ")[1:]
            for column, cell in zip(row, cells):
                low, high = intervals[title][label][column]
                assert ("not significant" in cell) is (low <= 0 <= high), (column, cell)
    assert "not significant" in md
    assert "ranked" in md  # MMLU direct is rank classification, labelled as such


def test_sparse_runs_get_a_routing_analysis_in_the_report(finished):
    experiment, scale, base, outcomes, paths, log = finished
    root = runner.experiment_root(base, experiment, scale)
    analysed = [
        p for p in runner.plan_experiment(experiment, scale, root)
        if (p.final_model_dir / "routing_analysis.json").is_file()
    ]  # fmt: skip
    assert [p.run.label for p in analysed] == ["Flan-Switch"]
    analysis = json.loads((analysed[0].final_model_dir / "routing_analysis.json").read_text())
    assert set(analysis["layers"]) >= {"encoder/layers_1", "decoder/layers_1"}
    page = paths["report.html"].read_text()
    assert "<h2>Routing analysis</h2>" in page and "<h3>Flan-Switch</h3>" in page

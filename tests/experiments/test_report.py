"""Tables hold exactly the results.json values; missing stays missing; the report renders."""

import csv
import html.parser
import json

import pytest

from flan_moe.evaluation import results as R
from flan_moe.experiments import figures, report
from flan_moe.experiments.settings import get_experiment


def _write(path, entries):
    R.write_results(path, entries)
    return str(path)


def _mmlu_entry(shots, mode, correct_per_subject):
    subtasks = {s: R.SubtaskResult(correct=c, total=4) for s, c in correct_per_subject.items()}
    return R.make_entry(checkpoint="ckpt_10", suite="mmlu", mode=mode, shots=shots,
                        method="generation", subtasks=subtasks)  # fmt: skip


def _bbh_entry(shots, mode, correct):
    subtasks = {f: R.SubtaskResult(correct=correct, total=3) for f in R.BBH_FILES}
    return R.make_entry(checkpoint="ckpt_10", suite="bbh", mode=mode, shots=shots,
                        method="generation", subtasks=subtasks)  # fmt: skip


@pytest.fixture()
def runs(tmp_path):
    subjects = sorted(R.MMLU_CATEGORIES)
    # Run A: everything present. MMLU direct: 1 of 4 right in every subject -> 25.0;
    # MMLU cot: 2/4 -> 50.0; BBH direct 1/3 -> 33.33; BBH cot 2/3 -> 66.67.
    a = _write(tmp_path / "a.json", [
        _mmlu_entry(0, "direct", {s: 1 for s in subjects}),
        _mmlu_entry(0, "cot", {s: 2 for s in subjects}),
        _bbh_entry(0, "direct", 1),
        _bbh_entry(0, "cot", 2),
    ])  # fmt: skip
    # Run B: only MMLU direct (3/4 in half the subjects, 1/4 in the rest).
    b = _write(tmp_path / "b.json", [
        _mmlu_entry(0, "direct", {s: 3 if i % 2 == 0 else 1 for i, s in enumerate(subjects)})
    ])  # fmt: skip
    return [
        report.Run("A", (a,), {"family": "moe", "num_experts": 8, "data_fraction": 1.0}),
        report.Run("B", (b,), {"family": "dense", "num_experts": 1, "data_fraction": 0.5}),
    ]


def test_table_values_equal_results_json(runs):
    table = report.results_table(runs, shots=0, title="t")
    values = table.values()
    assert values["A"]["MMLU-Direct"] == pytest.approx(25.0)
    assert values["A"]["MMLU-CoT"] == pytest.approx(50.0)
    assert values["A"]["BBH-Direct"] == pytest.approx(100 / 3)
    assert values["A"]["BBH-CoT"] == pytest.approx(200 / 3)
    assert values["A"]["Average"] == pytest.approx((25 + 50 + 100 / 3 + 200 / 3) / 4)
    # B: 29 subjects at 75% and 28 at 25% -> macro average over 57 subjects.
    assert values["B"]["MMLU-Direct"] == pytest.approx((29 * 75 + 28 * 25) / 57)
    assert values["B"]["MMLU-CoT"] is None and values["B"]["Average"] is None
    # The same numbers straight from the file:
    entry = R.read_results(runs[1].results_files[0])[0]
    assert values["B"]["MMLU-Direct"] == pytest.approx(100 * entry.summary["macro_avg"])
    # Few-shot entries do not exist: all missing, never zero.
    assert all(
        v is None for v in report.results_table(runs, shots=5, title="t").values()["A"].values()
    )


def test_missing_is_shown_as_missing(runs):
    table = report.results_table(runs, shots=0, title="t")
    md = table.markdown()
    row_b = next(line for line in md.splitlines() if line.startswith("| B |"))
    assert row_b.count(report.MISSING) == 4  # MMLU-CoT, BBH x2, Average
    rows = list(csv.reader(table.csv().splitlines()))
    assert rows[2][0] == "B" and rows[2][2] == "" and rows[2][5] == ""
    assert "0.0" not in row_b


def test_ablation_deltas(runs):
    table = report.ablation_table(runs, baseline="A", shots=0, title="t")
    values = table.values()
    assert values["A"][table.header[-1]] == pytest.approx(0.0)
    assert values["B"][table.header[-1]] is None  # B's average is missing
    with pytest.raises(ValueError, match="baseline"):
        report.ablation_table(runs, baseline="nope", shots=0, title="t")


class _Parser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.images = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])


@pytest.mark.parametrize("name", ["setting2", "ablation_num_experts", "ablation_data_efficiency"])
def test_report_renders_with_figures(tmp_path, runs, name):
    experiment = get_experiment(name)
    out = tmp_path / "report"
    out.mkdir()
    figs = figures.draw(experiment, runs, out, few_shot=0)
    assert figs, "every one of these experiments draws a figure"
    tables = (report.results_table(runs, shots=0, title="held-out"),)
    paths = report.write_report(report.Report("T", tables, tuple(figs), tuple(runs)), out)
    parser = _Parser()
    parser.feed(paths["report.html"].read_text())
    assert parser.tags.count("table") == 1 and "figure" in parser.tags
    for src in parser.images:
        png = out / src
        assert png.exists() and png.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "tables.json").read_text())
    assert saved["held-out [MMLU val split; all examples]"]["A"]["MMLU-Direct"] == pytest.approx(
        25.0
    )


def _entry_with_outcomes(suite, mode, bits_by_subtask, subsample=4):
    subtasks = {s: R.SubtaskResult(b.count("1"), len(b)) for s, b in bits_by_subtask.items()}
    return R.make_entry(
        checkpoint="c", suite=suite, mode=mode, shots=0, method="generation",
        subtasks=subtasks, subsample=subsample, outcomes=bits_by_subtask,
    )  # fmt: skip


def test_intervals_references_and_significance(tmp_path, data_dir):
    subjects = sorted(R.MMLU_CATEGORIES)
    strong = {s: "1110" for s in subjects}  # 75% everywhere
    weak = {s: "1000" for s in subjects}  # 25% everywhere
    files = {}
    for name, bits in (("strong", strong), ("weak", weak), ("weak2", weak)):
        files[name] = _write(tmp_path / f"{name}.json",
                             [_entry_with_outcomes("mmlu", "direct", bits)])  # fmt: skip
    # A val entry with every example must not stand in for the subsampled selection:
    stray = _entry_with_outcomes("mmlu", "direct", strong, subsample=None)
    _write(tmp_path / "stray.json", [stray])
    runs = [report.Run(n, (files[n],)) for n in ("strong", "weak", "weak2")]
    runs.append(report.Run("stray", (str(tmp_path / "stray.json"),)))
    columns = ((("mmlu", "direct"), "MMLU-Direct"),)
    selection = report.Selection(split="val", subsample=4)
    table = report.results_table(runs, shots=0, title="t", columns=columns, selection=selection)
    values, intervals = table.values(), table.intervals()
    assert values["strong"]["MMLU-Direct"] == pytest.approx(75.0)
    low, high = intervals["strong"]["MMLU-Direct"]
    assert low < 75.0 < high
    assert values["stray"]["MMLU-Direct"] is None  # other subsample: not selected
    assert values["chance"]["MMLU-Direct"] == pytest.approx(25.0)
    assert values["constant answer"]["MMLU-Direct"] is not None
    assert "first 4 per subtask" in table.title and "MMLU val split" in table.title
    diffs = report.differences_table(
        [(runs[0], runs[1]), (runs[1], runs[2])], shots=0, title="d", columns=columns,
        selection=selection,
    )  # fmt: skip
    lines = diffs.markdown().splitlines()
    significant = next(x for x in lines if x.startswith("| strong − weak |"))
    same = next(x for x in lines if x.startswith("| weak − weak2 |"))
    assert "+50.0 [" in significant and report.NOT_SIGNIFICANT not in significant
    assert "+0.0 [+0.0, +0.0] (not significant)" in same


def test_chance_uses_each_subtasks_whole_answer_set(data_dir):
    # boolean_expressions: True/False -> 1/2 even when one example is selected; dyck_languages
    # is free-form -> 0; date_understanding lists its options -> 1/#options.
    from flan_moe.experiments import scores

    cell = scores.chance_cell("bbh", "direct", report.Selection(subsample=1))
    examples = scores._examples("bbh", "direct", "val", 1)
    per_task = {}
    for name, (ex,) in examples.items():
        if ex.option_texts:
            value = 1 / len(ex.option_texts)
        elif name in ("boolean_expressions", "causal_judgement", "formal_fallacies",
                      "navigate", "sports_understanding", "web_of_lies"):  # fmt: skip
            value = 1 / 2  # two answers in the whole file (True/False, Yes/No, valid/invalid)
        else:
            value = 0.0  # free-form: dyck, word_sorting, arithmetic, counting
        per_task.setdefault(R.bbh_task_of(name), []).append(value)
    expected = 100 * sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)
    assert cell.value == pytest.approx(expected)


def _routing_analysis(path):
    """A small routing_analysis.json built by the collector from synthetic routing."""
    import numpy as np

    from flan_moe.analysis.collector import RoutingCollector

    rng = np.random.default_rng(0)
    collector = RoutingCollector(vocab_size=16)
    for layer in ("encoder/layers_1", "decoder/layers_1"):
        probs = rng.random((4, 6, 8))
        collector.add(layer, probs=probs, kept=probs > 0.5, valid=np.ones((4, 6), bool),
                      tokens=rng.integers(2, 16, (4, 6)), row_tasks=["mmlu/STEM", "bbh/x"] * 2,
                      k=2)  # fmt: skip
    analysis = {"model": "tiny", "examples": {"mmlu/STEM": 2, "bbh/x": 2}, "layers":
                collector.summary(lambda t: f"tok{t}", min_count=1)}  # fmt: skip
    path.write_text(json.dumps(analysis))


@pytest.mark.parametrize("name", ["setting2", "ablation_num_experts", "ablation_data_efficiency"])
def test_figures_have_no_clipped_titles_or_legends_over_data(tmp_path, runs, name, monkeypatch):
    from flan_moe.analysis import figures as analysis_figures

    problems, save = {}, analysis_figures.save_figure

    def checked_save(fig, path):
        problems[path.name] = analysis_figures.layout_problems(fig)
        return save(fig, path)

    monkeypatch.setattr(analysis_figures, "save_figure", checked_save)
    figures.draw(get_experiment(name), runs, tmp_path, few_shot=0)
    assert problems and all(p == [] for p in problems.values()), problems


def test_routing_section_figures_exist_and_every_figure_is_referenced(tmp_path, runs):
    import dataclasses
    from pathlib import Path

    # Run A's results.json in its own MODEL_DIR, with the analysis beside it; B has none.
    model_dir = tmp_path / "a_model"
    model_dir.mkdir()
    (model_dir / "results.json").write_text(Path(runs[0].results_files[0]).read_text())
    runs = [dataclasses.replace(runs[0], results_files=(str(model_dir / "results.json"),)), runs[1]]
    _routing_analysis(model_dir / "routing_analysis.json")
    (model_dir / "train").mkdir()
    (model_dir / "train" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 3.0 / s, "moe/fraction_dropped": 0.1}) + "\n"
                for s in (1, 2, 3))
    )  # fmt: skip
    out = tmp_path / "report"
    out.mkdir()
    figs = figures.draw(get_experiment("setting2"), runs, out, few_shot=0)
    tables = (report.results_table(runs, shots=0, title="held-out"),)
    paths = report.write_report(report.Report("T", tables, tuple(figs), tuple(runs)), out)
    page = paths["report.html"].read_text()
    parser = _Parser()
    parser.feed(page)
    assert "<h2>Routing analysis</h2>" in page and "<h3>A</h3>" in page and "<h3>B</h3>" not in page
    assert "Top tokens per expert: encoder/layers_1" in page
    assert parser.tags.count("details") >= 2 + len(runs)  # token tables + run configs
    for src in parser.images:
        png = out / src
        assert png.exists() and png.stat().st_size > 1000, src
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.glob("*.png")) == sorted(set(parser.images))
    assert {"routing_A_load.png", "routing_A_repeats.png", "routing_A_training.png"} <= set(
        parser.images
    )


def test_no_routing_section_without_an_analysis(tmp_path, runs):
    out = tmp_path / "report"
    paths = report.write_report(report.Report("T", (), (), tuple(runs)), out)
    page = paths["report.html"].read_text()
    assert "Routing analysis" not in page and "<h2>Figures</h2>" not in page

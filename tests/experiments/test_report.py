"""Tables hold exactly the results.json values; missing stays missing; the report renders."""

import csv
import dataclasses
import html.parser
import json
import math

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
    """Tags, image sources, and every table: its caption text, whether it sits behind a
    <details> click, its rows (cell texts) and the class of each row."""

    def __init__(self):
        super().__init__()
        self.tags, self.images, self.tables, self.sections = [], [], [], []
        self._details = 0
        self._table = self._row = self._text = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "details":
            self._details += 1
        elif tag == "table":
            self._table = {"caption": "", "folded": self._details > 0, "rows": []}
        elif tag == "tr" and self._table is not None:
            self._row = {"class": attrs.get("class", ""), "cells": []}
        elif tag in ("td", "th", "caption", "h2"):
            self._text = []
        if tag == "h2":
            self.sections.append({"title": None, "content": 0})
        elif self.sections and self.sections[-1]["title"] is not None:
            self.sections[-1]["content"] += 1

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        text = "".join(self._text or []).strip()
        if tag == "details":
            self._details -= 1
        elif tag == "table" and self._table is not None:
            self.tables.append(self._table)
            self._table = None
        elif tag == "caption" and self._table is not None:
            self._table["caption"] += text
        elif tag == "tr" and self._row is not None and self._table is not None:
            self._table["rows"].append(self._row)
            self._row = None
        elif tag in ("td", "th") and self._row is not None:
            self._row["cells"].append(text)
        elif tag == "h2":
            self.sections[-1]["title"] = text
        if tag in ("td", "th", "caption", "h2"):
            self._text = None


def _parse(path):
    parser = _Parser()
    parser.feed(path.read_text())
    return parser


@pytest.mark.parametrize("name", ["setting2", "ablation_num_experts", "ablation_data_efficiency"])
def test_report_renders_with_figures(tmp_path, runs, name):
    experiment = get_experiment(name)
    out = tmp_path / "report"
    out.mkdir()
    figs = figures.draw(experiment, runs, out, few_shot=0)
    assert figs, "every one of these experiments draws a figure"
    tables = (report.results_table(runs, shots=0, title="held-out"),)
    paths = report.write_report(report.Report("T", tables, tuple(figs), tuple(runs)), out)
    parser = _parse(paths["report.html"])
    assert len([t for t in parser.tables if not t["folded"]]) == 1 and "figure" in parser.tags
    assert all(t["caption"] for t in parser.tables)
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


# --------------------------------------------------- captions, paper rows, breakdowns, models


def test_every_table_caption_names_scale_split_protocol_and_shots(tmp_path, runs):
    tables = (
        report.results_table(runs, shots=0, title="zero", scale="tiny", references=False),
        report.differences_table([(runs[0], runs[1])], shots=0, title="diff", scale="tiny"),
    )
    out = tmp_path / "report"
    parser = _parse(report.write_report(report.Report("T", tables, (), tuple(runs)), out)[
        "report.html"])  # fmt: skip
    top = [t for t in parser.tables if not t["folded"]]
    assert len(top) == 2 and all(t["caption"] for t in parser.tables)
    for number, table in enumerate(top, start=1):
        caption = table["caption"]
        assert caption.startswith(f"Table {number}. ")
        assert "Scale: tiny." in caption and "MMLU val split; all examples" in caption
        # A's entries were written with method "generation"; the modes come from the columns.
        assert "MMLU-Direct: generation, direct answer" in caption
        assert "MMLU-CoT: generation, chain of thought" in caption
        assert "Shots: zero-shot (0 requested, 0 used)." in caption


def test_few_shot_caption_gives_requested_and_effective_shots(tmp_path):
    entries = []
    for family, subtask, kept in (("mmlu", "anatomy", 4.0), ("bbh", "navigate", 2.5)):
        entry = R.make_entry(checkpoint="c", suite=family, mode="direct", shots=min(5, 3 if
                             family == "bbh" else 5), method="ranked",
                             subtasks={subtask: R.SubtaskResult(1, 2)})  # fmt: skip
        entries.append(dataclasses.replace(entry, metadata={"effective_shots": {"mean": kept}}))
    path = _write(tmp_path / "r.json", entries)
    columns = (report.HELDOUT_COLUMNS[0], report.HELDOUT_COLUMNS[2])
    table = report.results_table([report.Run("A", (path,))], shots=5, title="five",
                                 columns=columns, references=False, scale="small")  # fmt: skip
    assert "Shots: 5 requested (used: MMLU 5, BBH 3)" in table.caption
    assert "effective (mean exemplars kept): MMLU-Direct 4.0, BBH-Direct 2.5" in table.caption
    assert "MMLU-Direct: ranked, direct answer" in table.caption


def test_paper_numbers_are_labelled_rows_outside_every_average(tmp_path, runs):
    from flan_moe.experiments import paper_numbers

    columns = tuple(c for _, c in report.HELDOUT_COLUMNS)
    assert paper_numbers.rows_for("setting2_instruction_tuning", shots=0, columns=columns) == {}
    paper = paper_numbers.rows_for("setting2_instruction_tuning", shots=5, columns=columns)
    assert paper, "setting 2 has sourced paper numbers"
    runs_5 = [report.Run(r.label, r.results_files) for r in runs]
    table = report.results_table(runs_5, shots=5, title="few", references=False, paper=paper)
    out = tmp_path / "report"
    parser = _parse(report.write_report(report.Report("T", (table,), (), tuple(runs_5)), out)[
        "report.html"])  # fmt: skip
    rows = {r["cells"][0]: r for t in parser.tables if not t["folded"] for r in t["rows"]}
    for label, cells in paper.items():
        assert "(paper, at paper scale; Table " in label  # labelled, with its table
        row = rows[label]
        assert row["class"] == "paper"
        header = table.header
        for column, number in cells.items():
            assert number.table.startswith("Table ") and number.read_in
            assert row["cells"][header.index(column)] == f"{number.value:.1f}"
        assert row["cells"][header.index("Average")] == report.MISSING  # never averaged
    # Ours stay ours: A and B have no 5-shot entries, so their cells (and averages) are missing.
    assert set(table.values()["A"].values()) == {None}
    assert "published numbers from Shen et al. 2023" in table.note and "Table 1" in table.note
    # A table the paper has no sourced cell for says so in one line, and has no paper row.
    ablation = report.ablation_table(runs, baseline="A", shots=0, title="t", paper={})
    assert paper_numbers.NONE_SOURCED in ablation.note and not ablation.paper_rows
    assert len(ablation.rows) == len(runs) + len(report.REFERENCE_ROWS)


def test_per_task_breakdown_is_behind_a_click_with_n_and_wilson_intervals(tmp_path, runs):
    from flan_moe.experiments import report_breakdown

    # Wilson score interval by hand: p = 1/4, n = 4, z = 1.959964.
    z, n, phat = 1.959964, 4, 0.25
    centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = report_breakdown.wilson_interval(1, 4)
    assert low == pytest.approx(100 * (centre - half), abs=1e-4)
    assert high == pytest.approx(100 * (centre + half), abs=1e-4)

    table = report.results_table(runs, shots=0, title="zero", references=False)
    out = tmp_path / "report"
    parser = _parse(report.write_report(report.Report("T", (table,), (), tuple(runs)), out)[
        "report.html"])  # fmt: skip
    folded = [t for t in parser.tables if t["folded"]]
    # A: 4 columns, B: only MMLU-Direct (its missing columns are named, not shown empty).
    assert len(folded) == 5 and all(t["caption"] for t in folded)
    a_mmlu = next(t for t in folded if t["caption"].startswith("A, MMLU-Direct"))
    subjects = {r["cells"][0]: r["cells"] for r in a_mmlu["rows"][1:]}
    assert len(subjects) == 57
    assert subjects["anatomy"][1:4] == ["4", "25.0", f"[{low:.1f}, {high:.1f}]"]
    a_bbh = next(t for t in folded if t["caption"].startswith("A, BBH-Direct"))
    assert len(a_bbh["rows"]) - 1 == len(R.BBH_FILES)
    assert (
        "No results.json entry for: MMLU-CoT, BBH-Direct, BBH-CoT."
        in (out / "report.html").read_text()
    )


def test_models_table_reads_each_checkpoints_config(tmp_path, runs):
    from flan_moe.experiments import report_models
    from flan_moe.model.config import SIZES
    from flan_moe.model.flops import model_cost

    config = SIZES["switch_tiny_8"]
    model_dir = tmp_path / "model"
    (model_dir / "checkpoint_7" / "metadata").mkdir(parents=True)
    (model_dir / "checkpoint_7" / "metadata" / "metadata").write_text(
        json.dumps({"model_config": config.to_dict(), "step": 7})
    )
    (model_dir / "results.json").write_text("[]")
    a = report.Run("A", (str(model_dir / "results.json"),))
    page = report_models.models_html([a, runs[1]])
    cost = model_cost(config, input_length=512, target_length=128)
    parser = _Parser()
    parser.feed(page)
    (table,) = parser.tables
    assert "Counting convention" in table["caption"] and "512 input / 128 target" in page
    assert table["rows"][1]["cells"] == [
        "A", "switch_tiny_8", "8", report_models.si(cost.total_params),
        report_models.si(cost.active_params), report_models.si(cost.encoder_flops_per_token),
        report_models.si(cost.decoder_flops_per_token),
    ]  # fmt: skip
    assert "No checkpoint config found for: B." in page
    assert report_models.si(61952) == "62K" and report_models.si(1.5e9) == "1.5G"


def test_no_section_is_empty(tmp_path, runs):
    """Every <h2> is followed by content; a section with no data says why in one line."""
    out = tmp_path / "report"
    parser = _parse(report.write_report(report.Report("T", (), (), tuple(runs)), out)[
        "report.html"])  # fmt: skip
    titles = [s["title"] for s in parser.sections]
    assert titles == ["Models", "Results", "Runs and their configs"]
    assert all(s["content"] > 0 for s in parser.sections)
    page = (out / "report.html").read_text()
    assert "No run has a checkpoint with its config." in page
    assert "No tables: no run has evaluation results." in page


def test_report_only_rebuilds_from_finished_stages_and_runs_nothing(tmp_path, capsys):
    from flan_moe.cli import experiment as experiment_cli

    code = experiment_cli.main(
        ["setting2", "--scale", "tiny", "--output_dir", str(tmp_path), "--report_only"]
    )
    printed = capsys.readouterr().out
    root = tmp_path / "setting2_instruction_tuning" / "tiny"
    assert code == 0 and (root / "report" / "report.html").is_file()
    # Nothing ran: no stage folder has a DONE marker, and every stage is named as unfinished.
    assert not list(root.glob("**/DONE.json"))
    assert "stage(s) not finished, their cells are missing: " in printed
    assert "flan_switch/instruction_tune" in printed

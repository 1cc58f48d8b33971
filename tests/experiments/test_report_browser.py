"""The report in a real headless browser (Debian's chromium through Playwright): a report the
pipeline writes has no clipped title or caption, nothing past the page edge, every image loaded
and every table captioned; and the check finds each of those faults on a page that has them.

Chromium comes from ``scripts/install_browser.sh``, which ``make test`` runs first, so a
missing browser fails here with the command to run rather than skipping silently.
"""

from pathlib import Path

import pytest

from flan_moe.evaluation import results as R
from flan_moe.experiments import paper_numbers, report, report_browser


@pytest.fixture(scope="module")
def browser_ready():
    if report_browser.browser_path() is None:
        pytest.fail(f"no chromium on PATH: {report_browser.INSTALL_HINT}")
    pytest.importorskip("playwright", reason="playwright is in requirements-dev.txt")


def _report(tmp_path: Path) -> Path:
    subjects = sorted(R.MMLU_CATEGORIES)
    entries = [
        R.make_entry(checkpoint="c", suite="mmlu", mode=mode, shots=5, method="ranked",
                     subtasks={s: R.SubtaskResult(i % 5, 4)
                               for i, s in enumerate(subjects)})
        for mode in ("direct", "cot")
    ] + [
        R.make_entry(checkpoint="c", suite="bbh", mode=mode, shots=3, method="generation",
                     subtasks={f: R.SubtaskResult(1, 3) for f in R.BBH_FILES})
        for mode in ("direct", "cot")
    ]  # fmt: skip
    R.write_results(tmp_path / "results.json", entries)
    runs = [report.Run(f"Flan-Switch ({k} experts, a long label to wrap)",
                       (str(tmp_path / "results.json"),)) for k in (8, 64)]  # fmt: skip
    columns = tuple(c for _, c in report.HELDOUT_COLUMNS)
    paper = paper_numbers.rows_for("setting2_instruction_tuning", shots=5, columns=columns)
    out = tmp_path / "report"
    out.mkdir()
    figure = report.bar_figure(
        out / "gain.png",
        {r.label: {"before instruction tuning": 20.0, "after": 30.0} for r in runs},
        title="A long figure title that has to wrap over two lines to fit the figure width",
        ylabel="accuracy (%)",
    )
    tables = (
        report.results_table(
            runs,
            shots=5,
            title="Few-shot held-out results (tiny scale)",
            scale="tiny",
            references=False,
            paper=paper,
        ),  # fmt: skip
        report.differences_table([(runs[0], runs[1])], shots=5, title="Differences", scale="tiny"),
    )
    notes = ("A note",)
    page = report.Report("Setting 2", tables, (("Gain", figure),), tuple(runs), notes)
    return report.write_report(page, out)["report.html"]


def test_report_layout_in_headless_chromium(tmp_path, browser_ready):
    page = _report(tmp_path)
    shot = tmp_path / "shot.png"
    assert report_browser.check_page(page, screenshot=shot, open_details=True) == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_the_check_finds_clipped_text_overflow_missing_images_and_captions(tmp_path, browser_ready):
    bad = tmp_path / "report.html"
    bad.write_text(
        "<!DOCTYPE html><html><body style='max-width:600px'>"
        "<h2 style='white-space:nowrap;overflow:hidden;width:120px'>A heading far too long "
        "for its box</h2>"
        "<table><caption>wide</caption><tr><td style='min-width:2000px'>x</td></tr></table>"
        "<table><tr><td>no caption here</td></tr></table>"
        "<figure><img src='missing.png'></figure></body></html>"
    )
    problems = "\n".join(report_browser.check_page(bad))
    assert 'h2 clipped: "A heading far too long' in problems
    assert "table runs past the page" in problems and "page scrolls sideways" in problems
    assert 'table without a caption: "no caption here"' in problems
    assert "image did not load: missing.png" in problems

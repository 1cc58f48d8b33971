"""Screenshot an experiment report with headless Chromium and check its layout.

    python scripts/screenshot_report.py experiments_out/setting2_instruction_tuning/tiny/report
    # -> <report>/report_screenshot.png (full page, 1100 px wide) and the layout problems found

Chromium is Debian's package (``bash scripts/install_browser.sh``), driven by Playwright
(``flan_moe.experiments.report_browser``): the page measures itself for clipped titles,
captions and cells, content past the page edge, images that did not load or overflow, and
tables without captions. Exit status 1 when it finds any. ``--open-details`` opens every
per-task breakdown first, so those tables are measured too. The figures' legends and titles
are checked when they are saved (``flan_moe.analysis.figures.layout_problems``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flan_moe.experiments import report_browser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("report_dir", help="folder holding report.html")
    parser.add_argument("--out", default="", help="PNG path (default: report_screenshot.png)")
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--open-details", action="store_true", help="measure folded tables too")
    args = parser.parse_args(argv)
    page = Path(args.report_dir) / "report.html"
    if not page.is_file():
        raise SystemExit(f"{page} does not exist: pass the report folder of an experiment")
    out = Path(args.out or Path(args.report_dir) / "report_screenshot.png").resolve()
    try:
        problems = report_browser.check_page(
            page, screenshot=out, width=args.width, open_details=args.open_details
        )
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from err
    print(f"screenshot -> {out}")
    for problem in problems:
        print(f"LAYOUT: {problem}")
    print(f"{len(problems)} layout problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

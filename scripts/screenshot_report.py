"""Screenshot an experiment report with headless Chromium (Debian package ``chromium``).

    python scripts/screenshot_report.py experiments_out/setting2_instruction_tuning/tiny/report
    # -> <report>/report_screenshot.png (full page, 1100 px wide)

Used to check the report by eye: titles not clipped, legends not over the data, tables and
figures in order. The figures themselves are checked in the tests
(``flan_moe.analysis.figures.layout_problems``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("report_dir", help="folder holding report.html")
    parser.add_argument("--out", default="", help="PNG path (default: report_screenshot.png)")
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=6000)
    args = parser.parse_args(argv)
    page = Path(args.report_dir) / "report.html"
    if not page.is_file():
        raise SystemExit(f"{page} does not exist: pass the report folder of an experiment")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("no chromium found: install it (Debian: apt-get install chromium)")
    out = Path(args.out or Path(args.report_dir) / "report_screenshot.png").resolve()
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--window-size={args.width},{args.height}", f"--screenshot={out}",
         page.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    print(f"screenshot -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Check a report page in a real headless browser: Debian's ``chromium`` driven by Playwright.

``check_page(report.html)`` loads the page at a fixed width, optionally takes a full-page
screenshot, and returns the layout problems the page itself measures (``LAYOUT_CHECK``):

* a title, caption, figure caption, summary or table cell whose content is wider or taller
  than its box (``scrollWidth > clientWidth``: text clipped or scrolling);
* a table, figure, image or paragraph whose right edge is past the page body's (the page
  would scroll sideways), and a page that scrolls sideways at all;
* an image that did not load (``naturalWidth == 0``), or one drawn wider than its container;
* a table without a ``<caption>``.

The figures' insides (legends over data, clipped titles) are checked when they are saved
(``flan_moe.analysis.figures.layout_problems``), where matplotlib's renderer knows the boxes.
The browser is ``/usr/bin/chromium`` (``scripts/install_browser.sh`` installs it); Playwright
is told its path, so it never downloads a browser of its own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

BROWSER_NAMES = ("chromium", "chromium-browser")
INSTALL_HINT = "run `bash scripts/install_browser.sh` (Debian package chromium)"

LAYOUT_CHECK = """() => {
  const problems = [];
  const text = (el) => el.textContent.trim().replace(/\\s+/g, " ").slice(0, 70);
  const visible = (el) => el.getClientRects().length > 0;
  for (const el of document.querySelectorAll("h1,h2,h3,caption,figcaption,summary,th,td")) {
    if (!visible(el)) continue;
    if (el.scrollWidth > el.clientWidth + 1 || el.scrollHeight > el.clientHeight + 1) {
      problems.push(`${el.tagName.toLowerCase()} clipped: "${text(el)}"`);
    }
  }
  const right = document.body.getBoundingClientRect().right;
  for (const el of document.querySelectorAll("table,figure,img,p,pre")) {
    if (visible(el) && el.getBoundingClientRect().right > right + 1) {
      problems.push(`${el.tagName.toLowerCase()} runs past the page: "${text(el) || el.src}"`);
    }
  }
  if (document.documentElement.scrollWidth > window.innerWidth) {
    problems.push(`page scrolls sideways (${document.documentElement.scrollWidth}px wide)`);
  }
  for (const img of document.images) {
    if (!img.complete || img.naturalWidth === 0) {
      problems.push(`image did not load: ${img.getAttribute("src")}`);
      continue;
    }
    const box = img.parentElement.getBoundingClientRect();
    if (img.getBoundingClientRect().width > box.width + 1) {
      problems.push(`image wider than its container: ${img.getAttribute("src")}`);
    }
  }
  for (const table of document.querySelectorAll("table")) {
    const caption = table.querySelector(":scope > caption");
    if (!caption || !caption.textContent.trim()) {
      problems.push(`table without a caption: "${text(table)}"`);
    }
  }
  return problems;
}"""


OPEN_DETAILS = "() => document.querySelectorAll('details').forEach(d => { d.open = true; })"


def browser_path() -> str | None:
    """Debian's chromium, if installed."""
    for name in BROWSER_NAMES:
        if found := shutil.which(name):
            return found
    return None


def check_page(
    page_path: str | Path,
    *,
    screenshot: str | Path | None = None,
    width: int = 1100,
    open_details: bool = False,
) -> list[str]:
    """Layout problems of ``page_path`` (empty when none), measured in headless Chromium;
    ``screenshot``: also save a full-page PNG there. ``open_details``: open every
    ``<details>`` first, so the per-task tables are measured too."""
    from playwright.sync_api import sync_playwright

    path = Path(page_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: pass an experiment's report.html")
    executable = browser_path()
    if executable is None:
        raise FileNotFoundError(f"no chromium found: {INSTALL_HINT}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(path.as_uri(), wait_until="load")
            if open_details:
                page.evaluate(OPEN_DETAILS)
            problems = list(page.evaluate(LAYOUT_CHECK))
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return problems

"""The dashboard in a real headless browser (Playwright + Debian's Chromium): submit a
small experiment from the page, watch a stage go from queued to done, open its report.

The server (uvicorn) and a worker run in threads of this process over the runner's plan
of a small setting-2 submission whose stages are quick Python functions
(``conftest.quick_planner``). ``scripts/install_browser.sh`` installs the browser."""

from __future__ import annotations

import io
import json
import shutil
import socket
import threading
import time

import pytest

from flan_moe.service import app as app_lib
from flan_moe.service import worker
from tests.service.conftest import SMALL, quick_planner

TOKEN = "browser-test-token"


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no Chromium: run scripts/install_browser.sh (Debian's chromium package)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server(registry, output_dir):
    import uvicorn

    app = app_lib.create_app(registry, output_dir, token=TOKEN, planner=quick_planner)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < end, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_submit_watch_and_open_the_report(live_server, registry, output_dir):
    playwright = pytest.importorskip("playwright.sync_api")
    executable = _chromium()
    stop = threading.Event()
    config = worker.WorkerConfig(output_dir, devices="cpu", poll_seconds=0.1)
    w = worker.Worker(registry, config, planner=quick_planner, out=io.StringIO())
    worker_thread = threading.Thread(target=w.run, kwargs={"stop": stop}, daemon=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(live_server + "/")
            page.fill("#token", TOKEN)
            page.dispatch_event("#token", "change")
            page.select_option("#name", "setting2")
            page.select_option("#scale", "tiny")
            page.fill("#overrides", json.dumps(SMALL))
            page.click("#submit-button")
            page.wait_for_url("**/experiments/1")
            state = page.locator('.node[data-name="flan_t5_dense/instruction_tune"] .state')
            playwright.expect(state).to_have_text("queued")
            worker_thread.start()  # only now: the page saw the stage queued
            playwright.expect(state).to_have_text("done", timeout=60_000)
            page.click('.node[data-name="flan_t5_dense/instruction_tune"]')
            playwright.expect(page.locator("#log")).to_contain_text(
                "running flan_t5_dense/instruction_tune"
            )
            playwright.expect(page.locator("#exp-status")).to_have_text("done", timeout=60_000)
            page.click("#open-report")
            page.wait_for_url("**/report/report.html")
            playwright.expect(page.locator("h1")).to_contain_text("Setting 2")
            page.goto(live_server + "/")
            playwright.expect(page.locator("#experiments")).to_contain_text("6/6")
        finally:
            browser.close()
            stop.set()
            if worker_thread.is_alive():
                worker_thread.join(timeout=30)

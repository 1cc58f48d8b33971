"""The dashboard and JSON API through FastAPI's TestClient (httpx)."""

from __future__ import annotations

import io
import json
import time

import pytest
from fastapi.testclient import TestClient

from flan_moe.service import app as app_lib
from flan_moe.service import curves, worker
from tests.service.conftest import SMALL, fail_marker, quick_planner

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(registry, output_dir):
    app = app_lib.create_app(registry, output_dir, token=TOKEN, planner=quick_planner)
    with TestClient(app) as c:
        yield c


def _run_worker(registry, output_dir):
    config = worker.WorkerConfig(output_dir, devices="cpu", poll_seconds=0.05)
    worker.Worker(registry, config, planner=quick_planner, out=io.StringIO()).run(
        exit_when_idle=True
    )


def _submit(client, **overrides):
    body = {"experiment": "setting2", "scale": "tiny", "overrides": {**SMALL, **overrides}}
    response = client.post("/api/experiments", json=body, headers=AUTH)
    assert response.status_code == 201, response.text
    return response.json()


def test_writes_need_the_token(client):
    body = {"experiment": "setting2", "scale": "tiny", "overrides": SMALL}
    assert client.get("/api/experiments").json() == []
    missing = client.post("/api/experiments", json=body)
    assert missing.status_code == 401 and "Bearer" in missing.json()["detail"]
    wrong = client.post("/api/experiments", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert client.post("/api/experiments/1/cancel").status_code == 401
    assert client.post("/api/stages/1/retry").status_code == 401
    assert client.get("/api/experiments").json() == []  # nothing was written


def test_read_only_server_refuses_every_write(registry, output_dir):
    app = app_lib.create_app(registry, output_dir, token=None, planner=quick_planner)
    with TestClient(app) as c:
        r = c.post("/api/experiments", json={"experiment": "setting2"}, headers=AUTH)
        assert r.status_code == 403 and "read-only" in r.json()["detail"]
        assert "Read-only dashboard" in c.get("/").text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"experiment": "setting9"}, "unknown experiment"),
        ({"experiment": "setting2", "scale": "huge"}, "unknown scale"),
        ({"experiment": "setting2", "overrides": {"stepz": 1}}, "unknown override"),
        ({"experiment": "setting2", "scale": "base"}, "PRETRAINED_DENSE"),
    ],
)
def test_bad_submissions_are_422_with_the_reason(client, body, message):
    r = client.post("/api/experiments", json=body, headers=AUTH)
    assert r.status_code == 422 and message in r.json()["detail"]


def test_submit_run_and_see_it_on_the_pages(client, registry, output_dir):
    exp = _submit(client)
    assert exp["status"] == "queued" and exp["total"] == 6 and exp["done"] == 0
    assert [s["status"] for s in exp["stages"]] == ["queued"] * 6
    page = client.get(f"/experiments/{exp['id']}").text
    assert "flan_t5_dense/instruction_tune" in page and "No report yet" in page
    _run_worker(registry, output_dir)
    listed = client.get("/api/experiments").json()
    assert [(e["id"], e["status"], e["done"]) for e in listed] == [(exp["id"], "done", 6)]
    detail = client.get(f"/api/experiments/{exp['id']}").json()
    it = next(s for s in detail["stages"] if s["name"] == "flan_t5_dense/instruction_tune")
    assert it["status"] == "done" and it["attempts"] == 1 and it["key"]
    log = client.get(f"/api/stages/{it['id']}/log?lines=5").json()
    assert "running flan_t5_dense/instruction_tune" in log["lines"]
    report = client.get(f"/experiments/{exp['id']}/report/report.html")
    assert report.status_code == 200 and "Setting 2" in report.text
    assert client.get(f"/experiments/{exp['id']}/report/../SERVICE.json").status_code == 404
    page = client.get(f"/experiments/{exp['id']}").text
    assert "Open the report" in page and "zero-shot" in page
    index = client.get("/").text
    assert f"/experiments/{exp['id']}/report/report.html" in index and "6/6" in index


def test_retry_and_cancel_through_the_api(client, registry, output_dir):
    exp = _submit(client)
    root = output_dir / "setting2_instruction_tuning" / exp["root"].rsplit("/", 1)[-1]
    fail_marker(root, "pretrain/dense").write_text("")
    _run_worker(registry, output_dir)
    stages = client.get(f"/api/experiments/{exp['id']}").json()["stages"]
    pretrain = stages[0]
    assert pretrain["status"] == "failed" and "told to fail" in pretrain["error"]
    assert client.get(f"/api/experiments/{exp['id']}").json()["status"] == "failed"
    conflict = client.post(f"/api/stages/{stages[1]['id']}/retry", headers=AUTH)
    assert conflict.status_code == 409 and "only a failed" in conflict.json()["detail"]
    fail_marker(root, "pretrain/dense").unlink()
    assert client.post(f"/api/stages/{pretrain['id']}/retry", headers=AUTH).json()["status"] == (
        "queued"
    )
    cancelled = client.post(f"/api/experiments/{exp['id']}/cancel", headers=AUTH).json()
    assert cancelled["status"] == "cancelled"
    assert {s["status"] for s in cancelled["stages"]} == {"cancelled"}
    assert client.post("/api/experiments/99/cancel", headers=AUTH).status_code == 404


def test_training_curves_from_event_files(client, registry, output_dir):
    from flan_moe.training.summaries import SummaryWriter

    exp = _submit(client)
    run = exp["runs"][0]
    model_dir = output_dir / "setting2_instruction_tuning" / exp["root"].rsplit("/", 1)[-1]
    model_dir = model_dir / "flan_t5_dense" / "instruction_tune" / "model"
    first = SummaryWriter(str(model_dir))
    for step in (1, 2, 3, 4):
        first.write(step, {"loss": 10.0 - step, "accuracy": 0.1 * step})
    first.close()
    time.sleep(1.1)  # event file names carry the second they were opened in
    resumed = SummaryWriter(str(model_dir), resume_step=2)  # steps 3, 4 are trained again
    for step in (3, 4):
        resumed.write(step, {"loss": 5.0 - step, "accuracy": 0.2 * step})
    resumed.close()
    scalars = client.get(f"/api/runs/{run['id']}/curves").json()["scalars"]
    # TensorBoard's purge (event_accumulator.EventAccumulator._Purge keeps step < the
    # SessionLog.START's step): the writer marks the restart at resume_step, so step 2 goes too.
    assert scalars["loss"] == [[1, 9.0], [3, 2.0], [4, 1.0]]
    assert curves.as_rows(curves.read_scalars(model_dir / "train"))[0] == pytest.approx(
        {"step": 1, "loss": 9.0, "accuracy": 0.1}
    )
    png = client.get(f"/runs/{run['id']}/curves.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    other = exp["runs"][1]["id"]  # the "before IT" run: no events
    assert client.get(f"/runs/{other}/curves.png").status_code == 404
    both = client.get(f"/compare/curves.png?run={run['id']}&run={other}")
    assert both.status_code == 200 and both.content[:4] == b"\x89PNG"
    page = client.get(f"/compare?run={run['id']}&run={other}").text
    assert "Flan-T5 (dense)" in page and "/compare/curves.png?run=" in page


def test_results_tables_show_intervals(client, output_dir):
    exp = _submit(client)
    report = output_dir / "setting2_instruction_tuning" / exp["root"].rsplit("/", 1)[-1] / "report"
    report.mkdir(parents=True)
    title = "Setting 2 — zero-shot (tiny scale)"
    (report / "tables.json").write_text(
        json.dumps({title: {"Flan-T5 (dense)": {"MMLU-Direct": 61.0, "BBH-Direct": None}}})
    )
    (report / "intervals.json").write_text(
        json.dumps({title: {"Flan-T5 (dense)": {"MMLU-Direct": [55.0, 67.0], "BBH-Direct": None}}})
    )
    page = client.get(f"/experiments/{exp['id']}").text
    assert title in page and "61.0 [55.0, 67.0]" in page and "—" in page
    compare = client.get(f"/compare?run={exp['runs'][0]['id']}").text
    assert "MMLU-Direct: 61.0 [55.0, 67.0]" in compare


def test_openapi_schema_lists_the_api(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/experiments", "/api/experiments/{experiment_id}/cancel",
            "/api/stages/{stage_id}/retry", "/api/stages/{stage_id}/log"} <= set(paths)  # fmt: skip

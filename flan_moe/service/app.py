"""The dashboard and JSON API (FastAPI; pages are Jinja2 templates in ``templates/``).

Pages: ``/`` (experiments: status, progress, ETA; a submit form), ``/experiments/{id}``
(stage graph with live states, a stage's log tail, training curves from the event files,
the report's tables with intervals and its figures), ``/compare?run=ID&run=ID`` (curves
and table rows of two or more runs side by side), ``/experiments/{id}/report/<file>``
(the report folder: report.html and its figures).

API: ``GET /api/experiments``, ``GET /api/experiments/{id}``, ``GET /api/stages/{id}/log``,
``GET /api/runs/{id}/curves``; writes (``Authorization: Bearer <token>``):
``POST /api/experiments`` (``{"experiment", "scale", "overrides"}``),
``POST /api/experiments/{id}/cancel``, ``POST /api/stages/{id}/retry``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from flan_moe.experiments import settings
from flan_moe.service import auth, curves, store
from flan_moe.service import submission as submission_lib
from flan_moe.service.models import Experiment, Run, Stage

TEMPLATES = Path(__file__).parent / "templates"


class SubmitRequest(BaseModel):
    experiment: str = Field(description="an experiment name or alias, e.g. setting2")
    scale: str = "tiny"
    overrides: dict[str, Any] = Field(default_factory=dict)


def stage_json(stage: Stage) -> dict[str, Any]:
    def when(value):
        return value.isoformat() + "Z" if value else None

    return {
        "id": stage.id, "name": stage.name, "status": stage.status, "run": stage.run.label
        if stage.run else None, "depends_on": stage.depends_on, "attempts": stage.attempts,
        "config_hash": stage.config_hash, "key": stage.key, "command": stage.command,
        "started_at": when(stage.started_at), "ended_at": when(stage.ended_at),
        "seconds": stage.seconds, "host": stage.host, "devices": stage.devices,
        "worker": stage.worker, "log_path": stage.log_path, "results_path": stage.results_path,
        "error": stage.error,
    }  # fmt: skip


def experiment_json(exp: Experiment, *, stages: bool = False) -> dict[str, Any]:
    p = store.progress(exp)
    out = {
        "id": exp.id, "name": exp.name, "scale": exp.scale, "overrides": exp.overrides,
        "title": exp.title, "root": exp.root, "status": p.status, "done": p.done,
        "total": p.total, "eta_seconds": p.eta_seconds, "report_path": exp.report_path,
        "submitted_at": exp.submitted_at.isoformat() + "Z" if exp.submitted_at else None,
        "runs": [{"id": r.id, "label": r.label} for r in exp.runs],
    }  # fmt: skip
    if stages:
        out["stages"] = [stage_json(s) for s in exp.stages]
    return out


def stage_columns(stages: list[Stage]) -> list[list[Stage]]:
    """Stages by depth in the dependency graph (a column per depth)."""
    depth: dict[str, int] = {}
    for stage in stages:  # plan order: dependencies come first
        depth[stage.name] = 1 + max((depth.get(d, -1) for d in stage.depends_on), default=-1)
    columns: list[list[Stage]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for stage in stages:
        columns[depth[stage.name]].append(stage)
    return columns


def report_tables(root: Path) -> list[dict[str, Any]]:
    """The report's tables (tables.json) with their intervals (intervals.json)."""
    report = root / "report"
    try:
        values = json.loads((report / "tables.json").read_text())
    except FileNotFoundError:
        return []
    try:
        intervals = json.loads((report / "intervals.json").read_text())
    except FileNotFoundError:
        intervals = {}
    tables = []
    for title, rows in values.items():
        columns = list(next(iter(rows.values()), {}))
        spans = intervals.get(title, {})
        body = [
            (label, [(cells.get(c), (spans.get(label) or {}).get(c)) for c in columns])
            for label, cells in rows.items()
        ]
        tables.append({"title": title, "columns": columns, "rows": body})
    return tables


def tail(path: str, lines: int) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()[-lines:]
    except FileNotFoundError:
        return []


def get(session, model, ident: int):
    """The row, or a 404 naming what is missing."""
    row = session.get(model, ident)
    if row is None:
        raise HTTPException(404, f"no {model.__name__.lower()} {ident}")
    return row


def create_app(
    registry: store.Registry,
    output_dir: str | Path,
    *,
    token: str | None,
    planner: submission_lib.Planner = submission_lib.plan,
) -> FastAPI:
    """The dashboard over ``registry``; ``token=None`` makes it read-only."""
    app = FastAPI(title="flan-moe experiments", docs_url=None, redoc_url=None)  # no CDN
    pages = Jinja2Templates(directory=str(TEMPLATES))
    pages.env.filters["cell"] = format_cell
    pages.env.filters["duration"] = format_duration
    write = Depends(auth.WriteGuard(token))
    figures_dir = Path(tempfile.mkdtemp(prefix="flan_moe_dashboard_"))
    _api_routes(app, registry, Path(output_dir), write, planner)
    _file_routes(app, registry, figures_dir)
    _page_routes(app, registry, pages, writable=token is not None)
    return app


def _api_routes(app: FastAPI, registry, output_dir: Path, write, planner) -> None:
    @app.get("/api/experiments")
    def list_experiments() -> list[dict[str, Any]]:
        with registry.session() as session:
            rows = session.query(Experiment).order_by(Experiment.id.desc()).all()
            return [experiment_json(e) for e in rows]

    @app.get("/api/experiments/{experiment_id}")
    def show_experiment(experiment_id: int) -> dict[str, Any]:
        with registry.session() as session:
            return experiment_json(get(session, Experiment, experiment_id), stages=True)

    @app.post("/api/experiments", status_code=201, dependencies=[write])
    def submit(request: SubmitRequest) -> dict[str, Any]:
        sub = submission_lib.Submission(request.experiment, request.scale, request.overrides)
        try:
            planned = planner(sub, output_dir)
        except (ValueError, KeyError) as e:
            raise HTTPException(422, str(e).strip("'\"")) from None
        with registry.session() as session:
            return experiment_json(store.submit(session, planned), stages=True)

    @app.post("/api/experiments/{experiment_id}/cancel", dependencies=[write])
    def cancel(experiment_id: int) -> dict[str, Any]:
        with registry.session() as session:
            get(session, Experiment, experiment_id)
            return experiment_json(store.cancel_experiment(session, experiment_id), stages=True)

    @app.post("/api/stages/{stage_id}/retry", dependencies=[write])
    def retry(stage_id: int) -> dict[str, Any]:
        with registry.session() as session:
            get(session, Stage, stage_id)
            try:
                return stage_json(store.retry_stage(session, stage_id))
            except ValueError as e:
                raise HTTPException(409, str(e)) from None

    @app.get("/api/stages/{stage_id}/log")
    def stage_log(stage_id: int, lines: Annotated[int, Query(ge=1, le=5000)] = 200) -> dict:
        with registry.session() as session:
            stage = get(session, Stage, stage_id)
            status, path = stage.status, stage.log_path
        return {"status": status, "log_path": path, "lines": tail(path, lines)}

    @app.get("/api/runs/{run_id}/curves")
    def run_curves(run_id: int) -> dict[str, Any]:
        with registry.session() as session:
            model_dir = get(session, Run, run_id).final_model_dir
        return {"model_dir": model_dir, "scalars": curves.read_scalars(Path(model_dir) / "train")}


def _file_routes(app: FastAPI, registry, figures_dir: Path) -> None:
    @app.get("/runs/{run_id}/curves.png")
    def run_curves_png(run_id: int) -> Response:
        with registry.session() as session:
            run = get(session, Run, run_id)
            model_dir, label = run.final_model_dir, run.label
        path = curves.run_figure(model_dir, figures_dir / f"run_{run_id}.png", title=label)
        if path is None:
            raise HTTPException(404, f"{model_dir}/train has no event files yet")
        return FileResponse(path, headers={"Cache-Control": "no-store"})

    @app.get("/compare/curves.png")
    def compare_png(run: Annotated[list[int], Query()]) -> Response:
        series = _series(registry, run)
        name = "compare_" + "_".join(map(str, run)) + ".png"
        path = curves.compare_figure(series, figures_dir / name)
        if path is None:
            raise HTTPException(404, "none of these runs has logged a loss yet")
        return FileResponse(path, headers={"Cache-Control": "no-store"})

    @app.get("/experiments/{experiment_id}/report/{name:path}")
    def report_file(experiment_id: int, name: str) -> Response:
        with registry.session() as session:
            folder = (Path(get(session, Experiment, experiment_id).root) / "report").resolve()
        path = (folder / name).resolve()
        if not path.is_relative_to(folder) or not path.is_file():
            raise HTTPException(404, f"no report file {name!r} (has the report been written?)")
        return FileResponse(path)


def _page_routes(app: FastAPI, registry, pages: Jinja2Templates, *, writable: bool) -> None:
    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> Response:
        with registry.session() as session:
            rows = session.query(Experiment).order_by(Experiment.id.desc()).all()
            experiments = [experiment_json(e) for e in rows]
        context = {"experiments": experiments, "names": [*settings.ALIASES, *settings.EXPERIMENTS],
                   "scales": list(settings.SCALES), "writable": writable}  # fmt: skip
        return pages.TemplateResponse(request, "index.html", context)

    @app.get("/experiments/{experiment_id}", response_class=HTMLResponse)
    def experiment_page(request: Request, experiment_id: int) -> Response:
        with registry.session() as session:
            exp = get(session, Experiment, experiment_id)
            context = {
                "exp": experiment_json(exp), "columns": [[stage_json(s) for s in col]
                                                         for col in stage_columns(exp.stages)],
                "tables": report_tables(Path(exp.root)), "figures": _report_figures(exp),
                "writable": writable,
            }  # fmt: skip
        return pages.TemplateResponse(request, "experiment.html", context)

    @app.get("/compare", response_class=HTMLResponse)
    def compare_page(request: Request, run: Annotated[list[int], Query()] = ()) -> Response:
        with registry.session() as session:
            order = session.query(Run).order_by(Run.experiment_id, Run.position)
            all_runs = [{"id": r.id, "label": r.label,
                         "experiment": f"{r.experiment.name} ({r.experiment.scale})"}
                        for r in order]  # fmt: skip
            chosen = [get(session, Run, i) for i in run]
            rows = _compare_rows(chosen)
        context = {"runs": all_runs, "chosen": run, "rows": rows}
        return pages.TemplateResponse(request, "compare.html", context)


def _series(registry, run_ids) -> dict[str, curves.Series]:
    with registry.session() as session:
        runs = [get(session, Run, i) for i in run_ids]
        dirs = {f"{r.label} [{r.experiment.name}/{r.experiment.scale}]": r.final_model_dir
                for r in runs}  # fmt: skip
    return {label: curves.read_scalars(Path(d) / "train") for label, d in dirs.items()}


def _report_figures(exp: Experiment) -> list[str]:
    folder = Path(exp.root) / "report"
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))


def _compare_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """For each chosen run, its row in every table of its experiment's report."""
    out = []
    for run in runs:
        for table in report_tables(Path(run.experiment.root)):
            for label, cells in table["rows"]:
                if label == run.label or label.startswith(run.label + " ("):
                    where = f"{run.experiment.name}/{run.experiment.scale}"
                    cells_by_column = dict(zip(table["columns"], cells, strict=True))
                    out.append({"run": f"{label} [{where}]", "table": table["title"],
                                "cells": cells_by_column})  # fmt: skip
    return out


def format_cell(cell: tuple[float | None, Any]) -> str:
    value, interval = cell
    if value is None:
        return "—"
    text = f"{value:.1f}"
    if interval:
        text += f" [{interval[0]:.1f}, {interval[1]:.1f}]"
    return text


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"

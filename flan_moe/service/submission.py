"""A submission (experiment name + scale + overrides) and its plan, from the runner.

Overrides are a flat JSON object. Keys naming a ``settings.Scale`` field replace it
(dict fields ``models``, ``pretrained``, ``train_bindings``, ``pretrain_bindings`` are
merged into the scale's); ``runs`` keeps the runs with those labels; ``eval_modes``,
``eval_suites`` and ``figures`` replace the experiment's. For example the tiny
synthetic smoke run of the tests::

    {"pretrain_steps": 0, "instruction_tune_steps": 4, "runs": ["Flan-T5 (dense)"],
     "eval_modes": [], "figures": [],
     "train_bindings": {"MIXTURE_OR_TASK_NAME": "synthetic"}}

A submission without overrides lives where ``scripts/run_experiment.py`` puts the same
experiment (``<output_dir>/<experiment>/<scale>``), so the CLI and the service share
its stages; one with overrides in ``<scale>-<hash of the overrides>``. Its record,
``SERVICE.json`` in that folder, is what ``rebuild`` re-plans from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from flan_moe.experiments import pipeline, runner, settings

RECORD = "SERVICE.json"
_MERGED = ("models", "pretrained", "train_bindings", "pretrain_bindings")
_EXPERIMENT_KEYS = ("runs", "eval_modes", "eval_suites", "figures")
_SCALE_KEYS = tuple(f.name for f in dataclasses.fields(settings.Scale) if f.name != "name")


@dataclasses.dataclass(frozen=True)
class Submission:
    experiment: str  # a name of settings.EXPERIMENTS or an alias (setting2)
    scale: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Planned:
    """A submission resolved by the runner: its folder, and every run's stages in order."""

    submission: Submission
    experiment: settings.Experiment
    scale: settings.Scale
    root: Path
    plans: tuple[runner.RunPlan, ...]

    @property
    def stages(self) -> list[pipeline.Stage]:
        return [s for plan in self.plans for s in plan.stages]

    def chain(self, name: str) -> list[pipeline.Stage]:
        """Stage ``name`` after all its ancestors, in plan order: what the worker hands
        to ``run_pipeline`` (finished ancestors are skipped, exactly as on the CLI)."""
        by_name = {s.name: s for s in self.stages}
        if name not in by_name:
            raise KeyError(f"{self.root}: the plan has no stage {name!r}")
        needed, todo = set(), [name]
        while todo:
            current = todo.pop()
            if current not in needed:
                needed.add(current)
                todo.extend(by_name[current].depends_on)
        return [s for s in self.stages if s.name in needed]


Planner = Callable[[Submission, Path], Planned]


def _scale_value(scale: settings.Scale, key: str, value: Any) -> Any:
    current = getattr(scale, key)
    if key in _MERGED:
        if not isinstance(value, Mapping):
            raise ValueError(f"override {key!r} must be an object, got {value!r}")
        return {**current, **value}
    if isinstance(current, bool) or isinstance(value, bool):
        if not isinstance(value, bool) or not isinstance(current, bool):
            raise ValueError(f"override {key!r} must be {type(current).__name__}, got {value!r}")
    elif isinstance(current, int) and not isinstance(value, int):
        raise ValueError(f"override {key!r} must be an integer, got {value!r}")
    if isinstance(current, Mapping):
        return dict(value)
    return value


def apply_overrides(
    experiment_name: str, scale: settings.Scale, overrides: Mapping[str, Any]
) -> tuple[settings.Experiment, settings.Scale]:
    """The experiment and scale with ``overrides``; an unknown key is an error naming the
    allowed ones."""
    unknown = sorted(set(overrides) - set(_SCALE_KEYS) - set(_EXPERIMENT_KEYS))
    if unknown:
        raise ValueError(
            f"unknown override(s) {unknown}: use Scale fields {list(_SCALE_KEYS)} or "
            f"experiment fields {list(_EXPERIMENT_KEYS)}"
        )
    changes = {k: _scale_value(scale, k, v) for k, v in overrides.items() if k in _SCALE_KEYS}
    scale = dataclasses.replace(scale, **changes)
    experiment = settings.get_experiment(experiment_name, scale)
    if "runs" in overrides:
        labels = [r.label for r in experiment.runs]
        missing = sorted(set(overrides["runs"]) - set(labels))
        if missing or not overrides["runs"]:
            raise ValueError(f"override 'runs': {missing or 'empty'}; the runs are {labels}")
        runs = tuple(r for r in experiment.runs if r.label in overrides["runs"])
        experiment = dataclasses.replace(experiment, runs=runs)
    for key in ("eval_modes", "eval_suites", "figures"):
        if key in overrides:
            experiment = dataclasses.replace(experiment, **{key: tuple(overrides[key])})
    return experiment, scale


def overrides_digest(overrides: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]


def experiment_root(
    output_dir: str | os.PathLike, experiment: settings.Experiment, submission: Submission
) -> Path:
    scale = settings.get_scale(submission.scale)
    root = runner.experiment_root(output_dir, experiment, scale)
    if submission.overrides:
        root = root.with_name(f"{scale.name}-{overrides_digest(submission.overrides)}")
    return root


def plan(submission: Submission, output_dir: str | os.PathLike) -> Planned:
    """The runner's plan of a submission (raises ``ValueError``/``KeyError`` naming a bad
    name, scale, override or missing starting point, before anything runs)."""
    experiment, scale = apply_overrides(
        submission.experiment, settings.get_scale(submission.scale), submission.overrides
    )
    canonical = Submission(experiment.name, scale.name, dict(submission.overrides))
    root = experiment_root(output_dir, experiment, canonical)
    plans = runner.plan_experiment(experiment, scale, root)
    return Planned(canonical, experiment, scale, root, tuple(plans))


def write_record(root: Path, submission: Submission, **extra: Any) -> None:
    """``SERVICE.json``: what ``rebuild`` re-plans from (written atomically)."""
    root.mkdir(parents=True, exist_ok=True)
    record = {**read_record_raw(root), **dataclasses.asdict(submission), **extra}
    record["overrides"] = dict(submission.overrides)
    tmp = root / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, root / RECORD)


def read_record_raw(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / RECORD).read_text())
    except FileNotFoundError:
        return {}


def read_record(root: Path) -> tuple[Submission, dict[str, Any]] | None:
    raw = read_record_raw(root)
    if not raw:
        return None
    return Submission(raw["experiment"], raw["scale"], raw.get("overrides") or {}), raw


def find_experiment_folders(output_dir: str | os.PathLike) -> list[tuple[Path, Submission, bool]]:
    """(folder, submission, submitted) of every experiment under ``output_dir``: folders
    with a ``SERVICE.json`` (submitted through the service) and ``<experiment>/<scale>``
    folders a CLI run made (not submitted: their unfinished stages are not queued)."""
    out = Path(output_dir)
    found: dict[Path, tuple[Submission, bool]] = {}
    for record in sorted(out.glob(f"*/*/{RECORD}")):
        submission, _ = read_record(record.parent)  # type: ignore[misc]
        found[record.parent] = (submission, True)
    for name in settings.EXPERIMENTS:
        for scale in settings.SCALES:
            folder = out / name / scale
            if folder.is_dir() and folder not in found:
                found[folder] = (Submission(name, scale), False)
    return [(folder, sub, submitted) for folder, (sub, submitted) in sorted(found.items())]

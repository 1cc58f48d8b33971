"""Every gin file parses, and every model and experiment it names builds."""

from pathlib import Path

import pytest

from flan_moe.cli import experiment as experiment_cli
from flan_moe.cli import train as train_cli
from flan_moe.cli.gin_flags import GinFlags, check_macros, parse_gin, query_macro
from flan_moe.cli.validation import TRAIN_MACROS
from flan_moe.experiments import settings
from flan_moe.model.config import SIZES
from flan_moe.model.flops import model_cost

ROOT = Path(__file__).resolve().parents[2] / "gin_configs"
MODEL_FILES = sorted((ROOT / "models").glob("*.gin"))
RUN_FILES = sorted((ROOT / "runs").glob("*.gin"))
EXPERIMENT_FILES = sorted((ROOT / "experiments").glob("*.gin"))


def _header_ok(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert lines and lines[0].startswith(f"# {path.stem}"), f"{path} needs a header comment"


@pytest.mark.parametrize("run_file", RUN_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("model_file", MODEL_FILES, ids=lambda p: p.stem)
def test_model_and_run_files_parse_and_build(model_file, run_file):
    _header_ok(model_file)
    _header_ok(run_file)
    parse_gin(GinFlags(gin_files=[str(model_file), str(run_file)],
                       bindings=["MODEL_DIR = '/tmp/unused'", "TRAIN_STEPS = 1"]))  # fmt: skip
    check_macros(TRAIN_MACROS)  # every macro a shipped file sets is read by the command
    name = query_macro("MODEL_NAME")
    assert name in SIZES
    config = train_cli.resolve_model_config(
        name, query_macro("MODEL_OVERRIDES", {}), query_macro("RUN_MODEL_OVERRIDES", {})
    )
    cost = model_cost(config)
    assert cost.active_params <= cost.total_params
    assert int(query_macro("TRAIN_STEPS")) == 1
    assert dict(query_macro("TASK_FEATURE_LENGTHS")).keys() == {"inputs", "targets"}


def test_every_size_has_a_model_file():
    named = {p.read_text().split('MODEL_NAME = "')[1].split('"')[0] for p in MODEL_FILES}
    assert named == set(SIZES)


def test_unknown_binding_is_a_clear_error():
    flags = GinFlags(
        gin_files=[str(MODEL_FILES[0]), str(RUN_FILES[0])],
        bindings=["OptimizerConfig.no_such_field = 1"],
    )
    with pytest.raises(ValueError, match="no_such_field"):
        parse_gin(flags)


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=lambda p: p.stem)
def test_experiment_files_resolve_at_every_scale(path):
    _header_ok(path)
    for scale_name in settings.SCALES:
        experiment, scale = experiment_cli.resolve(str(path), scale_name)
        assert experiment.name == path.stem
        for run in experiment.runs:
            model_file = ROOT / "models" / f"{scale.models[run.role]}.gin"
            assert model_file.exists(), f"{path.stem} at {scale_name}: no {model_file}"


def test_every_experiment_has_a_gin_file():
    assert {p.stem for p in EXPERIMENT_FILES} == set(settings.EXPERIMENTS)

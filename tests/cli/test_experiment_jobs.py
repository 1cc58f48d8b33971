"""`run_experiment.py --jobs`: explicit numbers, 'auto', and bad values."""

import pytest

from flan_moe.cli import experiment, validation


def test_explicit_jobs():
    assert experiment.resolve_jobs("3") == 3


@pytest.mark.parametrize("value", ["0", "-1", "two", ""])
def test_bad_jobs_name_the_fix(value):
    with pytest.raises(validation.InputError, match="positive number or 'auto'"):
        experiment.resolve_jobs(value)


def test_auto_is_one_job_on_an_accelerator(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert experiment.resolve_jobs("auto") == 1


def test_auto_is_two_jobs_on_a_cpu_only_install(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setattr(experiment.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(experiment.importlib_util, "find_spec", lambda name: None)
    assert experiment.resolve_jobs("auto") == 2
    monkeypatch.setattr(experiment.os, "cpu_count", lambda: 1)
    assert experiment.resolve_jobs("auto") == 1

"""Test set-up: a fake 8-device CPU mesh, set before JAX is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from pathlib import Path

import pytest

_DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data: $FLAN_MOE_DATA_DIR, else ../shared/data beside the checkout.

    Skips (with the reason) when the data is absent; CI always has it.
    """
    d = Path(os.environ.get("FLAN_MOE_DATA_DIR") or _DEFAULT_DATA)
    if not (d / "flan_cot").is_dir() or not (d / "mmlu").is_dir():
        pytest.skip(f"no data at {d}: set FLAN_MOE_DATA_DIR (e.g. ../shared/data)")
    os.environ["FLAN_MOE_DATA_DIR"] = str(d)
    return d

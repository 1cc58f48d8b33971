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


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The held-out evaluation data (MMLU val, BBH): $FLAN_MOE_DATA_DIR, else ../shared/data.

    Skips (with the reason) when it is absent.
    """
    d = Path(os.environ.get("FLAN_MOE_DATA_DIR") or _DEFAULT_DATA)
    if not (d / "mmlu" / "val").is_dir() or not (d / "bbh" / "bbh").is_dir():
        pytest.skip(f"real data not found at {d}: set FLAN_MOE_DATA_DIR")
    return d


@pytest.fixture(scope="session")
def sentencepiece_model(data_dir, tmp_path_factory) -> Path:
    """A 400-piece SentencePiece model trained on the local training data, once per session.

    Trained with ``scripts/train_sentencepiece.py`` (T5's pad 0 / eos 1 / unk 2; rare
    characters by byte fallback): 400 pieces + 100 sentinel ids fit the tiny models' 512.
    """
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_sentencepiece.py"
    spec = importlib.util.spec_from_file_location("train_sentencepiece", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("vocab") / "local_400.model"
    module.train(str(out), vocab_size=400, max_records_per_dataset=100, character_coverage=0.999)
    return out

"""benchmark_train_step.py helpers: the Hugging Face twin has our config's shapes."""

import importlib.util
import pathlib

import pytest

from flan_moe.model.config import get_config
from flan_moe.model.flops import model_cost

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "benchmark_train_step.py"
_spec = importlib.util.spec_from_file_location("benchmark_train_step", SCRIPT)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.mark.parametrize("name", ["switch_tiny_8", "switch_tiny_dense"])
def test_hf_twin_has_the_same_parameter_count(name):
    pytest.importorskip("transformers")
    config = get_config(name)
    hf = bench.hf_model(config)
    hf_params = sum(p.numel() for p in hf.parameters())  # tied head counted once
    assert hf_params == model_cost(config, input_length=8, target_length=8).total_params


def test_model_config_applies_the_settings_defaults_and_overrides():
    short = bench.model_config("switch_tiny_8", "32x512x128", dtype="float32", remat="auto",
                               scan=False)  # fmt: skip
    assert short.remat_policy == "none" and short.moe.dispatch == "gather"
    long = bench.model_config(
        "switch_tiny_8", "8x2048x512", dtype="float32", remat="auto", scan=True,
        overrides={"dispatch": "dropless", "attention": "dot_product", "dropout": 0.0},
    )  # fmt: skip
    assert long.remat_policy == "full" and long.scan_layers
    assert long.moe.dropless and long.attention_implementation == "dot_product"
    assert long.dropout_rate == 0.0

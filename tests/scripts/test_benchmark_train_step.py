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


def test_cpu_bars_compile_bar_needs_wall_and_cpu_ratios(monkeypatch, capsys):
    # Fake arm rows (no compile): scanned 10 s wall but 40 of 100 CPU s -> the bar fails.
    rows = {
        "moe_unrolled": dict(flops_per_device=106.0, compile_s=100.0, compile_cpu_s=100.0,
                             lower_s=8.0, xla_compile_s=92.0),
        "moe_scanned": dict(flops_per_device=20.0, compile_s=10.0, compile_cpu_s=40.0,
                            lower_s=7.0, xla_compile_s=3.0),
        "dense_unrolled": dict(flops_per_device=100.0, compile_s=90.0, compile_cpu_s=90.0,
                               lower_s=7.0, xla_compile_s=83.0),
        "memory": dict(memory_gib=27.0, remat="full"),
    }  # fmt: skip
    order = []

    def fake_arm(arm, setting):
        order.append((arm, setting))
        return rows[arm]

    monkeypatch.setattr(bench, "_arm_in_fresh_process", fake_arm)
    bars = {b["bar"]: b for b in bench.cpu_bars("32x512x128", "8x2048x512")}
    # The two compile-time arms run back to back, each setting where it belongs.
    assert [a for a, _ in order][:2] == ["moe_unrolled", "moe_scanned"]
    assert dict(order)["memory"] == "8x2048x512" and dict(order)["moe_scanned"] == "32x512x128"
    assert bars["flops_ratio"]["value"] == 1.06 and bars["flops_ratio"]["holds"]
    assert bars["compile_ratio"]["value"] == 0.1 and bars["compile_ratio"]["cpu_value"] == 0.4
    assert not bars["compile_ratio"]["holds"]
    assert bars["memory_gib"]["holds"]
    rows["moe_scanned"]["compile_cpu_s"] = 30.0
    assert {b["bar"]: b for b in bench.cpu_bars("32x512x128", "8x2048x512")}["compile_ratio"][
        "holds"
    ]

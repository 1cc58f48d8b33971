"""The MoE-layer micro-benchmark runs (tiny, CPU) and reports every dispatch path."""

import importlib.util
import json
import pathlib

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "benchmark_moe_layer.py"
_spec = importlib.util.spec_from_file_location("benchmark_moe_layer", SCRIPT)
benchmark_moe_layer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark_moe_layer)


def test_benchmark_runs_all_paths(capsys):
    args = "--batch 2 --length 8 --d_model 16 --d_ff 32 --experts 4 --steps 1 --warmup 0"
    benchmark_moe_layer.main(args.split())
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    assert [r["path"] for r in rows] == ["einsum", "gather", "dropless"]
    assert all(r["forward_tokens_per_s"] > 0 and r["tokens"] == 16 for r in rows)
    assert rows[2]["fraction_dropped"] == 0.0  # dropless drops nothing
    assert lines[-5].startswith("path")  # the table (header, rule, 3 rows) follows

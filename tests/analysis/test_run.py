"""Routing collection from a real (tiny, random) model, the analyze CLI and its figures."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_moe.analysis import figures
from flan_moe.analysis.run import AnalysisConfig, Example, analyze, tokenize
from flan_moe.data.vocabularies import ByteVocabulary
from flan_moe.model.config import get_config
from flan_moe.model.moe import ROUTING_COLLECTION
from flan_moe.model.transformer import EncoderDecoder

EXAMPLES = [
    Example("qa", "What is 2 + 2?", "4"),
    Example("qa", "Name a colour.", "blue"),
    Example("math", "12 * 3 =", "36, since 12 * 3 = 36 and that is a long answer"),
]


@pytest.fixture(scope="module")
def tiny():
    """gs_tiny (top-2, 8 experts) with random params built from shapes (no compiled init)."""
    config = get_config("gs_tiny")
    tokens = jax.ShapeDtypeStruct((1, 4), jnp.int32)
    shapes = jax.eval_shape(
        EncoderDecoder(config).init, jax.random.PRNGKey(0), tokens, tokens, tokens
    )
    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype), nn.unbox(shapes["params"])
    )
    return config, {"params": params, "collections": set(shapes)}


def test_routing_sow_is_off_by_default(tiny):
    config, variables = tiny
    assert ROUTING_COLLECTION not in variables["collections"]  # init never sows it
    params = variables["params"]
    model = EncoderDecoder(config)
    tokens = jnp.array([[5, 6, 1, 0]])
    plain = jax.jit(model.apply)({"params": params}, tokens, tokens, tokens)
    with_routing, state = jax.jit(
        lambda v, t: model.apply(v, t, t, t, mutable=[ROUTING_COLLECTION])
    )({"params": params}, tokens)
    np.testing.assert_array_equal(plain, with_routing)
    assert set(state[ROUTING_COLLECTION]) == {"encoder", "decoder"}


def test_analyze_counts_every_real_token_once_and_no_padding(tiny):
    config, variables = tiny
    vocab = ByteVocabulary()
    cfg = AnalysisConfig(max_input_length=12, max_target_length=8, batch_size=2, min_count=1)
    arrays, cut = tokenize(EXAMPLES, vocab, cfg)
    assert cut == {"inputs": 2, "targets": 1}  # counted, never silently cut
    result = analyze(config, variables["params"], vocab, EXAMPLES, cfg)
    assert result["examples"] == {"qa": 2, "math": 1}
    assert result["truncated"] == cut
    layers = result["layers"]
    assert sorted(layers) == ["decoder/layers_1", "encoder/layers_1"]
    for name, layer in layers.items():
        valid = (arrays["targets"] if name.startswith("decoder") else arrays["inputs"]) > 0
        k = config.moe.num_selected(decoder=name.startswith("decoder"))
        assert layer["tokens"] == valid.sum()  # the padded third batch row is not counted
        assert sum(layer["load_counts"]["all"]) == k * valid.sum()
        assert set(layer["load"]) == {"qa", "math", "all"}
        assert sum(layer["load"]["all"]) == pytest.approx(1.0, abs=1e-6)
        pairs = (valid[:, :-1] & valid[:, 1:]).sum()
        assert layer["repeat"]["pairs"] == pairs
        assert 0 <= layer["drop_rate"] <= 1
        assert len(layer["top_tokens"]) == config.moe.num_experts


def test_cli_writes_analysis_and_figures(tiny, tmp_path, monkeypatch):
    from flan_moe.cli import analyze as cli
    from flan_moe.training import checkpoints

    config, variables = tiny
    params = variables["params"]
    # The lengths and batch of the test above: the compiled routing function is reused.
    meta = {"vocabulary": "byte", "task_feature_lengths": {"inputs": 12, "targets": 8}}
    monkeypatch.setattr(checkpoints, "resolve_checkpoint", lambda path: (str(tmp_path), 7))
    monkeypatch.setattr(checkpoints, "load_params", lambda path: (params, config, meta))
    data = tmp_path / "rows.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"task": ex.task, "inputs": ex.inputs, "targets": ex.targets})
            for ex in EXAMPLES
        )
    )
    path = cli.run(
        cli.build_parser().parse_args(
            [
                "--checkpoint",
                str(tmp_path),
                "--jsonl",
                str(data),
                "--batch_size",
                "2",
                "--max_target_length",
                "8",
            ]
        )
    )
    assert path == tmp_path / "routing_analysis.json"
    result = json.loads(path.read_text())
    assert result["step"] == 7 and result["lengths"]["inputs"] == 12
    for png in ("expert_load_by_task.png", "consecutive_token_rates.png"):
        assert (tmp_path / "routing_figures" / png).stat().st_size > 0


def test_bad_jsonl_row_names_file_and_line(tmp_path):
    from flan_moe.cli import analyze as cli

    data = tmp_path / "rows.jsonl"
    data.write_text('{"task": "a", "inputs": "x", "targets": "y"}\n{"task": "a"}\n')
    with pytest.raises(SystemExit, match="rows.jsonl:2"):
        cli._jsonl_examples(str(data))


def test_training_curves_from_metrics_jsonl(tmp_path):
    rows = [{"step": s, "loss": 5.0 / s, "cross_entropy": 4.0 / s, "load_balancing_loss": 2.0,
             "router_z_loss": 0.1, "moe/fraction_dropped": 0.2, "moe/expert_usage_max": 0.3}
            for s in range(1, 6)]  # fmt: skip
    log = tmp_path / "metrics.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    path = figures.training_curves(figures.read_metrics(log), tmp_path / "c.png", title="run")
    assert path is not None and path.stat().st_size > 0
    assert (
        figures.training_curves([{"step": 1, "other": 1.0}], tmp_path / "n.png", title="x") is None
    )


def test_figures_have_no_clipped_text_or_overlapping_legends(tmp_path, monkeypatch):
    from flan_moe.analysis.collector import RoutingCollector

    rng = np.random.default_rng(0)
    collector = RoutingCollector(vocab_size=16)
    tasks = ["mmlu/social sciences", "bbh/salient_translation_error_detection", "qa"]
    for layer in ("encoder/layers_1", "encoder/layers_3", "decoder/layers_1"):
        probs = rng.random((3, 6, 8))
        collector.add(layer, probs=probs, kept=probs > 0.3, valid=np.ones((3, 6), bool),
                      tokens=rng.integers(2, 16, (3, 6)), row_tasks=tasks, k=2)  # fmt: skip
    analysis = {"model": "a model with a rather long name", "layers": collector.summary(str)}
    rows = [{"step": s, "loss": 1.0 / s, "cross_entropy": 0.9 / s, "load_balancing_loss": 1.0,
             "router_z_loss": 0.2, "moe/fraction_dropped": 0.1} for s in (1, 2)]  # fmt: skip
    problems = {}
    save = figures.save_figure

    def checked_save(fig, path):
        problems[path.name] = figures.layout_problems(fig)
        return save(fig, path)

    monkeypatch.setattr(figures, "save_figure", checked_save)
    figures.routing_figures(analysis, tmp_path)
    figures.training_curves(rows, tmp_path / "curves.png", title="Training of a tiny run " * 3)
    assert problems == {
        "expert_load_by_task.png": [],
        "consecutive_token_rates.png": [],
        "curves.png": [],
    }


def test_layout_check_catches_a_legend_over_the_plot(tmp_path):
    plt = figures._plt()
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, 1], label="a long legend entry")
    ax.legend(loc="center")
    ax.set_title("a title far too long to fit into a figure this narrow, clipped at the edge")
    problems = figures.layout_problems(fig)
    plt.close(fig)
    assert any("overlaps" in p for p in problems) and any("clipped" in p for p in problems)

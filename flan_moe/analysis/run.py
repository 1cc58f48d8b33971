"""Run a model over examples with teacher forcing and collect its routing (no TF, no gin).

``analyze`` tokenises (task, inputs, targets) examples with the run's vocabulary, applies
the model with the opt-in ``moe.ROUTING_COLLECTION`` mutable, and feeds every sparse
layer's router probabilities and kept assignments to a ``RoutingCollector``. Encoder
positions count where the input token is not padding, decoder positions where the target
token is not padding (the decoder position holding the start token 0 counts: it routes the
first target prediction). Inputs and targets longer than the lengths are cut, and the cuts
are counted in the result's ``truncated``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from flan_moe.analysis.collector import RoutingCollector
from flan_moe.model.config import ModelConfig
from flan_moe.model.moe import ROUTING_COLLECTION
from flan_moe.model.transformer import EncoderDecoder


@dataclasses.dataclass(frozen=True)
class Example:
    task: str
    inputs: str
    targets: str


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    max_input_length: int
    max_target_length: int = 64
    batch_size: int = 16
    top_tokens: int = 10
    min_count: int = 5  # least count of a token at an expert to rank it by lift


def _ids(vocab: Any, text: str, length: int) -> tuple[list[int], bool]:
    ids = [*vocab.encode(text), vocab.eos_id]
    return ids[:length], len(ids) > length


def tokenize(
    examples: Sequence[Example], vocab: Any, cfg: AnalysisConfig
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Right-padded arrays (inputs, decoder_inputs, targets) and truncation counts."""
    n = len(examples)
    arrays = {
        "inputs": np.zeros((n, cfg.max_input_length), np.int32),
        "targets": np.zeros((n, cfg.max_target_length), np.int32),
    }
    cut = {"inputs": 0, "targets": 0}
    for i, ex in enumerate(examples):
        for name, text, length in (
            ("inputs", ex.inputs, cfg.max_input_length),
            ("targets", ex.targets, cfg.max_target_length),
        ):
            ids, was_cut = _ids(vocab, text, length)
            arrays[name][i, : len(ids)] = ids
            cut[name] += int(was_cut)
    decoder_inputs = np.zeros_like(arrays["targets"])
    decoder_inputs[:, 1:] = arrays["targets"][:, :-1]
    arrays["decoder_inputs"] = decoder_inputs * (arrays["targets"] > 0)
    return arrays, cut


@functools.lru_cache(maxsize=4)
def _routing_fn(config: ModelConfig):
    model = EncoderDecoder(config)

    @jax.jit
    def run(params, inputs, decoder_inputs, targets):
        _, state = model.apply(
            {"params": params}, inputs, decoder_inputs, targets, mutable=[ROUTING_COLLECTION]
        )
        return state[ROUTING_COLLECTION]

    return run


def routing_layers(sown: Any) -> dict[str, dict[str, np.ndarray]]:
    """{"encoder/layers_1": {"router_probs": ..., "kept": ...}} from the sown collection."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for path, value in traverse_util.flatten_dict(sown).items():
        layer = "/".join(part for part in path[:-1] if part not in ("moe", "mlp"))
        out.setdefault(layer, {})[path[-1]] = np.asarray(value)
    return out


def analyze(
    config: ModelConfig,
    params: Any,
    vocab: Any,
    examples: Sequence[Example],
    cfg: AnalysisConfig,
) -> dict[str, Any]:
    """The analysis dictionary: ``layers`` (``RoutingCollector.summary``), ``examples`` per
    task, ``truncated`` counts, and the lengths used."""
    if config.moe is None:
        raise ValueError(f"model {config.name} has no sparse layers (config.moe is None)")
    if not examples:
        raise ValueError("no examples to analyse")
    arrays, cut = tokenize(examples, vocab, cfg)
    run = _routing_fn(config)
    collector = RoutingCollector(vocab_size=config.vocab_size)
    for start in range(0, len(examples), cfg.batch_size):
        rows = slice(start, start + cfg.batch_size)
        batch = {name: a[rows] for name, a in arrays.items()}
        tasks = [ex.task for ex in examples[rows]]
        if len(tasks) < cfg.batch_size:  # pad the last batch (one compiled shape); not counted
            pad = cfg.batch_size - len(tasks)
            batch = {name: np.pad(a, ((0, pad), (0, 0))) for name, a in batch.items()}
            tasks = tasks + ["<padding>"] * pad
        sown = run(params, batch["inputs"], batch["decoder_inputs"], batch["targets"])
        for layer, values in routing_layers(sown).items():
            decoder = layer.startswith("decoder")
            router = config.moe.router_type(decoder=decoder)
            collector.add(
                layer,
                probs=values["router_probs"],
                kept=values["kept"],
                valid=(batch["targets"] if decoder else batch["inputs"]) > 0,
                tokens=batch["decoder_inputs"] if decoder else batch["inputs"],
                row_tasks=tasks,
                k=config.moe.num_selected(decoder=decoder) if router == "tokens_choose" else None,
            )
    summary = collector.summary(
        lambda t: _token_text(vocab, t), top=cfg.top_tokens, min_count=cfg.min_count
    )
    for layer in summary.values():  # padding rows have no valid tokens: drop their empty task
        for key in ("load", "load_counts", "js_divergence"):
            layer[key].pop("<padding>", None)
    counts: dict[str, int] = {}
    for ex in examples:
        counts[ex.task] = counts.get(ex.task, 0) + 1
    return {
        "model": config.name,
        "examples": counts,
        "truncated": cut,
        "lengths": {"inputs": cfg.max_input_length, "targets": cfg.max_target_length},
        "layers": summary,
    }


def _token_text(vocab: Any, token: int) -> str:
    if token == vocab.pad_id:
        return "<pad/start>"
    if token == vocab.eos_id:
        return "</s>"
    return vocab.decode([token])

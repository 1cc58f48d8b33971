"""How a stack of layers is compiled: remat policies, scanned blocks, tree conversion.

``ModelConfig.remat_policy`` picks what each layer keeps for the backward pass:

- ``"none"``: every activation (fastest, most memory);
- ``"full"``: nothing, the layer is recomputed (``jax.checkpoint_policies.nothing_saveable``);
- ``"dots"``: matmul outputs without batch dimensions
  (``dots_with_no_batch_dims_saveable``, t5x's and MaxText's "minimal" policy).

``ModelConfig.scan_layers=True`` runs each stack as ``nn.scan`` over *blocks* of
``block_size`` consecutive layers, so XLA compiles one block instead of every layer.
A block holds one period of the sparse placement (Switch: ``sparse_interval=2`` =
a dense and a sparse layer); dense models use blocks of one layer. Every param and
sown value inside a block gains a leading ``layers`` axis (logical name ``layers``,
replicated)::

  unrolled: encoder/layers_{b * block_size + j}/...     [...]
  scanned:  encoder/blocks/layers_{j}/...               [num_blocks, ...]

``scanned_to_unrolled`` / ``unrolled_to_scanned`` convert raw (unboxed) trees either
way, e.g. a checkpoint's params, or the ``moe_losses`` collection before
``collect_router_losses``. The unrolled tree is the default and the one the Hugging
Face converters read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from flan_moe.model.config import ModelConfig

BLOCKS = "blocks"
LAYERS_AXIS = "layers"
# Collections whose variables live inside a block and so get the leading layers axis.
SCANNED_COLLECTIONS = ("params", "cache", "moe_losses", "moe_metrics", "intermediates")
STACKS = ("encoder", "decoder")


def remat_policy(name: str) -> Callable | None:
    """The ``jax.checkpoint`` policy of a ``remat_policy`` name (None: no remat)."""
    policies = {
        "none": None,
        "full": jax.checkpoint_policies.nothing_saveable,
        "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }
    if name not in policies:
        raise ValueError(f"remat_policy must be one of {sorted(policies)}, got {name!r}")
    return policies[name]


def num_layers(config: ModelConfig, *, decoder: bool) -> int:
    return config.num_decoder_layers if decoder else config.num_encoder_layers


def block_size(config: ModelConfig, *, decoder: bool) -> int:
    """Layers per scanned block: one period of the sparse placement (1 when dense)."""
    n = num_layers(config, decoder=decoder)
    moe = config.moe
    if moe is None:
        return 1
    explicit = moe.decoder_sparse_layers if decoder else moe.encoder_sparse_layers
    if explicit is not None:
        raise ValueError(
            f"{config.name}: scan_layers needs a periodic sparse placement, but the "
            f"{'decoder' if decoder else 'encoder'} lists its sparse layers {explicit}; "
            "use sparse_interval/sparse_offset or set scan_layers=False"
        )
    size = moe.sparse_interval
    if n % size:
        raise ValueError(
            f"{config.name}: scan_layers needs the {n} {'decoder' if decoder else 'encoder'} "
            f"layers to be a multiple of sparse_interval={size}; set scan_layers=False"
        )
    return size


def _convert_stack(stack: Mapping, config: ModelConfig, *, decoder: bool, to_scan: bool) -> dict:
    size = block_size(config, decoder=decoder)
    n = num_layers(config, decoder=decoder)
    out = {k: v for k, v in stack.items() if not (k == BLOCKS or k.startswith("layers_"))}
    if to_scan:
        present = [i for i in range(n) if f"layers_{i}" in stack]
        if not present:
            return dict(stack)
        if len(present) != n:
            raise ValueError(f"unrolled tree has layers {present}, expected all of 0..{n - 1}")
        out[BLOCKS] = {
            f"layers_{j}": jax.tree.map(
                lambda *xs: jnp.stack(xs),
                *[stack[f"layers_{b * size + j}"] for b in range(n // size)],
            )
            for j in range(size)
        }
        return out
    if BLOCKS not in stack:
        return dict(stack)
    for j, block in stack[BLOCKS].items():
        offset = int(j.removeprefix("layers_"))
        for b in range(n // size):
            out[f"layers_{b * size + offset}"] = jax.tree.map(lambda x, b=b: x[b], block)
    return out


def _convert(tree: Mapping[str, Any], config: ModelConfig, *, to_scan: bool) -> dict:
    out = dict(tree)
    for name in STACKS:
        if name in out:
            out[name] = _convert_stack(
                out[name], config, decoder=name == "decoder", to_scan=to_scan
            )
    return out


def scanned_to_unrolled(tree: Mapping[str, Any], config: ModelConfig) -> dict:
    """``encoder/blocks/layers_j/...[b]`` -> ``encoder/layers_{b*size+j}/...`` (raw arrays)."""
    return _convert(tree, config, to_scan=False)


def unrolled_to_scanned(tree: Mapping[str, Any], config: ModelConfig) -> dict:
    """``encoder/layers_i/...`` -> ``encoder/blocks/layers_{i%size}/...`` stacked over blocks."""
    return _convert(tree, config, to_scan=True)

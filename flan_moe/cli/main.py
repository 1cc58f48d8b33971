"""`make run`: the project's main job.

For now a smoke check of the tiny model: one forward pass and the token
cross-entropy on a toy batch, reported on one line. (The Flan-MoE pipeline of
setting 2 replaces this once the experiment stages exist.)
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flan_moe.model.config import get_config
from flan_moe.model.transformer import EncoderDecoder


def smoke_report(size: str = "tiny", batch: int = 4, inputs: int = 32, targets: int = 16) -> str:
    config = get_config(size)
    model = EncoderDecoder(config)
    rng = np.random.default_rng(0)
    enc = rng.integers(2, config.vocab_size, (batch, inputs)).astype(np.int32)
    tgt = rng.integers(2, config.vocab_size, (batch, targets)).astype(np.int32)
    dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
    start = time.perf_counter()
    params = nn.unbox(model.init(jax.random.PRNGKey(0), enc, dec_in, tgt)["params"])
    logits = jax.jit(model.apply)({"params": params}, enc, dec_in, tgt)
    loss = float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, tgt)))
    seconds = time.perf_counter() - start
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    return (
        f"model={size} params={n_params:,} batch={batch}x{inputs}/{targets} "
        f"loss={loss:.4f} (uniform would be {np.log(config.vocab_size):.4f}) "
        f"time={seconds:.1f}s devices={jax.device_count()} ({jax.default_backend()})"
    )


def main() -> None:
    print(smoke_report())


if __name__ == "__main__":
    main()

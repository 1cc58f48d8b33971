"""Dense building blocks of the T5 encoder-decoder: norms, embeddings, attention, MLP.

Einsum legend used throughout the model:
  b batch, l / q query length, k key length, d d_model (embed), h heads,
  x head dim (kv), f d_ff (mlp), v vocab.

Every parameter is created with logical axis names (``nn.with_logical_partitioning``);
``flan_moe.partitioning.logical_axis_rules`` maps them to mesh axes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from flan_moe.model.config import ModelConfig

Array = jax.Array
NEG_INF = -1e10  # finite, so that fully masked rows (padding) give a uniform softmax, not NaN


def dtype_of(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def constrain(x: Array, axes: tuple[str | None, ...]) -> Array:
    """Sharding constraint on an activation by logical axis names (no-op outside a mesh)."""
    return nn.with_logical_constraint(x, axes)


class RMSNorm(nn.Module):
    """T5 layer norm: scale only, no bias, no mean subtraction; computed in float32."""

    epsilon: float = 1e-6
    dtype: str = "bfloat16"
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
            (x.shape[-1],),
            dtype_of(self.param_dtype),
        )
        x32 = x.astype(jnp.float32)
        variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(variance + self.epsilon)
        return (y * scale.astype(jnp.float32)).astype(dtype_of(self.dtype))


class Embed(nn.Module):
    """Token embedding [v, d]; ``attend`` reuses it as a tied output projection."""

    num_embeddings: int
    features: int
    dtype: str = "bfloat16"
    param_dtype: str = "float32"

    def setup(self) -> None:
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
            (self.num_embeddings, self.features),
            dtype_of(self.param_dtype),
        )

    def __call__(self, tokens: Array) -> Array:
        embedding = self.embedding.astype(dtype_of(self.dtype))
        return jnp.take(embedding, tokens, axis=0)

    def attend(self, x: Array) -> Array:
        """Float32 logits (t5x / flaxformer ``attend_dtype='float32'``)."""
        embedding = self.embedding.astype(jnp.float32)
        return jnp.einsum("bld,vd->blv", x.astype(jnp.float32), embedding)


def relative_position_bucket(
    relative_position: Array,
    *,
    bidirectional: bool,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> Array:
    """T5's bucketing of (key position - query position) into ``num_buckets`` ids.

    Half the buckets (all of them when causal) hold exact small distances; the rest
    grow logarithmically up to ``max_distance``, beyond which everything shares the
    last bucket. Bidirectional: keys after the query use the upper half of the ids.
    Causal: keys after the query (which the mask hides anyway) fall into bucket 0.
    """
    n = -relative_position  # distance looking back: positive for keys before the query
    bucket = jnp.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (n < 0).astype(n.dtype) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    log_ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / math.log(
        max_distance / max_exact
    )
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(n.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return bucket + jnp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """One [buckets, heads] table per stack, shared by all its layers -> bias [1, h, q, k]."""

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    init_scale: float = 1.0

    @nn.compact
    def __call__(self, query_positions: Array, key_positions: Array) -> Array:
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(
                nn.initializers.variance_scaling(self.init_scale, "fan_avg", "uniform"),
                ("relpos_buckets", "heads"),
            ),
            (self.num_buckets, self.num_heads),
            dtype_of(self.param_dtype),
        )
        relative = key_positions[None, :] - query_positions[:, None]  # [q, k]
        buckets = relative_position_bucket(
            relative,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        bias = jnp.take(table, buckets, axis=0)  # [q, k, h]
        return jnp.transpose(bias, (2, 0, 1))[None].astype(jnp.float32)  # [1, h, q, k]


def attention_mask(
    query_valid: Array,
    key_valid: Array,
    *,
    query_segment_ids: Array | None = None,
    key_segment_ids: Array | None = None,
    causal: bool = False,
) -> Array:
    """Boolean mask [b, 1, q, k]: True where a query may attend to a key.

    Padding never attends or is attended to; with segment ids (packed rows) a token
    sees only its own segment; causal masks keys after the query.
    """
    mask = query_valid[:, :, None] & key_valid[:, None, :]
    if query_segment_ids is not None and key_segment_ids is not None:
        mask &= query_segment_ids[:, :, None] == key_segment_ids[:, None, :]
    if causal:
        q_len, k_len = query_valid.shape[1], key_valid.shape[1]
        mask &= jnp.tril(jnp.ones((q_len, k_len), dtype=bool))[None]
    return mask[:, None]


class MultiHeadAttention(nn.Module):
    """T5 attention: q/k/v/o kernels without biases and no 1/sqrt(x) at call time.

    The query kernel's initialiser is scaled by 1/sqrt(head_dim) instead (T5's
    convention), so converted T5 weights are used as they are. Optional KV cache for
    autoregressive decoding (``decode=True``), stored in the ``cache`` collection.
    """

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array,
        *,
        mask: Array | None,
        bias: Array | None,
        enable_dropout: bool,
        decode: bool = False,
    ) -> Array:
        cfg = self.config
        dtype = dtype_of(cfg.dtype)
        pdtype = dtype_of(cfg.param_dtype)
        h, x, d = cfg.num_heads, cfg.head_dim, cfg.d_model

        def kernel(name: str, shape: tuple[int, ...], axes: tuple[str, ...], scale: float):
            scale = scale * cfg.init_scale
            init = nn.initializers.variance_scaling(
                scale, "fan_in", "normal", in_axis=0, out_axis=tuple(range(1, len(shape)))
            )
            if name == "out":
                init = nn.initializers.variance_scaling(
                    scale, "fan_in", "normal", in_axis=(0, 1), out_axis=2
                )
            return self.param(name, nn.with_logical_partitioning(init, axes), shape, pdtype)

        wq = kernel("query", (d, h, x), ("embed", "heads", "kv"), 1.0 / x)
        wk = kernel("key", (d, h, x), ("embed", "heads", "kv"), 1.0)
        wv = kernel("value", (d, h, x), ("embed", "heads", "kv"), 1.0)
        wo = kernel("out", (h, x, d), ("heads", "kv", "embed"), 1.0)

        query = jnp.einsum("bqd,dhx->bqhx", inputs_q, wq.astype(dtype))
        key = jnp.einsum("bkd,dhx->bkhx", inputs_kv, wk.astype(dtype))
        value = jnp.einsum("bkd,dhx->bkhx", inputs_kv, wv.astype(dtype))
        query = constrain(query, ("batch", "length", "heads", "kv"))
        key = constrain(key, ("batch", "length", "heads", "kv"))
        value = constrain(value, ("batch", "length", "heads", "kv"))

        if decode:
            key, value, mask = self._update_cache(key, value, mask)

        if bias is not None:
            bias = bias.astype(jnp.float32)
        if mask is not None:
            mask_bias = jnp.where(mask, 0.0, NEG_INF).astype(jnp.float32)
            bias = mask_bias if bias is None else bias + mask_bias

        fused = cfg.attention_implementation in ("dot_product", "cudnn") and not decode
        if fused and enable_dropout and cfg.dropout_rate > 0:
            raise ValueError(
                f"attention_implementation={cfg.attention_implementation!r} cannot apply "
                f"attention dropout (dropout_rate={cfg.dropout_rate}): "
                "jax.nn.dot_product_attention has no dropout. Train with "
                "attention_implementation='xla', or set dropout_rate=0 (the fused kernels are "
                "fine for evaluation and decoding)"
            )
        if fused:
            # T5: no 1/sqrt(head_dim) at call time (scale=1), the relative bias + mask added.
            out = jax.nn.dot_product_attention(
                query,
                key,
                value,
                bias=bias.astype(dtype) if bias is not None else None,
                scale=1.0,
                implementation="cudnn" if cfg.attention_implementation == "cudnn" else None,
            )
        else:
            logits = jnp.einsum("bqhx,bkhx->bhqk", query, key).astype(jnp.float32)
            if bias is not None:
                logits = logits + bias
            weights = jax.nn.softmax(logits, axis=-1)
            if enable_dropout and cfg.dropout_rate > 0:
                weights = nn.Dropout(cfg.dropout_rate)(weights, deterministic=False)
            out = jnp.einsum("bhqk,bkhx->bqhx", weights.astype(dtype), value)
        out = constrain(out, ("batch", "length", "heads", "kv"))
        y = jnp.einsum("bqhx,hxd->bqd", out, wo.astype(dtype))
        return constrain(y, ("batch", "length", "embed"))

    def _update_cache(self, key: Array, value: Array, mask: Array | None):
        """Write this step's key/value at ``cache_index`` and attend over the cache.

        The first call (with the full target length) only creates the cache; later
        calls pass one token per row.
        """
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not initialized:
            return key, value, mask
        batch, max_length = cached_key.value.shape[:2]
        if key.shape[1] != 1:
            raise ValueError(f"decode=True expects one token per row, got length {key.shape[1]}")
        index = cache_index.value
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, (0, index, 0, 0))
        cached_value.value = jax.lax.dynamic_update_slice(
            cached_value.value, value, (0, index, 0, 0)
        )
        cache_index.value = index + 1
        visible = (jnp.arange(max_length) <= index)[None, None, None, :]  # [1, 1, 1, k]
        step_mask = jnp.broadcast_to(visible, (batch, 1, 1, max_length))
        if mask is not None:
            step_mask = step_mask & mask
        return cached_key.value, cached_value.value, step_mask


class MlpBlock(nn.Module):
    """Position-wise MLP: gated-GELU / gated-SiLU (T5 v1.1) or ReLU (T5 1.0, Switch).

    ``wi`` [d, f] (``wi_0``/``wi_1`` when gated) and ``wo`` [f, d]; dropout after the
    activation (T5's intermediate dropout).
    """

    config: ModelConfig
    d_ff: int | None = None
    dropout_rate: float | None = None

    @nn.compact
    def __call__(self, x: Array, *, enable_dropout: bool) -> Array:
        cfg = self.config
        dtype = dtype_of(cfg.dtype)
        pdtype = dtype_of(cfg.param_dtype)
        d_ff = self.d_ff or cfg.d_ff
        rate = cfg.dropout_rate if self.dropout_rate is None else self.dropout_rate
        init = nn.initializers.variance_scaling(cfg.init_scale, "fan_in", "normal")

        def dense(name: str, shape: tuple[int, int], axes: tuple[str, str]) -> Array:
            w = self.param(name, nn.with_logical_partitioning(init, axes), shape, pdtype)
            return w.astype(dtype)

        act, gated = activation(cfg.mlp_activation)
        if gated:
            gate = jnp.einsum(
                "bld,df->blf", x, dense("wi_0", (cfg.d_model, d_ff), ("embed", "mlp"))
            )
            lin = jnp.einsum("bld,df->blf", x, dense("wi_1", (cfg.d_model, d_ff), ("embed", "mlp")))
            hidden = act(gate) * lin
        else:
            hidden = act(
                jnp.einsum("bld,df->blf", x, dense("wi", (cfg.d_model, d_ff), ("embed", "mlp")))
            )
        hidden = constrain(hidden, ("batch", "length", "mlp"))
        if enable_dropout and rate > 0:
            hidden = nn.Dropout(rate)(hidden, deterministic=False)
        y = jnp.einsum("blf,fd->bld", hidden, dense("wo", (d_ff, cfg.d_model), ("mlp", "embed")))
        return constrain(y, ("batch", "length", "embed"))


def activation(name: str) -> tuple[Callable[[Array], Array], bool]:
    """The MLP nonlinearity for a config name, and whether the MLP is gated.

    gated-gelu uses GELU's tanh approximation, as T5 v1.1 ("gelu_new") does.
    """
    table: dict[str, tuple[Callable[[Array], Array], bool]] = {
        "gated-gelu": (partial(jax.nn.gelu, approximate=True), True),
        "gated-silu": (jax.nn.silu, True),
        "relu": (jax.nn.relu, False),
    }
    if name not in table:
        raise ValueError(f"unknown mlp_activation {name!r}; choose one of {sorted(table)}")
    return table[name]

"""The T5 / Switch encoder-decoder: encoder and decoder stacks and the full model.

Layer layout (pre-norm, T5): x + Dropout(Attention(RMSNorm(x))), then
x + Dropout(MLP(RMSNorm(x))), where MLP is a dense ``MlpBlock`` or, in the layers
``MoeConfig.is_sparse`` picks, a sparse ``MoeBlock`` (see ``flan_moe.model.moe``).

Parameter tree (names are stable: the Hugging Face converters and the freeze
regexes in ``flan_moe.training`` rely on them)::

  token_embedder/embedding                       [v, d]
  encoder/relpos_bias/rel_embedding              [buckets, h]
  encoder/layers_{i}/pre_attention_layer_norm/scale
  encoder/layers_{i}/attention/{query,key,value,out}
  encoder/layers_{i}/pre_mlp_layer_norm/scale
  encoder/layers_{i}/mlp/{wi_0,wi_1,wo} | {wi,wo}   (dense layers)
  encoder/layers_{i}/moe/...                     (sparse layers: router, experts)
  encoder/encoder_norm/scale
  decoder/relpos_bias/rel_embedding
  decoder/layers_{i}/{pre_self_attention_layer_norm,self_attention,
                      pre_cross_attention_layer_norm,encoder_decoder_attention,
                      pre_mlp_layer_norm,mlp|moe}
  decoder/decoder_norm/scale
  decoder/logits_dense/kernel                    [d, v] (untied head only)

With ``scan_layers=True`` the ``layers_{i}`` of a stack become
``blocks/layers_{j}`` with a leading [num_blocks] axis (``flan_moe.model.layer_stack``
converts either way); ``remat_policy`` wraps each layer in ``nn.remat``.

Sparse layers sow their router losses into the ``moe_losses`` collection and
their statistics into ``moe_metrics``; ``flan_moe.models`` collects them.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from flan_moe.model import layer_stack
from flan_moe.model.config import ModelConfig
from flan_moe.model.layers import (
    Embed,
    MlpBlock,
    MultiHeadAttention,
    RelativePositionBias,
    RMSNorm,
    attention_mask,
    constrain,
    dtype_of,
)

Array = jax.Array


def _dropout(x: Array, rate: float, enable_dropout: bool) -> Array:
    if enable_dropout and rate > 0:
        return nn.Dropout(rate)(x, deterministic=False)
    return x


def _norm(cfg: ModelConfig, name: str) -> RMSNorm:
    return RMSNorm(cfg.layer_norm_epsilon, cfg.dtype, cfg.param_dtype, name=name)


def _feed_forward_residual(
    cfg: ModelConfig, layer: int, x: Array, valid: Array, *, decoder: bool, enable_dropout: bool
) -> Array:
    """x + Dropout(FF(RMSNorm(x))), FF being the dense MLP or, where the config places
    one, the sparse MoE block (which also takes the padding mask)."""
    h = _norm(cfg, "pre_mlp_layer_norm")(x)
    if cfg.moe is not None and cfg.moe.is_sparse(layer, decoder=decoder):
        from flan_moe.model.moe import MoeBlock  # local: the MoE module imports layers

        h = MoeBlock(cfg, decoder=decoder, name="moe")(
            h, padding_mask=valid, enable_dropout=enable_dropout
        )
    else:
        h = MlpBlock(cfg, name="mlp")(h, enable_dropout=enable_dropout)
    return x + _dropout(h, cfg.dropout_rate, enable_dropout)


class EncoderLayer(nn.Module):
    """One encoder layer. Arrays are positional and flags are attributes, so the layer
    can be rematerialised (``nn.remat``) and scanned (``nn.scan``) as it is."""

    config: ModelConfig
    layer: int
    enable_dropout: bool = False

    @nn.compact
    def __call__(self, x: Array, mask: Array, bias: Array, valid: Array) -> Array:
        cfg, enable_dropout = self.config, self.enable_dropout
        h = _norm(cfg, "pre_attention_layer_norm")(x)
        h = MultiHeadAttention(cfg, name="attention")(
            h, h, mask=mask, bias=bias, enable_dropout=enable_dropout
        )
        x = x + _dropout(h, cfg.dropout_rate, enable_dropout)
        x = _feed_forward_residual(
            cfg, self.layer, x, valid, decoder=False, enable_dropout=enable_dropout
        )
        return constrain(x, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
    """One decoder layer (positional arrays, flags as attributes: see ``EncoderLayer``)."""

    config: ModelConfig
    layer: int
    enable_dropout: bool = False
    decode: bool = False

    @nn.compact
    def __call__(
        self,
        x: Array,
        encoded: Array,
        self_mask: Array | None,
        self_bias: Array,
        cross_mask: Array,
        valid: Array,
    ) -> Array:
        cfg, enable_dropout = self.config, self.enable_dropout
        h = _norm(cfg, "pre_self_attention_layer_norm")(x)
        h = MultiHeadAttention(cfg, name="self_attention")(
            h, h, mask=self_mask, bias=self_bias, enable_dropout=enable_dropout,
            decode=self.decode,
        )  # fmt: skip
        x = x + _dropout(h, cfg.dropout_rate, enable_dropout)
        h = _norm(cfg, "pre_cross_attention_layer_norm")(x)
        h = MultiHeadAttention(cfg, name="encoder_decoder_attention")(
            h, encoded, mask=cross_mask, bias=None, enable_dropout=enable_dropout
        )
        x = x + _dropout(h, cfg.dropout_rate, enable_dropout)
        x = _feed_forward_residual(
            cfg, self.layer, x, valid, decoder=True, enable_dropout=enable_dropout
        )
        return constrain(x, ("batch", "length", "embed"))


def _layer_class(cfg: ModelConfig, *, decoder: bool) -> type[nn.Module]:
    """The layer module, wrapped in ``nn.remat`` when the config asks for a policy."""
    cls = DecoderLayer if decoder else EncoderLayer
    if cfg.remat_policy == "none":
        return cls
    # Inside a scan the loop already keeps XLA from merging recomputation away.
    return nn.remat(
        cls, policy=layer_stack.remat_policy(cfg.remat_policy), prevent_cse=not cfg.scan_layers
    )


def _flags(cfg: ModelConfig, *, decoder: bool, enable_dropout: bool, decode: bool) -> dict:
    return {"enable_dropout": enable_dropout, **({"decode": decode} if decoder else {})}


class LayerBlock(nn.Module):
    """``size`` consecutive layers: the body ``nn.scan`` repeats (returns ``(x, None)``)."""

    config: ModelConfig
    decoder: bool
    size: int
    enable_dropout: bool = False
    decode: bool = False

    @nn.compact
    def __call__(self, x: Array, *args: Array | None) -> tuple[Array, None]:
        cls = _layer_class(self.config, decoder=self.decoder)
        flags = _flags(
            self.config, decoder=self.decoder, enable_dropout=self.enable_dropout,
            decode=self.decode,
        )  # fmt: skip
        for j in range(self.size):
            x = cls(self.config, j, name=f"layers_{j}", **flags)(x, *args)
        return x, None


def _run_layers(
    cfg: ModelConfig, x: Array, args: tuple, *, decoder: bool, enable_dropout: bool,
    decode: bool = False,
) -> Array:  # fmt: skip
    """The stack's layers, unrolled (``layers_{i}``) or scanned over blocks (``blocks``).

    Call from inside a compact method: the layers become children of the caller."""
    flags = _flags(cfg, decoder=decoder, enable_dropout=enable_dropout, decode=decode)
    n = layer_stack.num_layers(cfg, decoder=decoder)
    if not cfg.scan_layers:
        cls = _layer_class(cfg, decoder=decoder)
        for i in range(n):
            x = cls(cfg, i, name=f"layers_{i}", **flags)(x, *args)
        return x
    size = layer_stack.block_size(cfg, decoder=decoder)
    scanned = nn.scan(
        LayerBlock,
        variable_axes={name: 0 for name in layer_stack.SCANNED_COLLECTIONS},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,) * len(args),
        length=n // size,
        metadata_params={nn.PARTITION_NAME: layer_stack.LAYERS_AXIS},
    )
    x, _ = scanned(cfg, decoder, size, name=layer_stack.BLOCKS, **flags)(x, *args)
    return x


class Encoder(nn.Module):
    config: ModelConfig
    embedder: Embed

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        segment_ids: Array | None = None,
        *,
        enable_dropout: bool = False,
    ) -> Array:
        cfg = self.config
        valid = tokens > 0 if segment_ids is None else segment_ids > 0
        x = self.embedder(tokens)
        x = constrain(x, ("batch", "length", "embed"))
        x = _dropout(x, cfg.dropout_rate, enable_dropout)
        # Hugging Face lets padded queries attend to the real keys (mask_padded_queries=False).
        query_valid = valid if cfg.mask_padded_queries else jnp.ones_like(valid)
        mask = attention_mask(
            query_valid, valid, query_segment_ids=segment_ids, key_segment_ids=segment_ids
        )
        # Relative positions from row indices: inside a packed segment the offsets
        # equal the per-segment offsets, and the mask hides other segments.
        positions = jnp.arange(tokens.shape[1])
        bias = RelativePositionBias(
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
            cfg.num_heads,
            bidirectional=True,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            init_scale=cfg.init_scale,
            name="relpos_bias",
        )(positions, positions)
        x = _run_layers(cfg, x, (mask, bias, valid), decoder=False, enable_dropout=enable_dropout)
        x = _norm(cfg, "encoder_norm")(x)
        return _dropout(x, cfg.dropout_rate, enable_dropout)


class Decoder(nn.Module):
    config: ModelConfig
    embedder: Embed

    @nn.compact
    def __call__(
        self,
        encoded: Array,
        encoder_valid: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array | None = None,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        *,
        enable_dropout: bool = False,
        decode: bool = False,
    ) -> Array:
        cfg = self.config
        batch, length = decoder_input_tokens.shape
        relpos = RelativePositionBias(
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
            cfg.num_heads,
            bidirectional=False,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            init_scale=cfg.init_scale,
            name="relpos_bias",
        )
        if decode and self.has_variable("cache", "position"):
            # One token per row: position from the cache, keys are the whole cache.
            position = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
            key_positions = self.get_variable("cache", "key_positions")
            self_bias = relpos(position.value[None], key_positions)
            position.value = position.value + 1
            self_mask = None  # the cache masks keys after the current position
            valid = jnp.ones((batch, length), dtype=bool)
        else:
            if decode:  # cache creation pass (full length): remember the positions
                self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
                self.variable("cache", "key_positions", lambda: jnp.arange(length, dtype=jnp.int32))
            valid = self._valid_queries(
                decoder_input_tokens, decoder_target_tokens, decoder_segment_ids
            )
            positions = jnp.arange(length)
            self_bias = relpos(positions, positions)
            self_mask = attention_mask(
                valid,
                valid,
                query_segment_ids=decoder_segment_ids,
                key_segment_ids=decoder_segment_ids,
                causal=True,
            )
        cross_mask = attention_mask(
            valid,
            encoder_valid,
            query_segment_ids=decoder_segment_ids,
            key_segment_ids=encoder_segment_ids,
        )

        x = self.embedder(decoder_input_tokens)
        x = constrain(x, ("batch", "length", "embed"))
        x = _dropout(x, cfg.dropout_rate, enable_dropout)
        x = _run_layers(
            cfg, x, (encoded, self_mask, self_bias, cross_mask, valid), decoder=True,
            enable_dropout=enable_dropout, decode=decode,
        )  # fmt: skip
        x = _norm(cfg, "decoder_norm")(x)
        x = _dropout(x, cfg.dropout_rate, enable_dropout)
        return self._logits(x)

    def _valid_queries(
        self, input_tokens: Array, target_tokens: Array | None, segment_ids: Array | None
    ) -> Array:
        """[b, l] bool: the decoder positions that are real tokens (full-length pass)."""
        if segment_ids is not None:
            return segment_ids > 0
        if self.config.mask_padded_queries and target_tokens is not None:
            return target_tokens > 0
        # Hugging Face (no decoder_attention_mask, mask_padded_queries=False): causal
        # masking only; with right padding the real positions see the same keys either way.
        return jnp.ones(input_tokens.shape, dtype=bool)

    def _logits(self, x: Array) -> Array:
        """Float32 output logits [b, l, v]: the tied embedding or the ``logits_dense`` head."""
        cfg = self.config
        if cfg.tie_embeddings:
            # T5 1.0: reuse the embedding, rescaled by 1/sqrt(d_model).
            logits = self.embedder.attend(x.astype(jnp.float32) * (cfg.d_model**-0.5))
        else:
            kernel = self.param(
                "logits_dense",
                nn.with_logical_partitioning(
                    nn.initializers.variance_scaling(cfg.init_scale, "fan_in", "normal"),
                    ("embed", "vocab"),
                ),
                (cfg.d_model, cfg.vocab_size),
                dtype_of(cfg.param_dtype),
            )
            # Float32 output projection whatever the compute dtype (t5x's output_logits
            # DenseGeneral has dtype='float32'): scores and losses read these logits.
            logits = jnp.einsum("bld,dv->blv", x.astype(jnp.float32), kernel.astype(jnp.float32))
        logits = constrain(logits, ("batch", "length", "vocab"))
        return logits.astype(jnp.float32)


class EncoderDecoder(nn.Module):
    """T5 v1.1 / T5 1.0 / Switch encoder-decoder (selected by ``ModelConfig``).

    ``__call__`` is the teacher-forced forward pass returning float32 logits
    [batch, target_length, vocab]. For autoregressive decoding, call ``decode`` with
    ``decode=True``: first once with full-length dummy decoder inputs under
    ``mutable=["cache"]`` to create the cache, then one token per call.
    """

    config: ModelConfig

    def setup(self) -> None:
        cfg = self.config
        self.token_embedder = Embed(cfg.vocab_size, cfg.d_model, cfg.dtype, cfg.param_dtype)
        self.encoder = Encoder(cfg, self.token_embedder)
        self.decoder = Decoder(cfg, self.token_embedder)

    def encode(
        self,
        encoder_input_tokens: Array,
        encoder_segment_ids: Array | None = None,
        *,
        enable_dropout: bool = False,
    ) -> Array:
        return self.encoder(
            encoder_input_tokens, encoder_segment_ids, enable_dropout=enable_dropout
        )

    def decode(
        self,
        encoded: Array,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array | None = None,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        *,
        enable_dropout: bool = False,
        decode: bool = False,
    ) -> Array:
        encoder_valid = (
            encoder_input_tokens > 0 if encoder_segment_ids is None else encoder_segment_ids > 0
        )
        return self.decoder(
            encoded,
            encoder_valid,
            decoder_input_tokens,
            decoder_target_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            enable_dropout=enable_dropout,
            decode=decode,
        )

    def __call__(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        decoder_target_tokens: Array | None = None,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        decoder_positions: Array | None = None,
        *,
        enable_dropout: bool = False,
    ) -> Array:
        # Positions are accepted for the packed-batch format; the relative attention
        # bias needs only offsets, which equal row-index offsets inside a segment.
        del encoder_positions, decoder_positions
        encoded = self.encode(
            encoder_input_tokens, encoder_segment_ids, enable_dropout=enable_dropout
        )
        return self.decode(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            decoder_target_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            enable_dropout=enable_dropout,
        )

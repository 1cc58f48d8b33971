"""Parity with Hugging Face ``SwitchTransformersForConditionalGeneration`` on random weights.

Needs transformers with the fix of issue 48293 (PR 48421; 5.23.0 has it): before it,
HF's router returned probabilities as "logits" (wrong z-loss) and applied the expert
capacity over nothing (no dropping). The z-loss and dropping cases below fail on a
transformers without the fix.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration  # noqa: E402
from transformers.models.switch_transformers import modeling_switch_transformers as hf_switch  # noqa: E402

from flan_moe.interop.hf_switch import config_from_hf_switch, params_from_hf_switch  # noqa: E402
from flan_moe.model.moe import collect_moe_metrics, collect_router_losses  # noqa: E402
from flan_moe.model.transformer import EncoderDecoder  # noqa: E402

# Encoder: 2 layers, 1 sparse (layer 1). Decoder: 4 layers, 2 sparse (layers 1, 3).
HF_CONFIG = dict(
    vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=2,
    num_sparse_encoder_layers=1, num_decoder_layers=4, num_sparse_decoder_layers=2,
    num_experts=4, expert_capacity=16, router_jitter_noise=0.0, dropout_rate=0.0,
    router_z_loss_coef=0.001, router_aux_loss_coef=0.01,
)  # fmt: skip


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    hf_config = SwitchTransformersConfig(**HF_CONFIG)
    hf = SwitchTransformersForConditionalGeneration(hf_config).eval()
    state = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    config = config_from_hf_switch(hf_config, dtype="float32")
    params = params_from_hf_switch(state, config)
    rng = np.random.default_rng(0)
    enc = rng.integers(2, 64, (2, 10))
    tgt = rng.integers(2, 64, (2, 7))
    dec_in = np.concatenate([np.zeros((2, 1), np.int64), tgt[:, :-1]], 1)
    return hf, config, params, (enc, tgt, dec_in)


def _apply(config, params, enc, tgt, dec_in):
    model = EncoderDecoder(config)
    apply = jax.jit(
        lambda p, *a: model.apply({"params": p}, *a, mutable=["moe_losses", "moe_metrics"])
    )
    return apply(params, jnp.asarray(enc), jnp.asarray(dec_in), jnp.asarray(tgt))


def _ours(config, params, enc, tgt, dec_in):
    logits, state = _apply(config, params, enc, tgt, dec_in)
    combination = config.moe.router_loss_combination
    return np.asarray(logits), collect_router_losses(state["moe_losses"], combination=combination)


def _hf(hf, enc, dec_in):
    with torch.no_grad():
        return hf(
            input_ids=torch.tensor(enc),
            decoder_input_ids=torch.tensor(dec_in),
            output_router_logits=True,
        )


def test_config_mapping_matches_hf_sparse_placement():
    for layers, sparse in [(4, 2), (6, 3), (4, 4), (8, 2), (5, 1)]:
        hf_config = SwitchTransformersConfig(
            vocab_size=8, d_model=4, d_kv=2, d_ff=4, num_heads=1, num_experts=2,
            num_layers=layers, num_sparse_encoder_layers=sparse,
            num_decoder_layers=layers, num_sparse_decoder_layers=sparse,
        )  # fmt: skip
        hf = SwitchTransformersForConditionalGeneration(hf_config)
        config = config_from_hf_switch(hf_config)
        for decoder, stack in ((False, hf.encoder), (True, hf.decoder)):
            hf_sparse = [
                isinstance(b.layer[-1].mlp, hf_switch.SwitchTransformersSparseMLP)
                for b in stack.block
            ]
            ours = [config.moe.is_sparse(i, decoder=decoder) for i in range(layers)]
            assert ours == hf_sparse, (layers, sparse, decoder)
        step = hf_config.encoder_sparse_step
        if step > 1:  # and the interval / offset form of MoeConfig says the same
            interval = config.moe.replace(
                encoder_sparse_layers=None, sparse_interval=step, sparse_offset=1
            )
            assert [interval.is_sparse(i, decoder=False) for i in range(layers)] == ours


def test_logits_and_router_losses_equal_hf(models):
    hf, config, params, (enc, tgt, dec_in) = models
    out = _hf(hf, enc, dec_in)
    logits, losses = _ours(config, params, enc, tgt, dec_in)
    np.testing.assert_allclose(logits, out.logits.numpy(), rtol=1e-4, atol=1e-4)
    assert out.logits.abs().max() > 1.0  # not a trivially small output
    # Encoder (one sparse layer): both losses equal HF's stack losses.
    np.testing.assert_allclose(
        float(losses["encoder/load_balancing_loss"]), float(out.encoder_aux_loss), rtol=1e-5
    )
    np.testing.assert_allclose(
        float(losses["encoder/router_z_loss"]), float(out.encoder_z_loss), rtol=1e-5
    )
    # Decoder (two sparse layers): the z-loss mean equals HF's pooled z-loss, and the
    # stack-pooled balancing loss equals HF's (which concatenates the layers' logits);
    # each layer's own loss equals HF's loss function on that layer's router logits.
    assert config.moe.load_balancing_pooling == "stack"
    np.testing.assert_allclose(
        float(losses["decoder/router_z_loss"]), float(out.decoder_z_loss), rtol=1e-5
    )
    np.testing.assert_allclose(
        float(losses["decoder/load_balancing_loss"]), float(out.decoder_aux_loss), rtol=1e-5
    )
    per_layer = []
    for layer, logits_hf in zip((1, 3), out.decoder_router_logits):
        ref = hf_switch.load_balancing_loss_func(torch.softmax(logits_hf, -1), logits_hf.argmax(-1))
        per_layer.append(float(ref))
        np.testing.assert_allclose(
            float(losses[f"decoder/layers_{layer}/load_balancing_loss"]), float(ref), rtol=1e-5
        )
    # Pooling matters here: HF's stack loss is not the mean of its layers' losses.
    assert abs(float(out.decoder_aux_loss) - np.mean(per_layer)) > 1e-4
    # The total loss terms, combined as HF does (sum of the stack values).
    hf_z = float(out.encoder_z_loss + out.decoder_z_loss)
    np.testing.assert_allclose(float(losses["router_z_loss"]), hf_z, rtol=1e-5)
    hf_aux = float(out.encoder_aux_loss + out.decoder_aux_loss)
    np.testing.assert_allclose(float(losses["load_balancing_loss"]), hf_aux, rtol=1e-5)


def test_logits_equal_hf_when_tokens_are_dropped(models):
    hf, config, params, (enc, tgt, dec_in) = models
    capacity = 2  # 10 encoder / 7 decoder tokens per sequence over 4 experts: overflow
    routers = [m for m in hf.modules() if isinstance(m, hf_switch.SwitchTransformersTop1Router)]
    try:
        for router in routers:
            router.expert_capacity = capacity
        out = _hf(hf, enc, dec_in)
    finally:
        for router in routers:
            router.expert_capacity = HF_CONFIG["expert_capacity"]
    dropping = config.replace(moe=config.moe.replace(min_expert_capacity=capacity))
    logits, state = _apply(dropping, params, enc, tgt, dec_in)
    assert float(collect_moe_metrics(state["moe_metrics"])["fraction_dropped"]) > 0.1
    np.testing.assert_allclose(np.asarray(logits), out.logits.numpy(), rtol=1e-4, atol=1e-4)


def test_router_losses_equal_hf_with_padded_inputs(models):
    """HF's padded encoder positions attend to the real tokens, its decoder masks causally
    only, and it counts padded tokens in the router losses: with that convention
    (mask_padded_queries=False) both stacks' losses match. (With t5x's, True, only these
    padded-position losses differ.)"""
    hf, config, params, (enc, tgt, dec_in) = models
    assert config.mask_padded_queries is False
    enc, tgt = enc.copy(), tgt.copy()
    enc[1, 6:] = 0
    tgt[1, 5:] = 0  # padded targets: HF masks the decoder causally only
    dec_in = np.concatenate([np.zeros((2, 1), np.int64), tgt[:, :-1]], 1)
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc > 0),
            decoder_input_ids=torch.tensor(dec_in),
            output_router_logits=True,
        )
    logits, losses = _ours(config, params, enc, tgt, dec_in)
    np.testing.assert_allclose(logits, out.logits.numpy(), rtol=1e-4, atol=1e-4)
    for stack in ("encoder", "decoder"):
        np.testing.assert_allclose(
            float(losses[f"{stack}/load_balancing_loss"]),
            float(getattr(out, f"{stack}_aux_loss")),
            rtol=1e-5,
        )
        np.testing.assert_allclose(
            float(losses[f"{stack}/router_z_loss"]),
            float(getattr(out, f"{stack}_z_loss")),
            rtol=1e-5,
        )
    # The t5x convention changes only the padded positions: same real logits, other losses.
    t5x_style = config.replace(mask_padded_queries=True)
    logits_t5x, losses_t5x = _ours(t5x_style, params, enc, tgt, dec_in)
    real = tgt > 0  # padded target positions are masked differently (never in the loss)
    np.testing.assert_allclose(logits_t5x[real], logits[real], rtol=1e-5, atol=1e-5)
    assert abs(float(losses_t5x["encoder/router_z_loss"]) - float(out.encoder_z_loss)) > 1e-3

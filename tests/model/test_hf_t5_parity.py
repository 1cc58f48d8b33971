"""Parity with Hugging Face transformers' T5 on identical random weights (float32)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need requirements-dev.txt (torch)")
transformers = pytest.importorskip("transformers")

from flan_moe.interop.hf_t5 import config_from_hf_t5, load_hf_t5, params_from_hf_t5  # noqa: E402
from flan_moe.model.transformer import EncoderDecoder  # noqa: E402

SMALL = dict(
    vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
    num_heads=4, relative_attention_num_buckets=32, relative_attention_max_distance=128,
    dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
)  # fmt: skip


def _hf_model(feed_forward_proj: str, tie: bool, seed: int):
    torch.manual_seed(seed)
    config = transformers.T5Config(
        feed_forward_proj=feed_forward_proj, tie_word_embeddings=tie, **SMALL
    )
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # larger than HF's init so differences show
            p.normal_(0.0, 0.5)
        if not tie:
            # Transformers v5 ties lm_head to the embedding at construction; a real
            # v1.1 checkpoint has its own head, so give it distinct weights.
            model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight))
    return model


def _inputs(seed: int):
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, SMALL["vocab_size"], (2, 11))
    enc[1, 8:] = 0  # padding in the second row
    tgt = rng.integers(2, SMALL["vocab_size"], (2, 7))
    dec_in = np.concatenate([np.zeros((2, 1), np.int64), tgt[:, :-1]], axis=1)
    return enc, dec_in, tgt


def _state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "proj, tie",
    [("gated-gelu", False), ("relu", True)],
    ids=["t5_v1_1_gated_gelu_untied", "t5_1_0_relu_tied"],
)
def test_logits_match_hugging_face(proj, tie):
    model = _hf_model(proj, tie, seed=0)
    enc, dec_in, tgt = _inputs(1)
    with torch.no_grad():
        ref = model(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc > 0),
            decoder_input_ids=torch.tensor(dec_in),
        ).logits.numpy()

    config = config_from_hf_t5(model.config, dtype="float32")
    assert config.tie_embeddings == tie
    assert config.mlp_activation == proj
    params = params_from_hf_t5(_state_dict(model), config)
    ours = np.asarray(EncoderDecoder(config).apply({"params": params}, enc, dec_in, tgt))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_load_hf_folder_roundtrip(tmp_path):
    model = _hf_model("gated-gelu", False, seed=3)
    model.save_pretrained(tmp_path)
    params, config = load_hf_t5(str(tmp_path), dtype="float32")
    expected = params_from_hf_t5(_state_dict(model), config)
    np.testing.assert_array_equal(
        params["decoder"]["logits_dense"], expected["decoder"]["logits_dense"]
    )
    assert not config.tie_embeddings


def test_converter_rejects_wrong_shapes():
    model = _hf_model("relu", True, seed=0)
    config = config_from_hf_t5(model.config).replace(d_ff=64)
    with pytest.raises(ValueError, match="expected shape"):
        params_from_hf_t5(_state_dict(model), config)

"""HF folders in the formats users have: pytorch_model.bin (transformers < 5 wrote it) and
T5 1.0's tied, scaled head; exported back with transformers' float32 logits."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flan_moe.interop.hf_export import export_hf, hf_config_dict  # noqa: E402
from flan_moe.interop.hf_t5 import load_hf_t5  # noqa: E402
from flan_moe.model.config import get_config  # noqa: E402
from flan_moe.model.transformer import EncoderDecoder  # noqa: E402


def _logits(model, enc, dec_in):
    with torch.no_grad():
        return model(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc > 0),
            decoder_input_ids=torch.tensor(dec_in),
        ).logits.numpy()


@pytest.mark.slow  # ~20 s on 2 busy cores
def test_t5_1_0_pytorch_bin_imports_and_exports_with_equal_logits(tmp_path):
    config = transformers.T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        feed_forward_proj="relu", dropout_rate=0.0,
    )  # fmt: skip
    torch.manual_seed(2)
    hf = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.5)
    folder = tmp_path / "t5_1_0"
    hf.save_pretrained(folder)
    os.remove(folder / "model.safetensors")  # the pre-safetensors format instead
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")

    params, ours = load_hf_t5(str(folder))
    assert ours.tie_embeddings and ours.mlp_activation == "relu" and ours.dtype == "float32"
    rng = np.random.default_rng(3)
    enc = rng.integers(2, 64, (2, 8))
    enc[0, 5:] = 0
    tgt = rng.integers(2, 64, (2, 4))
    dec_in = np.concatenate([np.zeros((2, 1), np.int64), tgt[:, :-1]], axis=1)
    logits = np.asarray(EncoderDecoder(ours).apply({"params": params}, enc, dec_in, tgt))
    np.testing.assert_allclose(logits, _logits(hf, enc, dec_in), rtol=1e-4, atol=1e-4)

    out = export_hf(params, ours, str(tmp_path / "exported"))
    reloaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    assert reloaded.config.scale_decoder_outputs  # T5 1.0: tied and scaled
    np.testing.assert_allclose(logits, _logits(reloaded, enc, dec_in), rtol=1e-4, atol=1e-4)


def test_export_refuses_routing_hf_cannot_express():
    # t5x-style Switch: groups across sequences and a capacity factor, which HF lacks
    with pytest.raises(ValueError, match="differ from Hugging Face Switch routing"):
        hf_config_dict(get_config("switch_tiny_8"))
    with pytest.raises(ValueError, match="differ from Hugging Face Switch routing"):
        hf_config_dict(get_config("gs_tiny").replace(mlp_activation="relu"))

"""A T5X checkpoint written with tensorstore in t5x's layout loads to the same logits as
the same weights given as a dict, and as transformers' model on those weights.

The test writes the layout of t5x/checkpoints.py (``Checkpointer.save``: msgpack
``checkpoint`` with ``{"version": 3, "optimizer": {"target": ..., "state": ...}}``, large
arrays as zarr arrays named ``target.<param path with dots>`` referenced by TensorStore
specs, small ones inline), with flaxformer's parameter names as transformers'
``convert_t5x_checkpoint_to_pytorch.py`` reads them (the inverse mapping is written out
here, independently of flan_moe.interop.t5x).
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
ts = pytest.importorskip("tensorstore")

from flax import serialization, traverse_util  # noqa: E402

from flan_moe.interop.hf_t5 import config_from_hf_t5  # noqa: E402
from flan_moe.interop.start import detect_format  # noqa: E402
from flan_moe.interop.t5x import load_t5x, params_from_t5x  # noqa: E402
from flan_moe.model.transformer import EncoderDecoder  # noqa: E402

SMALL = dict(
    vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, dropout_rate=0.0,
    feed_forward_proj="gated-gelu", decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
)  # fmt: skip


def _t5x_names(sd, num_layers):
    """HF T5 v1.1 state dict -> flaxformer names (convert_t5x_checkpoint_to_pytorch, inverted)."""
    out = {"token_embedder/embedding": sd["shared.weight"]}
    for stack, subs in (
        ("encoder", [("0.SelfAttention", "attention", "pre_attention_layer_norm")]),
        (
            "decoder",
            [
                ("0.SelfAttention", "self_attention", "pre_self_attention_layer_norm"),
                (
                    "1.EncDecAttention",
                    "encoder_decoder_attention",
                    "pre_cross_attention_layer_norm",
                ),
            ],
        ),
    ):
        ff = 1 if stack == "encoder" else 2
        for i in range(num_layers):
            hf, t = f"{stack}.block.{i}.layer", f"{stack}/layers_{i}"
            for index, (hf_sub, t_sub, norm) in enumerate(subs):
                out[f"{t}/{norm}/scale"] = sd[f"{hf}.{index}.layer_norm.weight"]
                for a, b in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out")):
                    out[f"{t}/{t_sub}/{b}/kernel"] = sd[f"{hf}.{hf_sub}.{a}.weight"].T
            out[f"{t}/pre_mlp_layer_norm/scale"] = sd[f"{hf}.{ff}.layer_norm.weight"]
            for w in ("wi_0", "wi_1", "wo"):
                out[f"{t}/mlp/{w}/kernel"] = sd[f"{hf}.{ff}.DenseReluDense.{w}.weight"].T
        out[f"{stack}/relpos_bias/rel_embedding"] = sd[
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        ].T
        out[f"{stack}/{stack}_norm/scale"] = sd[f"{stack}.final_layer_norm.weight"]
    out["decoder/logits_dense/kernel"] = sd["lm_head.weight"].T
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def _write_t5x(directory, flat):
    """t5x's on-disk layout: 2-D arrays in zarr via tensorstore, 1-D ones inline."""
    os.makedirs(directory)
    target = {}
    for name, value in flat.items():
        if value.ndim < 2:
            target[name] = value
            continue
        path = f"target/{name}".replace("/", ".")
        spec = {
            "driver": "zarr",
            "dtype": "float32",
            "kvstore": {"driver": "file", "path": path},
            "metadata": {"shape": list(value.shape), "chunks": list(value.shape)},
        }
        absolute = {**spec, "kvstore": {"driver": "file", "path": os.path.join(directory, path)}}
        ts.open(absolute, create=True).result().write(value).result()
        target[name] = spec
    tree = traverse_util.unflatten_dict(target, sep="/")
    state = {"version": 3, "optimizer": {"target": tree, "state": {"step": np.int32(1000)}}}
    with open(os.path.join(directory, "checkpoint"), "wb") as f:
        f.write(serialization.msgpack_serialize(state))


def test_t5x_checkpoint_loads_to_the_logits_of_the_same_weights(tmp_path):
    torch.manual_seed(0)
    hf_config = transformers.T5Config(tie_word_embeddings=False, **SMALL)
    hf = transformers.T5ForConditionalGeneration(hf_config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.5)
        hf.lm_head.weight = torch.nn.Parameter(torch.randn_like(hf.shared.weight))
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    flat = _t5x_names(sd, SMALL["num_layers"])
    directory = str(tmp_path / "checkpoint_1000")
    _write_t5x(directory, flat)
    assert os.path.isdir(os.path.join(directory, "target.encoder.layers_0.attention.query.kernel"))
    assert detect_format(directory) == "t5x"

    config = config_from_hf_t5(hf_config)
    from_disk = load_t5x(directory, config)
    from_dict = params_from_t5x(flat, config)

    rng = np.random.default_rng(1)
    enc = rng.integers(2, 64, (2, 9))
    enc[1, 5:] = 0
    tgt = rng.integers(2, 64, (2, 5))
    dec_in = np.concatenate([np.zeros((2, 1), np.int64), tgt[:, :-1]], axis=1)
    model = EncoderDecoder(config)
    disk_logits = np.asarray(model.apply({"params": from_disk}, enc, dec_in, tgt))
    dict_logits = np.asarray(model.apply({"params": from_dict}, enc, dec_in, tgt))
    np.testing.assert_allclose(disk_logits, dict_logits, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        ref = hf(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc > 0),
            decoder_input_ids=torch.tensor(dec_in),
        ).logits.numpy()
    np.testing.assert_allclose(disk_logits, ref, rtol=1e-4, atol=1e-4)


def test_unknown_t5x_param_is_an_error():
    from flan_moe.interop.t5x import hf_state_dict_from_t5x

    with pytest.raises(ValueError, match="does not know"):
        hf_state_dict_from_t5x({"encoder/layers_0/adapter/kernel": np.zeros((2, 2))}, moe=False)


def test_vocabulary_check_names_both(tmp_path):
    from flan_moe.interop.start import (
        StartPoint,
        VocabularyMismatchError,
        check_vocabulary,
        vocabulary_fingerprint,
    )

    model = tmp_path / "a.model"
    model.write_bytes(b"sentencepiece bytes")
    copy = tmp_path / "copy.model"
    copy.write_bytes(b"sentencepiece bytes")
    start = StartPoint("/ckpt", "orbax", str(model), vocabulary_fingerprint(str(model)))
    check_vocabulary(start, str(copy))  # the same file elsewhere is the same vocabulary
    with pytest.raises(VocabularyMismatchError, match=r"a\.model.*'byte'"):
        check_vocabulary(start, "byte")
    check_vocabulary(StartPoint("/hf", "hf", "unrecorded", "unrecorded"), "byte")  # logged


def test_t5x_switch_checkpoint_matches_transformers(tmp_path):
    """MoE names (convert_switch_transformers_original_flax_checkpoint_to_pytorch):
    ``mlp/router/router_weights/w/kernel`` and stacked ``mlp/expert/{wi,wo}/kernel``."""
    from flan_moe.interop.hf_switch import config_from_hf_switch

    hf_config = transformers.SwitchTransformersConfig(
        vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=2,
        num_sparse_encoder_layers=1, num_decoder_layers=2, num_sparse_decoder_layers=1,
        num_experts=4, expert_capacity=16, router_jitter_noise=0.0, dropout_rate=0.0,
    )  # fmt: skip
    torch.manual_seed(4)
    hf = transformers.SwitchTransformersForConditionalGeneration(hf_config).eval()
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    flat = {"token_embedder/embedding": sd["shared.weight"]}
    for stack, ff, subs in (
        ("encoder", 1, [("0.SelfAttention", "attention", "pre_attention_layer_norm")]),
        (
            "decoder",
            2,
            [
                ("0.SelfAttention", "self_attention", "pre_self_attention_layer_norm"),
                (
                    "1.EncDecAttention",
                    "encoder_decoder_attention",
                    "pre_cross_attention_layer_norm",
                ),
            ],
        ),
    ):
        for i in range(2):
            h, t = f"{stack}.block.{i}.layer", f"{stack}/layers_{i}"
            for index, (hf_sub, t_sub, norm) in enumerate(subs):
                flat[f"{t}/{norm}/scale"] = sd[f"{h}.{index}.layer_norm.weight"]
                for a, b in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "out")):
                    flat[f"{t}/{t_sub}/{b}/kernel"] = sd[f"{h}.{hf_sub}.{a}.weight"].T
            flat[f"{t}/pre_mlp_layer_norm/scale"] = sd[f"{h}.{ff}.layer_norm.weight"]
            mlp = f"{h}.{ff}.mlp"
            if f"{mlp}.router.classifier.weight" in sd:
                flat[f"{t}/mlp/router/router_weights/w/kernel"] = sd[
                    f"{mlp}.router.classifier.weight"
                ].T
                for w in ("wi", "wo"):
                    flat[f"{t}/mlp/expert/{w}/kernel"] = np.stack(
                        [sd[f"{mlp}.experts.expert_{j}.{w}.weight"].T for j in range(4)]
                    )
            else:
                for w in ("wi", "wo"):
                    flat[f"{t}/mlp/{w}/kernel"] = sd[f"{mlp}.{w}.weight"].T
        flat[f"{stack}/relpos_bias/rel_embedding"] = sd[
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        ].T
        flat[f"{stack}/{stack}_norm/scale"] = sd[f"{stack}.final_layer_norm.weight"]
    flat = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in flat.items()}
    directory = str(tmp_path / "checkpoint_1")
    _write_t5x(directory, flat)

    config = config_from_hf_switch(hf_config)
    params = load_t5x(directory, config)
    rng = np.random.default_rng(2)
    enc = rng.integers(2, 64, (2, 9))
    tgt = rng.integers(2, 64, (2, 5))
    dec_in = np.concatenate([np.zeros((2, 1), np.int64), tgt[:, :-1]], axis=1)
    logits = np.asarray(EncoderDecoder(config).apply({"params": params}, enc, dec_in, tgt))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(enc), decoder_input_ids=torch.tensor(dec_in)).logits
    np.testing.assert_allclose(logits, ref.numpy(), rtol=1e-4, atol=1e-4)

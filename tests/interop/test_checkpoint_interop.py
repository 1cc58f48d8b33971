"""Starting points and export: HF folders (v5-saved T5 v1.1, Switch) and T5X checkpoints
as INITIAL_CHECKPOINT_PATH, export back to HF with transformers' float32 logits, and the
vocabulary record + mismatch check."""

import json
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="interop tests need requirements-dev.txt (torch)")
transformers = pytest.importorskip("transformers")

from flan_moe import partitioning  # noqa: E402
from flan_moe.interop.hf_export import export_hf  # noqa: E402
from flan_moe.interop.start import (  # noqa: E402
    VocabularyMismatchError,
    detect_format,
    read_start,
)
from flan_moe.model.transformer import EncoderDecoder  # noqa: E402
from flan_moe.training.checkpoints import load_params  # noqa: E402
from flan_moe.training.loop import TrainConfig, train  # noqa: E402
from flan_moe.training.optimizers import OptimizerConfig  # noqa: E402
from flan_moe.training.synthetic import synthetic_batches  # noqa: E402
from tests.interop.test_hf_folders import _logits as hf_logits  # noqa: E402

T5_SMALL = dict(
    vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2,
    num_heads=4, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
)  # fmt: skip
SWITCH_SMALL = dict(
    vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_heads=4, num_layers=2,
    num_sparse_encoder_layers=1, num_decoder_layers=2, num_sparse_decoder_layers=1,
    num_experts=4, expert_capacity=16, router_jitter_noise=0.0, dropout_rate=0.0,
)  # fmt: skip
LENGTHS = {"inputs": 10, "targets": 6}
OPT = OptimizerConfig(name="adafactor", schedule="constant", learning_rate=0.05)


def _randomize(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def t5_v11_folder(tmp_path_factory):
    """T5 v1.1 as transformers 5.23 saves it: head tied to `shared`, no lm_head.weight."""
    path = str(tmp_path_factory.mktemp("t5_v11"))
    config = transformers.T5Config(
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, **T5_SMALL
    )
    model = _randomize(transformers.T5ForConditionalGeneration(config), 0)
    model.save_pretrained(path)
    with open(os.path.join(path, "config.json")) as f:
        assert json.load(f)["tie_word_embeddings"] is True  # v5 writes it tied...
    from safetensors.numpy import load_file

    assert "lm_head.weight" not in load_file(os.path.join(path, "model.safetensors"))
    return path


@pytest.fixture(scope="module")
def switch_folder(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("switch"))
    config = transformers.SwitchTransformersConfig(**SWITCH_SMALL)
    _randomize(transformers.SwitchTransformersForConditionalGeneration(config), 1).save_pretrained(
        path
    )
    return path


def _inputs():
    rng = np.random.default_rng(5)
    enc = rng.integers(2, 64, (2, 9))
    enc[1, 6:] = 0
    tgt = rng.integers(2, 64, (2, 5))
    dec_in = np.concatenate([np.zeros((2, 1), np.int64), tgt[:, :-1]], axis=1)
    return enc, dec_in, tgt


def _hf_logits(folder):
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    enc, dec_in, _ = _inputs()
    return hf_logits(model, enc, dec_in)


def _our_logits(params, config):
    enc, dec_in, tgt = _inputs()
    return np.asarray(EncoderDecoder(config).apply({"params": params}, enc, dec_in, tgt))


def _train_two_steps(folder, model_dir, config):
    mesh = partitioning.make_mesh(data=1, devices=jax.devices()[:1])
    return train(
        model_config=config,
        train_config=TrainConfig(train_steps=2, batch_size=4, checkpoint_every=2),
        optimizer_config=OPT,
        iterator_factory=lambda start: synthetic_batches(
            batch_size=4, feature_lengths=LENGTHS, vocab_size=64, seed=0, start_step=start
        ),
        model_dir=str(model_dir),
        mesh=mesh,
        initial_checkpoint_path=folder,
        run_metadata={"vocabulary": "byte", "task_feature_lengths": LENGTHS},
    )


@pytest.mark.slow  # compiles a train step per model (~1 min on 2 busy cores)
@pytest.mark.parametrize("which", ["t5_v11_folder", "switch_folder"])
def test_hf_folder_trains_two_steps_and_exports_with_equal_logits(which, request, tmp_path):
    folder = request.getfixturevalue(which)
    assert detect_format(folder) == "hf"
    params, config, start = read_start(folder)
    assert config.dtype == "float32"  # converters default to float32
    # The imported model gives transformers' logits (padded inputs included).
    np.testing.assert_allclose(
        _our_logits(params, config), _hf_logits(folder), rtol=1e-4, atol=1e-4
    )

    result = _train_two_steps(folder, tmp_path / "run", config)
    assert (result.start_step, result.end_step) == (0, 2)  # params only: starts at step 0
    with open(tmp_path / "run" / "initial_checkpoint.json") as f:
        record = json.load(f)
    assert record["format"] == "hf" and record["path"] == os.path.abspath(folder)
    trained, trained_config, metadata = load_params(str(tmp_path / "run"))
    assert metadata["initial_checkpoint"]["format"] == "hf"
    assert metadata["vocabulary_fingerprint"] == "byte"
    moved = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda a, b: np.abs(np.asarray(a) - b).max(), trained, params)
    )
    assert max(moved) > 1e-3  # the two steps changed the weights

    exported = export_hf(trained, trained_config, str(tmp_path / "hf_out"))
    np.testing.assert_allclose(
        _our_logits(trained, trained_config), _hf_logits(exported), rtol=1e-4, atol=1e-4
    )


@pytest.mark.slow
def test_vocabulary_mismatch_names_both(t5_v11_folder, tmp_path):
    params, config, _ = read_start(t5_v11_folder)
    first = _train_two_steps(t5_v11_folder, tmp_path / "a", config)
    assert first.end_step == 2
    other = tmp_path / "other.model"
    other.write_bytes(b"not the byte vocabulary")
    mesh = partitioning.make_mesh(data=1, devices=jax.devices()[:1])
    with pytest.raises(VocabularyMismatchError, match=r"'byte'.*other\.model"):
        train(
            model_config=config,
            train_config=TrainConfig(train_steps=1, batch_size=4),
            optimizer_config=OPT,
            iterator_factory=lambda start: iter(()),
            model_dir=str(tmp_path / "b"),
            mesh=mesh,
            initial_checkpoint_path=str(tmp_path / "a"),
            run_metadata={"vocabulary": str(other)},
        )


@pytest.mark.slow
def test_convert_cli_hf_to_orbax_to_hf(switch_folder, tmp_path):
    from flan_moe.cli import convert

    with pytest.raises(SystemExit, match="records no vocabulary"):
        convert.main(["--source", switch_folder, "--output", str(tmp_path / "x")])
    out = convert.main(
        ["--source", switch_folder, "--output", str(tmp_path / "orbax"), "--vocabulary", "byte"]
    )
    assert os.path.basename(out) == "checkpoint_0"
    params, config, metadata = load_params(str(tmp_path / "orbax"))
    assert metadata["vocabulary"] == "byte" and metadata["initial_checkpoint"]["format"] == "hf"
    expected, _, _ = read_start(switch_folder)
    np.testing.assert_allclose(
        _our_logits(params, config), _our_logits(expected, config), atol=1e-6
    )
    hf_dir = convert.main(
        ["--source", str(tmp_path / "orbax"), "--output", str(tmp_path / "hf"), "--to", "hf"]
    )
    np.testing.assert_allclose(
        _our_logits(params, config), _hf_logits(hf_dir), rtol=1e-4, atol=1e-4
    )

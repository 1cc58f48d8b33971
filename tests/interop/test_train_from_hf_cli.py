"""The training CLI starts from a HF folder: INITIAL_CHECKPOINT_PATH + MODEL_NAME =
"from_initial_checkpoint" (the folder's converted config), 2 steps from step 0."""

import json
import os

import gin
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flan_moe.cli import train as train_cli  # noqa: E402
from flan_moe.training.checkpoints import load_params  # noqa: E402


@pytest.mark.slow
def test_train_cli_starts_from_a_v5_saved_t5_v1_1_folder(tmp_path):
    config = transformers.T5Config(
        vocab_size=260, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
    )  # fmt: skip
    folder = str(tmp_path / "hf")
    transformers.T5ForConditionalGeneration(config).save_pretrained(folder)
    model_dir = str(tmp_path / "run")
    try:
        result = train_cli.main(
            [
                "--gin_file=gin_configs/models/t5_1_1_tiny.gin",
                "--gin_file=gin_configs/runs/pretrain.gin",
                "--gin.MODEL_NAME='from_initial_checkpoint'",
                f"--gin.INITIAL_CHECKPOINT_PATH='{folder}'",
                f"--gin.MODEL_DIR='{model_dir}'",
                "--gin.TRAIN_STEPS=2",
                '--gin.TASK_FEATURE_LENGTHS={"inputs": 12, "targets": 6}',
                "--gin.BATCH_SIZE=8",
            ]
        )
    finally:
        gin.clear_config()
    assert (result.start_step, result.end_step) == (0, 2)
    _, trained_config, metadata = load_params(model_dir)
    assert trained_config.d_model == 32 and trained_config.mask_padded_queries is False
    assert metadata["initial_checkpoint"]["path"] == os.path.abspath(folder)
    with open(os.path.join(model_dir, "initial_checkpoint.json")) as f:
        assert json.load(f)["format"] == "hf"

"""The training CLI end to end (in-process): train, checkpoint, resume; gin flag parsing."""

import json
import os

import gin
import pytest

from flan_moe.cli import train as train_cli
from flan_moe.cli.gin_flags import gin_value, split_gin_flags
from flan_moe.training.checkpoints import list_checkpoints, load_params

MODEL = "gin_configs/models/t5_1_1_tiny.gin"
RUN = "gin_configs/runs/pretrain.gin"


def test_gin_flag_splitting_and_values():
    flags, rest = split_gin_flags(
        [
            "--gin_file=a.gin",
            "--gin_file",
            "b.gin",
            "--gin.MODEL_DIR=/tmp/x",
            "--gin.TRAIN_STEPS=50",
            '--gin.TASK_FEATURE_LENGTHS={"inputs": 8}',
            "--gin.OptimizerConfig.name=adamw",
            "--gin.X=%Y",
            "--gin_search_paths=d1,d2",
            "--multihost",
        ]
    )
    assert flags.gin_files == ["a.gin", "b.gin"]
    assert flags.search_paths == ["d1", "d2"]
    assert flags.bindings == [
        "MODEL_DIR = '/tmp/x'",
        "TRAIN_STEPS = 50",
        'TASK_FEATURE_LENGTHS = {"inputs": 8}',
        "OptimizerConfig.name = 'adamw'",
        "X = %Y",
    ]
    assert rest == ["--multihost"]
    assert gin_value("1e-3") == "1e-3" and gin_value("None") == "None"


def _args(model_dir, steps, *extra):
    return [
        f"--gin_file={MODEL}",
        f"--gin_file={RUN}",
        f"--gin.MODEL_DIR={model_dir}",
        f"--gin.TRAIN_STEPS={steps}",
        '--gin.TASK_FEATURE_LENGTHS={"inputs": 12, "targets": 6}',
        "--gin.BATCH_SIZE=8",
        "--gin.TrainConfig.checkpoint_every=2",
        "--gin.TrainConfig.log_every=1",
        *extra,
    ]


def test_cli_trains_checkpoints_and_resumes(tmp_path):
    model_dir = str(tmp_path / "run")
    first = train_cli.main(_args(model_dir, 3))
    assert (first.start_step, first.end_step) == (0, 3)
    assert [s for s, _ in list_checkpoints(model_dir)] == [2, 3]
    second = train_cli.main(_args(model_dir, 5))  # TRAIN_STEPS: the absolute target step
    assert (second.start_step, second.end_step) == (3, 5)
    again = train_cli.main(_args(model_dir, 5))  # idempotent: nothing left to train
    assert (again.start_step, again.end_step) == (5, 5) and not again.stopped
    assert [s for s, _ in list_checkpoints(model_dir)][-1] == 5
    with open(os.path.join(model_dir, "config.gin")) as f:
        config_text = f.read()
    assert "MODEL_NAME = 'tiny'" in config_text and "TRAIN_STEPS = 5" in config_text
    assert os.path.exists(os.path.join(model_dir, "operative_config.gin"))
    with open(os.path.join(model_dir, "train", "metrics.jsonl")) as f:
        lines = f.read().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == [1, 2, 3, 4, 5]
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "run" / "train"))
    _, config, metadata = load_params(model_dir)
    assert config.name == "tiny" and metadata["vocabulary"] == "byte"
    assert metadata["task_feature_lengths"] == {"inputs": 12, "targets": 6}
    assert metadata["mixture_or_task_name"] == "synthetic"


def test_cli_missing_macro_is_a_clear_error():
    with pytest.raises(ValueError, match="MODEL_DIR is not set"):
        train_cli.main([f"--gin_file={MODEL}", f"--gin_file={RUN}", "--gin.TRAIN_STEPS=1"])
    gin.clear_config()


@pytest.mark.slow
def test_cli_trains_on_the_local_flan_mix(tmp_path):
    data_dir = os.environ.get("FLAN_MOE_DATA_DIR", "")
    if not os.path.isdir(data_dir):
        pytest.skip("FLAN_MOE_DATA_DIR does not point at the data (see WORKSPACE.md)")
    result = train_cli.main(
        _args(str(tmp_path / "flan"), 3, "--gin.MIXTURE_OR_TASK_NAME=flan_local")
    )
    assert result.end_step == 3
    assert result.history[-1]["num_real_target_tokens"] > 0

"""Noise that would worry a user is filtered; news still reaches them (issue 14, item 8)."""

import logging
import os

import pytest

from flan_moe.cli import quiet
from flan_moe.cli import train as train_cli
from flan_moe.training import checkpoints

TF_CPU_NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796160055.857546   21398 port.cc:153] oneDNN custom operations are on. "
    "You may see slightly different numerical results",
    "I0000 00:00:1796160055.864517   21398 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "I0000 00:00:1796160056.636674   21398 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.",
    "E0000 00:00:1796160345.184719   24116 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
]


def test_tensorflow_cpu_noise_is_dropped_and_other_lines_kept(capfd):
    news = "E0000 some_op.cc:1] Could not open the data file: Permission denied"
    with quiet.filtered_stderr():
        os.write(2, ("\n".join([*TF_CPU_NOISE[:3], news, *TF_CPU_NOISE[3:]]) + "\n").encode())
    err = capfd.readouterr().err
    assert err == news + "\n"


@pytest.mark.slow  # a fresh interpreter importing TensorFlow and SeqIO
def test_importing_tensorflow_prints_nothing():
    pytest.importorskip("tensorflow")
    import subprocess
    import sys

    code = "from flan_moe.cli.quiet import import_tensorflow_quietly as q; q(); import seqio"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr == ""


def test_orbax_read_only_note_is_dropped(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    manager = checkpoints._manager(str(tmp_path), read_only=True)
    manager.close()
    assert not [r for r in caplog.records if "read only" in r.getMessage()]
    assert not [r for r in caplog.records if "read_only=True" in r.getMessage()]
    logging.getLogger("absl").warning("something else from orbax")  # still shown
    assert "something else from orbax" in caplog.text


def test_train_help_shows_the_gin_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in (
        "--gin_file=PATH",
        "--gin.NAME=VALUE",
        "MODEL_DIR",
        "TRAIN_STEPS",
        "OptimizerConfig",
    ):
        assert text in out

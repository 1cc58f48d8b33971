"""``flan_moe.cli.eval --proxy``: with expert == antiexpert it scores exactly as the base."""

import os
from pathlib import Path

import pytest

from flan_moe.cli import eval as eval_cli
from flan_moe.cli import merge as merge_cli
from flan_moe.model.config import get_config
from flan_moe.model.transformer import EncoderDecoder
from tests.random_params import random_params

META = {"vocabulary": "byte", "task_feature_lengths": {"inputs": 64, "targets": 2}}


@pytest.fixture(scope="module")
def data_root() -> Path:
    root = Path(os.environ.get("FLAN_MOE_DATA_DIR", Path(__file__).parents[3] / "shared" / "data"))
    if not (root / "mmlu" / "val").is_dir():
        pytest.skip(f"real data not found at {root}: set FLAN_MOE_DATA_DIR")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cfg = get_config("tiny", dtype="float32")
    model = EncoderDecoder(cfg)
    root = tmp_path_factory.mktemp("runs")
    for name, seed in (("base", 0), ("tuned", 1)):
        merge_cli.write(random_params(model, seed), cfg, META, {"method": "test"}, str(root / name))
    meta = {**META, "vocabulary": "/elsewhere/spiece.model"}
    merge_cli.write(random_params(model, 2), cfg, meta, {"method": "test"}, str(root / "other"))
    return root


def common(data_root, out):
    return ["--suites=mmlu", "--method=score", "--subsample=1", f"--data_dir={data_root}",
            f"--output_dir={out}", "--no_progress"]  # fmt: skip


def test_proxy_with_equal_pair_scores_as_base(runs, data_root, tmp_path):
    spec = f"base={runs / 'base'},expert={runs / 'tuned'},antiexpert={runs / 'tuned'}"
    args = eval_cli.build_parser().parse_args(
        [f"--proxy={spec}", *common(data_root, tmp_path / "p")]
    )
    (proxy_entry,) = eval_cli.run(args)
    args = eval_cli.build_parser().parse_args(
        [f"--checkpoint_dir={runs / 'base'}", *common(data_root, tmp_path / "b")]
    )
    (base_entry,) = eval_cli.run(args)
    assert proxy_entry.key.checkpoint == "proxy_alpha1"
    assert proxy_entry.metadata["proxy"]["alpha"] == 1.0
    assert proxy_entry.summary == base_entry.summary
    pred = lambda e, d: (d / e.predictions_file).read_text()
    assert pred(proxy_entry, tmp_path / "p") == pred(base_entry, tmp_path / "b")


def test_proxy_vocabulary_mismatch_is_an_error(runs, data_root, tmp_path):
    spec = f"base={runs / 'base'},expert={runs / 'other'},antiexpert={runs / 'tuned'}"
    args = eval_cli.build_parser().parse_args([f"--proxy={spec}", *common(data_root, tmp_path)])
    with pytest.raises(SystemExit, match="one vocabulary"):
        eval_cli.run(args)

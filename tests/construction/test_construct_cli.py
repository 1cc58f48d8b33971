"""``flan_moe.cli.construct`` end to end: a dense orbax checkpoint -> an upcycled one whose
MMLU / BBH predictions before any training equal the dense model's (renormalised top-k,
dropless: the upcycling identity, lineage.md §1)."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from flan_moe.cli import construct as construct_cli
from flan_moe.cli import eval as eval_cli
from flan_moe.model.config import get_config
from flan_moe.model.transformer import EncoderDecoder
from flan_moe.training import checkpoints
from flan_moe.training.train_state import TrainState
from tests.random_params import random_params

DENSE = get_config("tiny", dtype="float32")


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("dense")
    saver = checkpoints.Checkpointer(str(directory), keep=None)
    state = TrainState(
        step=jnp.asarray(5, jnp.int32),
        params=random_params(EncoderDecoder(DENSE), 0),
        opt_state={"count": jnp.zeros((), jnp.int32)},
        rng=jnp.zeros((2,), jnp.uint32),
    )
    metadata = {"vocabulary": "byte", "task_feature_lengths": {"inputs": 96, "targets": 8},
                "model_config": DENSE.to_dict()}  # fmt: skip
    saver.save(state, data_position=0, metadata=metadata)
    saver.close()
    return directory


@pytest.fixture(scope="module")
def upcycled_dir(dense_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("upcycled") / "model"
    argv = [f"--checkpoint={dense_dir}", f"--output_dir={out}", "--method=upcycle", "--keep_step",
            "--num_experts=4", "--num_selected_experts=2", "--placement=all"]  # fmt: skip
    assert construct_cli.main(argv) == 0
    return out


def test_checkpoint_records_the_recipe_and_keeps_dense_weights(dense_dir, upcycled_dir):
    params, config, metadata = checkpoints.load_params(str(upcycled_dir))
    dense, _, _ = checkpoints.load_params(str(dense_dir))
    assert metadata["step"] == 5 and metadata["vocabulary"] == "byte"
    record = metadata["construction"]
    assert record["recipe"]["kind"] == "upcycle" and record["recipe"]["num_experts"] == 4
    assert record["source_step"] == 5 and record["optimizer_state"] == "fresh"
    assert config.moe.num_experts == 4 and config.moe.encoder_sparse_layers == (0, 1)
    for e in range(4):
        np.testing.assert_array_equal(
            params["decoder"]["layers_0"]["moe"]["experts"]["wo"][e],
            dense["decoder"]["layers_0"]["mlp"]["wo"],
        )
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        construct_cli.main([f"--checkpoint={dense_dir}", f"--output_dir={upcycled_dir}"])


def _predictions(out_dir: Path) -> dict[str, list]:
    found = {}
    for path in sorted(out_dir.glob("predictions/*/*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        found[path.name] = [(r["example_id"], r["output"], r["extracted"]) for r in rows]
    return found


@pytest.mark.slow  # two models x three evaluations: minutes on 2 busy CPU cores
def test_upcycled_checkpoint_predicts_like_the_dense_one_before_training(
    dense_dir, upcycled_dir, data_root, tmp_path
):
    runs = {}
    for name, directory in (("dense", dense_dir), ("upcycled", upcycled_dir)):
        out = tmp_path / name
        common = [f"--checkpoint_dir={directory}", f"--output_dir={out}", f"--data_dir={data_root}",
                  "--batch_size=32", "--no_progress", "--latest_only"]  # fmt: skip
        assert eval_cli.main([*common, "--suites=mmlu,bbh", "--mode=direct", "--method=score",
                              "--shots=0", "--subsample=2"]) in (0, None)  # fmt: skip
        cot = ["--mode=cot", "--method=generate", "--subsample=1", "--max_decode_length=6"]
        assert eval_cli.main([*common, "--suites=bbh", "--shots=0", *cot]) in (0, None)
        runs[name] = _predictions(out)
    assert len(runs["dense"]) == 3  # mmlu direct, bbh direct, bbh cot
    assert sum(len(v) for v in runs["dense"].values()) > 100
    assert any(extracted is not None for v in runs["dense"].values() for _, _, extracted in v)
    assert runs["upcycled"] == runs["dense"]


def test_split_with_hidden_state_routers_from_a_prompts_file(dense_dir, tmp_path):
    prompts = tmp_path / "experts.json"
    prompts.write_text(json.dumps([{"positive": ["math: 2+2"], "negative": ["a poem"]},
                                   {"positive": ["history of Rome", "Caesar"]}]))  # fmt: skip
    out = tmp_path / "split"
    argv = [f"--checkpoint={dense_dir}", f"--output_dir={out}", "--method=random",
            "--num_experts=2", "--num_selected_experts=1", "--router=hidden",
            f"--router_prompts={prompts}", "--placement=every_other"]  # fmt: skip
    assert construct_cli.main(argv) == 0
    params, config, metadata = checkpoints.load_params(str(out))
    assert config.moe.expert_mlp_dim == DENSE.d_ff // 2 and config.moe.num_experts == 2
    kernel = np.asarray(params["encoder"]["layers_1"]["moe"]["router"]["kernel"])
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, atol=1e-5)
    router = metadata["construction"]["recipe"]["router"]
    assert router["init"] == "hidden" and router["negative_prompts"] == [["a poem"], []]
    with pytest.raises(ValueError, match="--router=hidden needs --router_prompts"):
        construct_cli.main([f"--checkpoint={dense_dir}", f"--output_dir={tmp_path / 'x'}",
                            "--router=hidden"])  # fmt: skip

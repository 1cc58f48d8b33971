"""flan_moe.cli.merge over orbax checkpoints: the output loads and holds the merge."""

import jax
import numpy as np
import pytest

from flan_moe.cli import merge as merge_cli
from flan_moe.model.config import get_config
from flan_moe.model.transformer import EncoderDecoder
from flan_moe.training.checkpoints import load_params
from tests.random_params import random_params

META = {"vocabulary": "byte", "task_feature_lengths": {"inputs": 16, "targets": 8}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cfg = get_config("tiny", dtype="float32")
    model = EncoderDecoder(cfg)
    root = tmp_path_factory.mktemp("runs")
    paths = {}
    for name, seed in (("base", 0), ("a", 1), ("b", 2)):
        paths[name] = str(root / name)
        merge_cli.write(random_params(model, seed), cfg, META, {"method": "test"}, paths[name])
    return paths, cfg


def assert_tree_close(x, y):
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), x, y
    )


def test_merge_cli_task_arithmetic_and_uniform(runs, tmp_path):
    paths, cfg = runs
    out = tmp_path / "ta0"
    merge_cli.main(
        [
            "--method=task_arithmetic",
            f"--base={paths['base']}",
            f"--models={paths['a']},{paths['b']}",
            "--lam=0",
            f"--output={out}",
        ]
    )
    merged, config, meta = load_params(str(out))
    base, _, _ = load_params(paths["base"])
    assert config == cfg and meta["vocabulary"] == "byte"
    assert meta["merge"]["method"] == "task_arithmetic" and meta["merge"]["lam"] == 0.0
    assert_tree_close(merged, base)

    out = tmp_path / "soup"
    merge_cli.main(["--method=uniform", f"--models={paths['a']},{paths['b']}", f"--output={out}"])
    soup, _, _ = load_params(str(out))
    a, _, _ = load_params(paths["a"])
    b, _, _ = load_params(paths["b"])
    assert_tree_close(soup, jax.tree_util.tree_map(lambda x, y: (x + y) / 2, a, b))


def test_merge_cli_needs_base_for_task_vectors(runs, tmp_path):
    paths, _ = runs
    with pytest.raises(SystemExit, match="needs --base"):
        merge_cli.main(["--method=ties", f"--models={paths['a']}", f"--output={tmp_path}/x"])


def test_merge_cli_lawa_averages_the_last_k_checkpoints(tmp_path):
    import jax.numpy as jnp

    from flan_moe.training.checkpoints import Checkpointer
    from flan_moe.training.train_state import TrainState

    cfg = get_config("tiny", dtype="float32")
    model = EncoderDecoder(cfg)
    run = tmp_path / "run"
    saver = Checkpointer(str(run), keep=None)
    trees = {}
    for step in (1, 2, 3):
        trees[step] = random_params(model, step)
        state = TrainState(step=jnp.asarray(step, jnp.int32), params=trees[step],
                           opt_state={"count": jnp.zeros((), jnp.int32)},
                           rng=jnp.zeros((2,), jnp.uint32))  # fmt: skip
        saver.save(state, data_position=step, metadata={**META, "model_config": cfg.to_dict()})
        saver.wait()
    saver.close()
    merge_cli.main(["--method=lawa", f"--models={run}", "--k=2", f"--output={tmp_path / 'lawa'}"])
    lawa, _, meta = load_params(str(tmp_path / "lawa"))
    assert meta["merge"]["k"] == 2 and len(meta["merge"]["models"]) == 2
    assert_tree_close(lawa, jax.tree_util.tree_map(lambda a, b: (a + b) / 2, trees[2], trees[3]))
    with pytest.raises(ValueError, match="last 4 checkpoints"):
        merge_cli.main(["--method=lawa", f"--models={run}", "--k=4", f"--output={tmp_path / 'x'}"])

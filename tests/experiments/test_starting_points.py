"""Where every experiment's runs start: pre-training stages (tiny / small), pretrained
checkpoints and T5's vocabulary required at base / paper (planning only, nothing runs)."""

import time
from pathlib import Path

import pytest

from flan_moe.cli import experiment as cli
from flan_moe.experiments import runner, settings


def _bindings(stage) -> dict[str, str]:
    out = {}
    for arg in stage.command:
        if arg.startswith("--gin.") and "=" in arg:
            key, value = arg[len("--gin.") :].split("=", 1)
            out[key] = value
    return out


def _first_training(plan):
    return next(s for s in plan.stages if s.name.endswith(("/instruction_tune", "/finetune")))


# ablation_moe_init builds its MoEs from the dense model instead (tested below).
PRETRAIN_EVERY_ROLE = sorted(set(settings.EXPERIMENTS) - {"ablation_moe_init"})


@pytest.mark.parametrize("scale_name", ["tiny", "small"])
@pytest.mark.parametrize("name", PRETRAIN_EVERY_ROLE)
def test_every_experiment_pretrains_each_role_then_starts_from_it(name, scale_name):
    scale = settings.get_scale(scale_name)
    experiment = settings.get_experiment(name, scale)
    root = Path("/tmp/plan")
    plans = runner.plan_experiment(experiment, scale, root)
    stages = [s for p in plans for s in p.stages]
    pretrain = {s.name: s for s in stages if s.name.startswith("pretrain/")}
    roles = settings.experiment_roles(experiment)
    assert sorted(pretrain) == sorted(f"pretrain/{r}" for r in roles)
    # equal pre-training tokens for every role; no run's ablation binding leaks in
    token_keys = ("TRAIN_STEPS", "BATCH_SIZE", "TASK_FEATURE_LENGTHS", "MIXTURE_OR_TASK_NAME")
    seen = {tuple(_bindings(s)[k] for k in token_keys) for s in pretrain.values()}
    task = repr(scale.pretrain_task)
    assert seen == {(str(scale.pretrain_steps), str(scale.batch_size),
                     repr(dict(scale.feature_lengths)), task)}  # fmt: skip
    for s in pretrain.values():
        assert not any(k.startswith(("OptimizerConfig.freeze", "LossConfig", "RUN_MODEL"))
                       for k in _bindings(s)), s.name  # fmt: skip
    for plan in plans:
        if plan.run.label.endswith("(before IT)"):
            assert plan.final_model_dir == root / "pretrain" / plan.run.role / "model"
            continue
        if not any(s.name.endswith(("/instruction_tune", "/finetune")) for s in plan.stages):
            # merging_stages arms that evaluate or merge another arm's trained model
            assert experiment.stages_module, plan.run.label
            continue
        first = _first_training(plan)
        model = root / "pretrain" / plan.run.role / "model"
        assert _bindings(first)["INITIAL_CHECKPOINT_PATH"] == repr(str(model)), first.name
        assert f"pretrain/{plan.run.role}" in first.depends_on


def test_moe_init_arms_start_from_the_pretrained_dense_model_or_from_scratch():
    scale = settings.get_scale("tiny")
    experiment = settings.get_experiment("ablation_moe_init", scale)
    root = Path("/tmp/plan")
    plans = runner.plan_experiment(experiment, scale, root)
    stages = [s for p in plans for s in p.stages]
    names = [s.name for s in stages]
    dense = root / "pretrain" / "dense" / "model"
    assert [n for n in names if n.startswith("pretrain/")] == ["pretrain/dense"]
    assert "dense_source/train" not in names  # the pre-trained dense model is the source
    constructs = [s for s in stages if s.name.endswith("/construct")]
    assert len(constructs) == 6  # upcycled, upcycled + frozen router, four splits
    for stage in constructs:
        assert f"--checkpoint={dense}" in stage.command and stage.depends_on == ("pretrain/dense",)
    by_label = {p.run.label: p for p in plans}
    scratch = _first_training(by_label["MoE from scratch"])
    assert "INITIAL_CHECKPOINT_PATH" not in _bindings(scratch) and not scratch.depends_on
    continued = _bindings(_first_training(by_label["dense (continued)"]))
    assert continued["INITIAL_CHECKPOINT_PATH"] == repr(str(dense))


@pytest.mark.parametrize("scale_name", ["tiny", "small"])
def test_pretraining_fits_the_scale(scale_name):
    pytest.importorskip("tensorflow")
    from flan_moe.data.span_corruption import SENTINEL_IDS, span_corruption_lengths
    from flan_moe.model.config import get_config

    scale = settings.get_scale(scale_name)
    _, targets = span_corruption_lengths(scale.feature_lengths["inputs"])
    assert targets <= scale.feature_lengths["targets"]
    for model in set(scale.models.values()):
        assert get_config(model).vocab_size >= 259 + SENTINEL_IDS, model  # byte + sentinels


@pytest.mark.parametrize("name", sorted(settings.EXPERIMENTS))
def test_paper_scale_without_checkpoints_names_each_role_and_source(name):
    scale = settings.get_scale("paper")
    experiment = settings.get_experiment(name, scale)
    with pytest.raises(ValueError) as info:
        runner.plan_experiment(experiment, scale, Path("/tmp/plan"))
    message = str(info.value)
    assert "VOCABULARY" in message and "gs://t5-data/vocabs/cc_all.32000" in message
    for role in settings.experiment_roles(experiment):
        assert settings.pretrained_macro(role) in message
    if "switch" in settings.experiment_roles(experiment):
        assert "google/switch-base-32" in message


def test_cli_paper_scale_stops_before_anything_runs(tmp_path, capsys):
    start = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        cli.main(["setting2", "--scale", "paper", "--output_dir", str(tmp_path)])
    assert time.perf_counter() - start < 5
    message = str(info.value.code)
    assert "PRETRAINED_DENSE (role 'dense', model switch_base_dense)" in message
    assert "PRETRAINED_SWITCH (role 'switch', model switch_base_32)" in message
    assert not any(tmp_path.iterdir())  # no stage folder was made


def test_base_scale_with_checkpoints_starts_each_role_from_its_own(tmp_path):
    vocab = tmp_path / "spiece.model"
    vocab.write_bytes(b"")  # only its existence is checked while planning
    ckpts = {role: tmp_path / role for role in ("dense", "switch")}
    for path in ckpts.values():
        path.mkdir()
    experiment, scale = cli.resolve("setting2", "base")
    experiment, scale = cli.with_starting_points(
        "setting2", experiment, scale, vocabulary=str(vocab),
        pretrained=[f"{r}={p}" for r, p in ckpts.items()],
    )  # fmt: skip
    plans = runner.plan_experiment(experiment, scale, tmp_path / "out")
    stages = [s for p in plans for s in p.stages]
    assert not [s for s in stages if s.name.startswith("pretrain/")]
    for plan in plans:
        first = plan.stages[0]
        bindings = _bindings(first)
        assert bindings["INITIAL_CHECKPOINT_PATH"] == repr(str(ckpts[plan.run.role]))
        assert bindings["DataOptions.vocabulary"] == repr(str(vocab))
        if plan.run.label.endswith("(before IT)"):  # imported as it is, 0 steps
            assert first.name.endswith("/initial_model") and bindings["TRAIN_STEPS"] == "0"
    with pytest.raises(SystemExit, match="does not exist"):
        cli.with_starting_points("setting2", experiment, scale, vocabulary=None,
                                 pretrained=[f"switch={tmp_path / 'nope'}"])  # fmt: skip


def test_gin_macros_give_the_vocabulary_and_checkpoints(tmp_path):
    vocab = tmp_path / "spiece.model"
    vocab.write_bytes(b"")
    (tmp_path / "t5").mkdir()
    (tmp_path / "switch").mkdir()
    gin_file = tmp_path / "paper_setting2.gin"
    gin_file.write_text(
        'EXPERIMENT = "setting2_instruction_tuning"\nSCALE = "paper"\nMODELS = {}\n'
        f'VOCABULARY = "{vocab}"\nPRETRAINED_DENSE = "{tmp_path / "t5"}"\n'
        f'PRETRAINED_SWITCH = "{tmp_path / "switch"}"\n'
    )
    experiment, scale = cli.resolve(str(gin_file), None)
    experiment, scale = cli.with_starting_points(
        str(gin_file), experiment, scale, vocabulary=None, pretrained=[]
    )
    assert scale.vocabulary == str(vocab)
    assert dict(scale.pretrained) == {
        "dense": str(tmp_path / "t5"),
        "switch": str(tmp_path / "switch"),
    }


def test_a_sentencepiece_vocabulary_reaches_every_training_stage(sentencepiece_model):
    import dataclasses

    scale = dataclasses.replace(settings.get_scale("tiny"), vocabulary=str(sentencepiece_model))
    experiment = settings.get_experiment("setting3", scale)
    plans = runner.plan_experiment(experiment, scale, Path("/tmp/plan"))
    trains = [s for p in plans for s in p.stages if "flan_moe.cli.train" in s.command]
    assert len(trains) == 2 + 2 * 2  # pretrain per role, then instruction tune + finetune
    for stage in trains:
        assert _bindings(stage)["DataOptions.vocabulary"] == repr(str(sentencepiece_model))

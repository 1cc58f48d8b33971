"""ablation_moe_init plans the construction stages (no training here)."""

from flan_moe.construction import moe_config_for
from flan_moe.experiments import runner, settings
from flan_moe.model.config import get_config


def test_moe_init_plan(tmp_path):
    scale = settings.get_scale("tiny")
    experiment = settings.get_experiment("ablation_moe_init", scale)
    plans = runner.plan_experiment(experiment, scale, tmp_path)
    names = [s.name for p in plans for s in p.stages]
    # the shared dense source is the pre-trained dense model at tiny scale
    assert len(names) == len(set(names)) and names.count("pretrain/dense") == 1
    assert names.index("pretrain/dense") < names.index("upcycled/construct")
    by_label = {p.run.label: p for p in plans}
    assert len(by_label) == 8 and experiment.baseline == "MoE from scratch"
    for label, plan in by_label.items():
        stages = [s.name for s in plan.stages]
        constructed = plan.run.construction is not None and plan.run.construction.recipe
        assert any(n.endswith("/construct") for n in stages) == bool(constructed), label
    upcycled = by_label["upcycled"]
    (train,) = [s for s in upcycled.stages if s.name == "upcycled/instruction_tune"]
    command = " ".join(train.command)
    dense = get_config(scale.models["dense"])
    want = moe_config_for(dense, upcycled.run.construction.recipe).to_dict()
    assert f"--gin.MODEL_OVERRIDES={want!r}" in command
    assert f"INITIAL_CHECKPOINT_PATH='{tmp_path}/upcycled/construct/model'" in command
    scratch = " ".join(by_label["MoE from scratch"].stages[0].command)
    assert f"--gin.MODEL_OVERRIDES={want!r}" in scratch and "INITIAL_CHECKPOINT" not in scratch
    frozen = [
        s for s in by_label["upcycled, router frozen first 25%"].stages if "instruction" in s.name
    ]
    assert [s.name.split("/")[1] for s in frozen] == ["instruction_tune_router_frozen",
                                                      "instruction_tune"]  # fmt: skip
    assert "--gin.TRAIN_STEPS=10" in frozen[0].command
    assert "--gin.OptimizerConfig.freeze='gate'" in frozen[0].command
    assert "--gin.TRAIN_STEPS=30" in frozen[1].command

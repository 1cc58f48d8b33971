"""Planning and report tables of the averaging, merging and proxy-tuning ablations (nothing
trains: plans are read, tables are built from hand-written results.json files)."""

from pathlib import Path

import pytest

from flan_moe.evaluation import results as R
from flan_moe.experiments import merging_report, merging_stages, report, runner, settings

ROOT = Path("/tmp/plan")
SCALE = settings.get_scale("tiny")


def _plans(name):
    return runner.plan_experiment(settings.get_experiment(name, SCALE), SCALE, ROOT)


def _flag(stage, prefix):
    return next((a[len(prefix) :] for a in stage.command if a.startswith(prefix)), None)


def _evals(plan):
    return [s for s in plan.stages if "/eval_" in s.name]


def test_weight_averaging_evaluates_each_weight_choice_of_one_run():
    plans = _plans("ablation_weight_averaging")
    assert len(plans) == 8  # 2 models x (raw, ema, swa, lawa_3)
    for family in ("dense", "moe"):
        arms = [p for p in plans if p.run.attributes["family"] == family]
        weights = [_flag(_evals(p)[0], "--weights=") for p in arms]
        assert weights == ["raw", "ema", "swa", f"lawa_{merging_stages.LAWA_K}"]
        dirs = {_flag(_evals(p)[0], "--checkpoint_dir=") for p in arms}
        assert dirs == {str(ROOT / family / "instruction_tune" / "model")}
        outs = {_flag(_evals(p)[0], "--output_dir=") for p in arms}
        assert outs == {str(p.final_model_dir) for p in arms} and len(outs) == 4
    train = next(s for p in plans for s in p.stages if s.name == "dense/instruction_tune")
    bindings = dict(merging_stages.averaging_bindings(SCALE))
    assert bindings["OptimizerConfig.ema_decay"] == pytest.approx(0.9)  # 40 steps
    assert bindings["TrainConfig.keep_checkpoints"] > merging_stages.LAWA_K
    for key, value in bindings.items():
        assert f"--gin.{key}={value!r}" in train.command


def test_merging_merges_the_cluster_models_from_the_pretrained_base():
    plans = _plans("ablation_merging")
    stages = {s.name: s for p in plans for s in p.stages}
    tasks = {n: _flag(s, "--gin.MIXTURE_OR_TASK_NAME=") for n, s in stages.items()
             if n.endswith("/instruction_tune")}  # fmt: skip
    assert tasks["moe_knowledge/instruction_tune"] == "'flan_local_knowledge'"
    assert tasks["moe_commonsense/instruction_tune"] == "'flan_local_commonsense'"
    assert tasks["moe_union/instruction_tune"] == "'flan_local'"
    merges = {n: s for n, s in stages.items() if n.endswith("/merge")}
    assert len(merges) == 4 + 8  # dense: 4 methods; MoE: 4 methods x with/without alignment
    for name, stage in merges.items():
        family = name.split("_")[0]
        models = _flag(stage, "--models=").split(",")
        assert models == [str(ROOT / f"{family}_{c}" / "instruction_tune" / "model")
                          for c in ("knowledge", "commonsense")]  # fmt: skip
        base = _flag(stage, "--base=")
        pretrained = str(ROOT / "pretrain" / ("switch" if family == "moe" else "dense") / "model")
        assert base == (None if "uniform" in name else pretrained), name
        assert ("--align_experts" in stage.command) == name.endswith("_aligned/merge"), name
        assert family == "moe" or "--align_experts" not in stage.command


def test_proxy_tuning_steers_the_large_base_with_the_small_pair():
    plans = _plans("ablation_proxy_tuning")
    by_side = {p.run.attributes["role"]: p for p in plans}
    assert sorted(by_side) == ["antiexpert", "base", "expert", "proxy", "tuned"]
    proxy = _evals(by_side["proxy"])[0]
    spec = dict(item.split("=", 1) for item in _flag(proxy, "--proxy=").split(","))
    assert spec == {
        "base": str(ROOT / "pretrain" / "dense_large" / "model"),
        "expert": str(ROOT / "small_switch" / "instruction_tune" / "model"),
        "antiexpert": str(ROOT / "pretrain" / "switch" / "model"),
    }
    assert "--proxy_alpha=1.0" in proxy.command
    assert _flag(proxy, "--checkpoint_dir=") is None
    large = next(s for p in plans for s in p.stages if s.name == "pretrain/dense_large")
    assert "--gin.MODEL_NAME" not in " ".join(large.command)  # from the model gin file
    assert any(a.endswith("switch_tiny_dense_large.gin") for a in large.command)


def _entry(suite, correct):
    """Every subtask: the first ``correct`` questions right (MMLU 4 per subject, BBH 3)."""
    names, total = (sorted(R.MMLU_CATEGORIES), 4) if suite == "mmlu" else (R.BBH_FILES, 3)
    right = min(correct, total)
    bits = {n: "1" * right + "0" * (total - right) for n in names}
    subtasks = {n: R.SubtaskResult(correct=right, total=total) for n in names}
    return R.make_entry(checkpoint="c", suite=suite, mode="direct", shots=0, method="generation",
                        subtasks=subtasks, outcomes=bits)  # fmt: skip


def _run(tmp_path, label, correct, **attributes):
    path = tmp_path / f"{label}.json"
    R.write_results(path, [_entry("mmlu", correct), _entry("bbh", correct)])
    return report.Run(label, (str(path),), attributes)


def test_proxy_report_gap_closed_from_results(tmp_path):
    runs = [
        _run(tmp_path, "base", 1, role="base"),
        _run(tmp_path, "tuned", 3, role="tuned"),
        _run(tmp_path, "proxy", 2, role="proxy"),
        _run(tmp_path, "anti", 1, role="antiexpert"),
        _run(tmp_path, "expert", 2, role="expert"),
    ]
    tables = merging_report.tables("ablation_proxy_tuning", runs, title="t",
                                   selection=report.Selection())  # fmt: skip
    arms, diffs, gap = tables
    assert [label for label, _ in arms.rows][:5] == ["base", "tuned", "proxy", "anti", "expert"]
    assert [label for label, _ in diffs.rows] == ["proxy − base", "tuned − base", "expert − anti"]
    # MMLU: 25% -> 50% (proxy) of 75% (tuned): half the gap; BBH 1/3 -> 2/3 of 3/3: half too
    values = gap.values()["proxy vs base, of tuned vs base"]
    assert values["MMLU-Direct"] == pytest.approx(50.0)
    assert values["BBH-Direct"] == pytest.approx(50.0)
    assert values["Average"] == pytest.approx(50.0)
    assert "[" in gap.markdown()  # every cell carries its interval


def test_averaging_and_merging_state_their_differences(tmp_path):
    runs = [_run(tmp_path, f"{f} {w}", 1, family=f, weights=w)
            for f in ("dense", "moe") for w in ("raw", "ema", "swa")]  # fmt: skip
    pairs = merging_report.stated_pairs("ablation_weight_averaging", runs)
    assert [(a.label, b.label) for a, b in pairs] == [
        ("dense ema", "dense raw"), ("dense swa", "dense raw"),
        ("moe ema", "moe raw"), ("moe swa", "moe raw"),
    ]  # fmt: skip
    runs = [
        _run(tmp_path, "union", 2, family="moe", arm="union"),
        _run(tmp_path, "ties", 1, family="moe", arm="merged", method="ties", aligned=False),
        _run(tmp_path, "ties al", 1, family="moe", arm="merged", method="ties", aligned=True),
    ]
    pairs = merging_report.stated_pairs("ablation_merging", runs)
    assert [(a.label, b.label) for a, b in pairs] == [
        ("ties", "union"),
        ("ties al", "union"),
        ("ties al", "ties"),
    ]

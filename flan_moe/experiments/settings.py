"""The paper's three settings and its ablations, as data: which models, which stages.

An ``Experiment`` lists ``ModelRun``s (a label, a model gin file, extra gin bindings
for its training stages, and attributes the figures group by) and the stages every
run goes through:

* setting 1 (``setting1_direct_finetune``): finetune -> evaluate (MoE->FT vs T5->FT);
* setting 2 (``setting2_instruction_tuning``): instruction-tune -> evaluate held-out
  MMLU / BBH zero- and few-shot (Flan-MoE vs Flan-T5);
* setting 3 (``setting3_instruction_then_finetune``): instruction-tune -> finetune ->
  evaluate (Flan-MoE->FT vs Flan-T5->FT);
* ablations (instruction-tune -> evaluate, one varied knob): routing, number of
  experts, freezing, auxiliary losses, data efficiency, expert dropout.

``Scale`` turns an experiment into concrete sizes, lengths and steps: ``tiny`` (CPU
minutes), ``small``, ``base``, ``paper`` (the paper's lengths 2048/512, batch 32 and
the base-size models). Model *roles* (``dense``, ``switch``, ``gs``, ``ec``, ``st``,
``switch_e{N}``) map to a model gin file per scale, so the same experiment runs at
every scale.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Scale:
    name: str
    models: Mapping[str, str]  # role -> model gin file stem in gin_configs/models/
    instruction_tune_steps: int
    finetune_steps: int
    batch_size: int
    feature_lengths: Mapping[str, int]
    eval_subsample: int | None  # examples per subtask; None = all
    few_shot: int  # k for MMLU (BBH uses at most its 3 exemplars)
    max_decode_length: int
    eval_batch_size: int
    # Prompts longer than this drop exemplars, then are cut from the left (both counted).
    eval_max_input_length: int
    # Extra gin bindings for every training stage at this scale (e.g. a larger learning
    # rate so that tiny models learn something in a few dozen steps).
    train_bindings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Span-corruption pre-training from scratch, per model role (tiny / small): steps,
    # task; 0 steps = no pre-training stage (base / paper start from `pretrained`).
    pretrain_steps: int = 0
    pretrain_task: str = "local_corpus_span_corruption"
    # The run's vocabulary spec ("byte" or a SentencePiece .model path); None = required
    # (base / paper: T5's SentencePiece model, see T5_VOCABULARY_SOURCE).
    vocabulary: str | None = "byte"
    # role -> pretrained checkpoint (orbax / HF folder / T5X directory); required for
    # every role an experiment uses when `requires_pretrained`.
    pretrained: Mapping[str, str] = dataclasses.field(default_factory=dict)
    requires_pretrained: bool = False
    pretrain_bindings: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _roles(dense: str, switch: str, gs: str, ec: str, st: str, experts: Mapping[int, str]):
    roles = {"dense": dense, "switch": switch, "gs": gs, "ec": ec, "st": st}
    roles.update({f"switch_e{n}": name for n, name in experts.items()})
    return roles


SCALES: dict[str, Scale] = {
    "tiny": Scale(
        name="tiny",
        models=_roles(
            "switch_tiny_dense", "switch_tiny_8", "gs_tiny", "ec_tiny", "st_moe_tiny",
            {4: "switch_tiny_4", 8: "switch_tiny_8", 16: "switch_tiny_16"},
        ),
        instruction_tune_steps=40,
        finetune_steps=20,
        batch_size=8,
        feature_lengths={"inputs": 256, "targets": 64},
        eval_subsample=2,
        few_shot=1,
        max_decode_length=24,
        eval_batch_size=16,
        eval_max_input_length=1024,
        train_bindings={"OptimizerConfig.learning_rate": 3e-3, "TrainConfig.log_every": 10},
        pretrain_steps=30,
        # pretrain.gin's 10000 warmup steps would leave a 30-step run at lr ~1e-5
        pretrain_bindings={"OptimizerConfig.schedule": "constant",
                           "OptimizerConfig.warmup_steps": 0,
                           "OptimizerConfig.learning_rate": 3e-3, "TrainConfig.log_every": 10},
    ),
    "small": Scale(
        name="small",
        models=_roles(
            "switch_small_dense", "switch_small_8", "gs_small", "ec_small", "st_moe_small",
            {8: "switch_small_8", 16: "switch_small_16", 32: "switch_small_32"},
        ),
        instruction_tune_steps=2000,
        finetune_steps=500,
        batch_size=32,
        feature_lengths={"inputs": 512, "targets": 128},
        eval_subsample=20,
        few_shot=5,
        max_decode_length=128,
        eval_batch_size=32,
        eval_max_input_length=1024,
        pretrain_steps=5000,
    ),
    "base": Scale(
        name="base",
        models=_roles(
            "switch_base_dense", "switch_base_8", "gs_base", "ec_base", "st_moe_base",
            {8: "switch_base_8", 16: "switch_base_16", 32: "switch_base_32",
             64: "switch_base_64", 128: "switch_base_128"},
        ),
        instruction_tune_steps=20000,
        finetune_steps=2000,
        batch_size=32,
        feature_lengths={"inputs": 1024, "targets": 256},
        eval_subsample=None,
        few_shot=5,
        max_decode_length=256,
        eval_batch_size=64,
        eval_max_input_length=2048,
        vocabulary=None,
        requires_pretrained=True,
    ),
    "paper": Scale(
        name="paper",
        models=_roles(
            "switch_base_dense", "switch_base_32", "gs_base", "ec_base", "st_moe_base",
            {8: "switch_base_8", 16: "switch_base_16", 32: "switch_base_32",
             64: "switch_base_64", 128: "switch_base_128", 256: "switch_base_256"},
        ),
        instruction_tune_steps=100000,
        finetune_steps=10000,
        batch_size=32,
        feature_lengths={"inputs": 2048, "targets": 512},
        eval_subsample=None,
        few_shot=5,
        max_decode_length=512,
        eval_batch_size=64,
        eval_max_input_length=2048,
        vocabulary=None,
        requires_pretrained=True,
    ),
}  # fmt: skip


# The larger dense model ablation_proxy_tuning steers with a small tuned/untuned pair
# (role "dense_large"; at base / paper PRETRAINED_DENSE_LARGE).
_LARGER_DENSE = {"tiny": "switch_tiny_dense_large", "small": "switch_base_dense",
                 "base": "switch_large_dense", "paper": "switch_large_dense"}  # fmt: skip
for _name, _model in _LARGER_DENSE.items():
    SCALES[_name] = dataclasses.replace(
        SCALES[_name], models={**SCALES[_name].models, "dense_large": _model}
    )


@dataclasses.dataclass(frozen=True)
class Construction:
    """A run whose initial checkpoint is built from the experiment's dense source model
    (``flan_moe.experiments.construction_stages``). ``recipe``: an ``UpcycleRecipe`` or
    ``SplitRecipe`` (None = the dense source itself); ``flags``: extra
    ``flan_moe.cli.construct`` flags (importance data); ``freeze_router_fraction``: the
    share of the instruction-tuning steps trained with the routers frozen first."""

    recipe: Any = None
    flags: tuple[str, ...] = ()
    freeze_router_fraction: float = 0.0


@dataclasses.dataclass(frozen=True)
class ModelRun:
    label: str
    role: str  # resolved to a model gin file by the scale
    bindings: tuple[tuple[str, Any], ...] = ()  # extra gin bindings for its training stages
    attributes: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Fraction of the scale's instruction-tuning steps (data-efficiency ablation).
    step_fraction: float = 1.0
    # Start from a checkpoint built out of a dense model (ablation_moe_init).
    construction: Construction | None = None
    # Start from random weights even where the scale pre-trains (ablation_moe_init's
    # "MoE from scratch" arm).
    from_scratch: bool = False


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    paper_result: str
    runs: tuple[ModelRun, ...]
    instruction_tune: bool = True
    finetune: bool = False
    eval_modes: tuple[str, ...] = ("direct", "cot")
    eval_suites: tuple[str, ...] = ("mmlu", "bbh")
    baseline: str | None = None  # the ablation's reference row
    figures: tuple[str, ...] = ()
    # A module of flan_moe.experiments that plans and reports this experiment itself
    # (``plan_experiment`` / ``build_report``), e.g. "merging_stages"; None = the runner's.
    stages_module: str | None = None


# Single-task finetuning (settings 1 and 3): GSM8K's chain-of-thought training data,
# evaluated held-out on the GSM8K test set and SVAMP.
FINETUNE_TASK = "flan_cot.gsm8k"
FINETUNE_EVAL_SUITES = ("gsm8k", "svamp")
INSTRUCTION_MIXTURE = "flan_local"

_PAIR = (
    ModelRun("Flan-T5 (dense)", "dense", attributes={"family": "dense", "num_experts": 1}),
    ModelRun("Flan-Switch", "switch", attributes={"family": "moe", "num_experts": 8}),
)


def _setting1(scale: Scale) -> Experiment:
    del scale  # the same runs at every scale
    return Experiment(
        name="setting1_direct_finetune",
        title="Setting 1: single-task finetuning without instruction tuning",
        paper_result="Flan-MoE Fig. 1 / Table 1, 'MoE->FT vs T5->FT'",
        runs=tuple(
            dataclasses.replace(r, label=r.label.replace("Flan-", "") + " -> FT",
                                attributes={**r.attributes, "instruction_tuned": False})
            for r in _PAIR
        ),
        instruction_tune=False,
        finetune=True,
        eval_modes=("cot",),
        eval_suites=FINETUNE_EVAL_SUITES,
        figures=("finetune_with_without_it",),
    )  # fmt: skip


def _setting2(scale: Scale) -> Experiment:
    del scale  # the same runs at every scale
    return Experiment(
        name="setting2_instruction_tuning",
        title="Setting 2: instruction tuning, then held-out zero/few-shot evaluation",
        paper_result="Flan-MoE Table 1 (MMLU-Direct/CoT, BBH-Direct/CoT) and Fig. 1",
        runs=tuple(
            dataclasses.replace(r, attributes={**r.attributes, "instruction_tuned": True})
            for r in _PAIR
        ),
        figures=("instruction_tuning_gain",),
    )


def _setting3(scale: Scale) -> Experiment:
    del scale  # the same runs at every scale
    return Experiment(
        name="setting3_instruction_then_finetune",
        title="Setting 3: instruction tuning, then single-task finetuning",
        paper_result="Flan-MoE Fig. 1, 'Flan-MoE->FT vs Flan-T5->FT'",
        runs=tuple(
            dataclasses.replace(r, label=r.label + " -> FT",
                                attributes={**r.attributes, "instruction_tuned": True})
            for r in _PAIR
        ),
        finetune=True,
        eval_modes=("cot",),
        eval_suites=FINETUNE_EVAL_SUITES,
        figures=("finetune_with_without_it",),
    )  # fmt: skip


def _ablation(name: str, title: str, paper: str, runs: tuple[ModelRun, ...], **kw) -> Experiment:
    return Experiment(name=name, title=title, paper_result=paper, runs=runs,
                      baseline=runs[0].label, **kw)  # fmt: skip


def _routing(scale: Scale) -> Experiment:
    del scale  # the same runs at every scale
    return _ablation(
        "ablation_routing", "Ablation: routing strategy",
        "Flan-MoE Table 1 rows FLAN-Switch / FLAN-GS / FLAN-EC / FLAN-ST",
        (ModelRun("Flan-Switch (top-1)", "switch"), ModelRun("Flan-GS (top-2)", "gs"),
         ModelRun("Flan-EC (expert choice)", "ec"), ModelRun("Flan-ST (top-2 + z-loss)", "st")),
    )  # fmt: skip


def _num_experts(scale: Scale) -> Experiment:
    runs = [ModelRun("dense (1 expert)", "dense", attributes={"num_experts": 1})]
    counts = sorted(
        int(r.removeprefix("switch_e")) for r in scale.models if r.startswith("switch_e")
    )
    for n in counts:
        runs.append(ModelRun(f"Switch {n} experts", f"switch_e{n}", attributes={"num_experts": n}))
    return _ablation(
        "ablation_num_experts", "Ablation: number of experts at fixed active compute",
        "Flan-MoE Fig. 4 (expert-count scaling)", tuple(runs), figures=("expert_scaling",),
    )  # fmt: skip


def _freeze(scale: Scale) -> Experiment:
    del scale  # the same runs at every scale
    runs = tuple(
        ModelRun(label, "switch", bindings=(("OptimizerConfig.freeze", value),),
                 attributes={"freeze": value})
        for label, value in (("train all", "none"), ("freeze gate", "gate"),
                             ("freeze expert", "expert"), ("freeze MoE", "moe"))
    )  # fmt: skip
    return _ablation(
        "ablation_freeze", "Ablation: freezing during instruction tuning",
        "Flan-MoE Table 3 (freeze-gate / freeze-expert / freeze-MoE)", runs,
    )  # fmt: skip


def _losses(scale: Scale) -> Experiment:
    del scale  # the same runs at every scale
    runs = (
        ModelRun("aux 0.01, z 0", "switch"),
        ModelRun("no aux loss", "switch", bindings=(("LossConfig.aux_loss_coef", 0.0),)),
        ModelRun("aux 0.01, z 0.001", "switch",
                 bindings=(("LossConfig.router_z_loss_coef", 0.001),)),
        ModelRun("no aux loss, z 0.001", "switch",
                 bindings=(("LossConfig.aux_loss_coef", 0.0),
                           ("LossConfig.router_z_loss_coef", 0.001))),
    )  # fmt: skip
    return _ablation(
        "ablation_losses", "Ablation: auxiliary load-balancing and router z-loss",
        "Flan-MoE Table 3 (auxiliary loss on/off)", runs,
    )  # fmt: skip


def _expert_dropout(scale: Scale) -> Experiment:
    del scale  # the same runs at every scale
    runs = tuple(
        ModelRun(f"expert dropout {rate}", "switch",
                 bindings=(("RUN_MODEL_OVERRIDES",
                             {"dropout_rate": 0.05, "moe": {"expert_dropout_rate": rate}}),),
                 attributes={"expert_dropout": rate})
        for rate in (0.2, 0.0, 0.1)
    )  # fmt: skip
    return _ablation(
        "ablation_expert_dropout", "Ablation: dropout inside the experts",
        "Flan-MoE Sec. 4 (expert dropout 0.2)", runs,
    )  # fmt: skip


def _data_efficiency(scale: Scale) -> Experiment:
    del scale  # the same runs at every scale
    runs = []
    for fraction in (1.0, 0.5, 0.25):
        for role, family in (("switch", "moe"), ("dense", "dense")):
            runs.append(
                ModelRun(f"{family} {int(fraction * 100)}% of examples", role,
                         step_fraction=fraction,
                         attributes={"family": family, "data_fraction": fraction})
            )  # fmt: skip
    return _ablation(
        "ablation_data_efficiency", "Ablation: instruction-tuning data efficiency",
        "Flan-MoE Fig. 5 (fraction of instruction-tuning examples)", tuple(runs),
        figures=("data_efficiency",),
    )  # fmt: skip


def _moe_init(scale: Scale) -> Experiment:
    """From-scratch MoE vs an MoE built from a dense checkpoint (upcycled, or split four
    ways as LLaMA-MoE does), each then instruction-tuned for the same number of steps."""
    from flan_moe.construction.recipes import Placement, SplitRecipe, UpcycleRecipe
    from flan_moe.experiments.construction_stages import moe_overrides

    upcycle = UpcycleRecipe(num_experts=8, num_selected_experts=2, placement=Placement(every=2))
    importance = ("--importance_data=flan_local", "--importance_examples=8")
    splits = (
        ("Independent-Random", SplitRecipe(method="random"), ()),
        ("Independent-Clustering", SplitRecipe(method="clustering"), ()),
        ("Sharing-Inner", SplitRecipe(method="sharing_inner"), importance),
        ("Sharing-Inter (2 residual)", SplitRecipe(method="sharing_inter", num_experts=6,
                                                   num_shared_experts=2), importance),
    )  # fmt: skip
    scratch = (("MODEL_OVERRIDES", moe_overrides(scale, upcycle)),)
    runs = [
        ModelRun("MoE from scratch", "switch", bindings=scratch, attributes={"init": "scratch"},
                 from_scratch=True),
        ModelRun("upcycled", "switch", construction=Construction(upcycle),
                 attributes={"init": "upcycle"}),
        ModelRun("upcycled, router frozen first 25%", "switch",
                 construction=Construction(upcycle, freeze_router_fraction=0.25),
                 attributes={"init": "upcycle", "freeze_router": 0.25}),
    ]  # fmt: skip
    for label, recipe, flags in splits:
        runs.append(ModelRun(f"split: {label}", "switch", construction=Construction(recipe, flags),
                             attributes={"init": f"split_{recipe.method}"}))  # fmt: skip
    runs.append(ModelRun("dense (continued)", "dense", construction=Construction(),
                         attributes={"init": "dense"}))  # fmt: skip
    return _ablation(
        "ablation_moe_init", "Ablation: MoE initialisation (scratch vs upcycled vs split)",
        "Komatsuzaki et al. 2022 (sparse upcycling); Zhu et al. 2024 (LLaMA-MoE splits)",
        tuple(runs), eval_modes=("direct",),
    )  # fmt: skip


def _planned_by_merging_stages(name: str) -> Callable[[Scale], Experiment]:
    """The averaging / merging / proxy-tuning ablations, declared and planned in
    ``flan_moe.experiments.merging_stages`` (imported when first asked for)."""

    def build(scale: Scale) -> Experiment:
        from flan_moe.experiments import merging_stages

        return merging_stages.EXPERIMENTS[name](scale)

    return build


# Each builder takes the scale: most experiments are the same at every scale; the
# expert-count ablation uses the expert counts the scale provides.
EXPERIMENTS: dict[str, Callable[[Scale], Experiment]] = {
    "setting1_direct_finetune": _setting1,
    "setting2_instruction_tuning": _setting2,
    "setting3_instruction_then_finetune": _setting3,
    "ablation_routing": _routing,
    "ablation_num_experts": _num_experts,
    "ablation_freeze": _freeze,
    "ablation_losses": _losses,
    "ablation_expert_dropout": _expert_dropout,
    "ablation_data_efficiency": _data_efficiency,
    "ablation_moe_init": _moe_init,
    **{
        name: _planned_by_merging_stages(name)
        for name in ("ablation_weight_averaging", "ablation_merging", "ablation_proxy_tuning")
    },
}
ALIASES = {"setting1": "setting1_direct_finetune", "setting2": "setting2_instruction_tuning",
           "setting3": "setting3_instruction_then_finetune"}  # fmt: skip


def get_experiment(name: str, scale: Scale | str = "tiny") -> Experiment:
    """The experiment ``name`` (or an alias such as ``setting2``) at ``scale``."""
    name = ALIASES.get(name, name)
    if name not in EXPERIMENTS:
        raise KeyError(
            f"unknown experiment {name!r}; known: {sorted(EXPERIMENTS)} (aliases {sorted(ALIASES)})"
        )
    return EXPERIMENTS[name](get_scale(scale) if isinstance(scale, str) else scale)


def get_scale(name: str) -> Scale:
    if name not in SCALES:
        raise KeyError(f"unknown scale {name!r}; known: {sorted(SCALES)}")
    return SCALES[name]


# --- Starting points: pre-training, pretrained checkpoints, vocabulary -------------------

T5_VOCABULARY_SOURCE = (
    "T5's SentencePiece model: gs://t5-data/vocabs/cc_all.32000/sentencepiece.model "
    "(gsutil cp), or spiece.model from the Hugging Face repo google/t5-v1_1-base"
)
_T5X = "gs://t5-data/pretrained_models/t5x"
# Where to get a pretrained checkpoint for each base-size model file (Hugging Face repo or
# the t5x checkpoint directory listed in t5x's docs/models.md).
PRETRAINED_SOURCES: dict[str, str] = {
    "switch_base_dense": f"Hugging Face google-t5/t5-base, or {_T5X}/t5_base/checkpoint_999900",
    "t5_1_1_base": f"Hugging Face google/t5-v1_1-base, or {_T5X}/t5_1_1_base/checkpoint_1000000",
    **{
        f"switch_base_{n}": f"Hugging Face google/switch-base-{n}, or "
        f"{_T5X}/moe/switch_classic/base/e{n}/checkpoint_{step}"
        for n, step in ((8, 500100), (16, 550000), (32, 550000), (64, 550000), (128, 550000),
                        (256, 550000))
    },
    "switch_large_128": f"Hugging Face google/switch-large-128, or "
    f"{_T5X}/moe/switch_classic/large/e128/checkpoint_483100",
}  # fmt: skip
_NO_PUBLIC = (
    "no public checkpoint: pre-train one (python -m flan_moe.cli.train --gin_file="
    "gin_configs/models/{model}.gin --gin_file=gin_configs/runs/pretrain.gin "
    "--gin.MIXTURE_OR_TASK_NAME='c4_span_corruption' ...) or build one from a dense model "
    "(upcycling)"
)


def pretrained_macro(role: str) -> str:
    """The gin macro naming a role's pretrained checkpoint, e.g. ``PRETRAINED_SWITCH_E8``."""
    return f"PRETRAINED_{role.upper()}"


def experiment_roles(experiment: Experiment) -> tuple[str, ...]:
    """The model roles an experiment trains, in first-use order."""
    return tuple(dict.fromkeys(r.role for r in experiment.runs))


def check_starting_points(experiment: Experiment, scale: Scale) -> None:
    """Raises ``ValueError`` naming every missing pretrained checkpoint / the vocabulary.

    Scales that pre-train (``pretrain_steps`` > 0) need nothing; base and paper need a
    checkpoint per role (``PRETRAINED_<ROLE>``) and T5's vocabulary (``VOCABULARY``).
    Cheap: runs before any stage starts.
    """
    problems = []
    if scale.vocabulary is None:
        problems.append(f"VOCABULARY (the run's vocabulary; get {T5_VOCABULARY_SOURCE})")
    elif scale.vocabulary != "byte" and not os.path.isfile(scale.vocabulary):
        problems.append(f"VOCABULARY file {scale.vocabulary!r} does not exist")
    for role in experiment_roles(experiment):
        path = scale.pretrained.get(role)
        if path and "://" not in path and not os.path.exists(path):
            problems.append(
                f"{pretrained_macro(role)} = {path!r} does not exist (a Hugging Face repo: "
                "download it first, e.g. `huggingface-cli download <repo> --local-dir DIR`)"
            )
    if scale.requires_pretrained:
        for role in experiment_roles(experiment):
            if not scale.pretrained.get(role):
                model = scale.models[role]
                where = PRETRAINED_SOURCES.get(model, _NO_PUBLIC.format(model=model))
                problems.append(
                    f"{pretrained_macro(role)} (role {role!r}, model {model}): get {where}"
                )
    if problems:
        raise ValueError(
            f"{experiment.name} at scale {scale.name!r} starts from pretrained checkpoints; "
            "missing or wrong:\n  " + "\n  ".join(problems) + "\nSet them in the experiment's gin "
            "file, or pass --pretrained ROLE=PATH / --vocabulary PATH (a checkpoint is an "
            "orbax MODEL_DIR, a Hugging Face folder or a T5X checkpoint directory)."
        )

"""Each bad input gets one clear error that names the problem and the fix (issue 14, item 6).

The commands run in-process through ``validation.run_cli`` (what ``python -m ...`` runs), so
a case checks the exit status and the whole stderr: one ``error: ...`` line, no traceback.
Every case fails in validation, before any model is built, so the file stays fast.
"""

import json
import shutil
from pathlib import Path

import gin
import pytest

from flan_moe.cli import eval as eval_cli
from flan_moe.cli import experiment as experiment_cli
from flan_moe.cli import train as train_cli
from flan_moe.cli import validation
from flan_moe.data import heldout, records
from flan_moe.data.malformed import MalformedRecordError

MODEL = "gin_configs/models/t5_1_1_tiny.gin"
RUN = "gin_configs/runs/pretrain.gin"

# (id, extra train flags, expected message regex)
TRAIN_CASES = [
    (
        "initial-checkpoint-typo",
        ["--gin.INITIAL_CHECKPOINT=/tmp/ckpt"],
        r"macro INITIAL_CHECKPOINT is set but nothing reads it \(did you mean "
        r"'INITIAL_CHECKPOINT_PATH'\?\)",
    ),
    ("batch-size-typo", ["--gin.BATCH_SIZ=2"], r"BATCH_SIZ .*did you mean 'BATCH_SIZE'"),
    ("train-steps-typo", ["--gin.TRAIN_STEP=5"], r"did you mean 'TRAIN_STEPS'"),
    ("model-dir-typo", ["--gin.MODEL_DR=/tmp/x"], r"did you mean 'MODEL_DIR'"),
    ("lowercase-macro", ["--gin.batch_size=4"], r"did you mean 'BATCH_SIZE'"),
    (
        "param-typo",
        ["--gin.OptimizerConfig.learning_rat=1e-3"],
        r"doesn't have a parameter named 'learning_rat'.*did you mean 'learning_rate'",
    ),
    (
        "configurable-typo",
        ["--gin.OptimizrConfig.learning_rate=1e-3"],
        r"No configurable matching 'OptimizrConfig'.*did you mean 'OptimizerConfig'",
    ),
    ("configurable-case", ["--gin.optimizerconfig.name=adamw"], r"did you mean 'OptimizerConfig'"),
    ("loss-param-typo", ["--gin.LossConfig.zloss=1e-4"], r"did you mean 'z_loss'"),
    ("mesh-param-typo", ["--gin.make_mesh.experts=2"], r"did you mean 'expert'"),
    (
        "denylisted-train-steps",
        ["--gin.TrainConfig.train_steps=3"],
        r"denylisted kwarg 'train_steps'.*--gin.TRAIN_STEPS=",
    ),
    (
        "syntax-unclosed",
        ["--gin_bindings=OptimizerConfig.learning_rate = (1"],
        r"gin syntax error.*close brackets",
    ),
    (
        "syntax-double-equals",
        ["--gin_bindings=OptimizerConfig.learning_rate = = 1"],
        r"gin syntax error",
    ),
    (
        "undefined-macro-reference",
        ["--gin.TrainConfig.seed=%SEEDX"],
        r"macro %SEEDX is used but never set",
    ),
    (
        "learning-rate-word",
        ["--gin.OptimizerConfig.learning_rate=fast"],
        r"OptimizerConfig.learning_rate = 'fast' is not a float",
    ),
    (
        "learning-rate-list",
        ["--gin.OptimizerConfig.learning_rate=[1e-3]"],
        r"learning_rate = \[0.001\] is not a float",
    ),
    (
        "optimizer-name",
        ["--gin.OptimizerConfig.name=adamx"],
        r"name = 'adamx' is not one of 'adafactor', 'adamw' \(did you mean 'adamw'\?\)",
    ),
    (
        "schedule-name",
        ["--gin.OptimizerConfig.schedule=linear"],
        r"schedule = 'linear' is not one of 'rsqrt', 'constant', 'cosine'",
    ),
    (
        "warmup-float",
        ["--gin.OptimizerConfig.warmup_steps=1.5"],
        r"warmup_steps = 1.5 is not an int",
    ),
    ("freeze-unknown", ["--gin.OptimizerConfig.freeze=gates"], r"OptimizerConfig: .*gates"),
    (
        "grad-norm-word",
        ["--gin.OptimizerConfig.max_grad_norm=big"],
        r"max_grad_norm = 'big' is not a float or None",
    ),
    ("seed-word", ["--gin.TrainConfig.seed=abc"], r"TrainConfig.seed = 'abc' is not an int"),
    (
        "checkpoint-every-zero",
        ["--gin.TrainConfig.checkpoint_every=0"],
        r"TrainConfig: checkpoint_every and log_every must be >= 1",
    ),
    (
        "keep-checkpoints-word",
        ["--gin.TrainConfig.keep_checkpoints=two"],
        r"keep_checkpoints = 'two' is not an int or None",
    ),
    (
        "label-smoothing-range",
        ["--gin.LossConfig.label_smoothing=1.5"],
        r"label_smoothing must be in \[0, 1\)",
    ),
    ("z-loss-word", ["--gin.LossConfig.z_loss=high"], r"z_loss = 'high' is not a float"),
    ("pack-word", ["--gin.DataOptions.pack=maybe"], r"pack = 'maybe' is not a bool"),
    ("batch-size-zero", ["--gin.BATCH_SIZE=0"], r"BATCH_SIZE must be a whole number >= 1, got 0"),
    ("batch-size-negative", ["--gin.BATCH_SIZE=-4"], r"BATCH_SIZE must be .* got -4"),
    ("batch-size-word", ["--gin.BATCH_SIZE=abc"], r"BATCH_SIZE must be .* got 'abc'"),
    ("batch-size-float", ["--gin.BATCH_SIZE=2.5"], r"BATCH_SIZE must be .* got 2.5"),
    ("train-steps-negative", ["--gin.TRAIN_STEPS=-1"], r"TRAIN_STEPS must be .* >= 0, got -1"),
    ("train-steps-word", ["--gin.TRAIN_STEPS=many"], r"TRAIN_STEPS must be .* got 'many'"),
    (
        "lengths-zero",
        ['--gin.TASK_FEATURE_LENGTHS={"inputs": 0, "targets": 4}'],
        r"TASK_FEATURE_LENGTHS must be .*positive whole numbers",
    ),
    (
        "lengths-missing-targets",
        ['--gin.TASK_FEATURE_LENGTHS={"inputs": 8}'],
        r"TASK_FEATURE_LENGTHS must be \{'inputs': n, 'targets': m\}",
    ),
    ("lengths-int", ["--gin.TASK_FEATURE_LENGTHS=512"], r"TASK_FEATURE_LENGTHS must be"),
    (
        "lengths-key-typo",
        ['--gin.TASK_FEATURE_LENGTHS={"input": 8, "targets": 4}'],
        r"TASK_FEATURE_LENGTHS must be",
    ),
    (
        "model-name-typo",
        ["--gin.MODEL_NAME=switch_tiny8"],
        r"unknown MODEL_NAME 'switch_tiny8' \(did you mean 'switch_tiny_8'\?\)",
    ),
    ("model-name-unknown", ["--gin.MODEL_NAME=gpt5"], r"unknown MODEL_NAME 'gpt5'.*gin_configs"),
    (
        "override-field-typo",
        ['--gin.MODEL_OVERRIDES={"d_modl": 64}'],
        r"unknown model field 'd_modl' \(did you mean 'd_model'\?\)",
    ),
    (
        "override-moe-on-dense",
        ['--gin.MODEL_OVERRIDES={"moe": {"num_experts": 4}}'],
        r"MODEL_OVERRIDES sets moe fields but model 'tiny' is dense",
    ),
    ("override-not-dict", ["--gin.MODEL_OVERRIDES=5"], r"MODEL_OVERRIDES must be a dict"),
    (
        "initial-checkpoint-missing",
        ["--gin.INITIAL_CHECKPOINT_PATH=/no/such/ckpt"],
        r"INITIAL_CHECKPOINT_PATH '/no/such/ckpt' does not exist",
    ),
    ("mixture-empty", ["--gin.MIXTURE_OR_TASK_NAME="], r"MIXTURE_OR_TASK_NAME must be a non-empty"),
    (
        "vocabulary-missing",
        ["--gin.DataOptions.vocabulary=/no/such/spm.model"],
        r"_vocab_size: .*fix DataOptions.vocabulary",
    ),
    ("mesh-negative", ["--gin.make_mesh.expert=-2"], r"make_mesh: .*fix its binding"),
    ("mesh-two-wildcards", ["--gin.make_mesh.expert=-1"], r"at most one of data/expert/model"),
    (
        "gin-file-missing",
        ["--gin_file=gin_configs/models/nope.gin"],
        r"gin file 'gin_configs/models/nope.gin' not found.*--gin_search_paths",
    ),
    ("gin-flag-without-value", ["--gin.MODEL_DIR"], r"write --gin.NAME=VALUE"),
]


def _run(main, argv, capsys) -> tuple[int, str]:
    try:
        code = validation.run_cli(main, argv)
    except SystemExit as e:  # argparse's own usage errors
        code = e.code
    err = capsys.readouterr().err
    gin.clear_config()
    return code, err


def _assert_one_clear_error(code, err, pattern):
    assert code == validation.EXIT_USAGE, err
    assert "Traceback" not in err
    assert err.startswith("error: "), err
    assert len(err.strip().splitlines()) == 1, err
    assert __import__("re").search(pattern, err), err


@pytest.mark.parametrize(
    "extra,pattern", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES]
)
def test_train_input_errors(extra, pattern, tmp_path, capsys):
    argv = [
        f"--gin_file={MODEL}",
        f"--gin_file={RUN}",
        f"--gin.MODEL_DIR={tmp_path / 'run'}",
        "--gin.TRAIN_STEPS=1",
        '--gin.TASK_FEATURE_LENGTHS={"inputs": 8, "targets": 4}',
        "--gin.BATCH_SIZE=8",
        *extra,
    ]
    code, err = _run(train_cli.main, argv, capsys)
    _assert_one_clear_error(code, err, pattern)
    assert not (tmp_path / "run" / "checkpoint_1").exists()


def test_train_model_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    argv = [f"--gin_file={MODEL}", f"--gin_file={RUN}", f"--gin.MODEL_DIR={tmp_path / 'f'}",
            "--gin.TRAIN_STEPS=1"]  # fmt: skip
    code, err = _run(train_cli.main, argv, capsys)
    _assert_one_clear_error(code, err, r"MODEL_DIR .* is a file; pass a directory")


def test_train_argparse_errors_exit_2(capsys):
    code, err = _run(train_cli.main, ["--gin.MODEL_DIR=/tmp/x"], capsys)
    assert code == 2 and "give at least one --gin_file" in err
    code, err = _run(train_cli.main, [f"--gin_file={MODEL}", "--multihst"], capsys)
    assert code == 2 and "unrecognized arguments: --multihst" in err


def test_train_macros_match_what_the_command_reads():
    source = Path(train_cli.__file__).read_text()
    read = set(__import__("re").findall(r'query_macro\(\s*"([A-Z_0-9]+)"', source))
    assert read == set(validation.TRAIN_MACROS)


# (id, eval flags, expected message regex); {data}, {tmp} and {file} are filled in.
EVAL_CASES = [
    ("suites-empty", ["--suites="], r"--suites is empty; .*--suites=mmlu,bbh"),
    ("suite-typo", ["--suites=mmlu,bbhh"], r"unknown suite 'bbhh' \(did you mean 'bbh'\?\)"),
    ("suite-case", ["--suites=MMLU"], r"unknown suite 'MMLU' \(did you mean 'mmlu'\?\)"),
    ("suite-unknown", ["--suites=gsm9k"], r"unknown suite 'gsm9k' \(did you mean 'gsm8k'\?\)"),
    ("shots-word", ["--shots=abc"], r"--shots: 'abc' is not a whole number; .*--shots=0,5"),
    ("shots-negative", ["--shots=0,-1"], r"--shots: -1 must be >= 0"),
    ("shots-empty", ["--shots="], r"--shots is empty"),
    ("shots-float", ["--shots=2.5"], r"--shots: '2.5' is not a whole number"),
    ("mode-typo", ["--mode=drect"], r"unknown mode 'drect' \(did you mean 'direct'\?\)"),
    ("mode-empty", ["--mode=,"], r"--mode is empty"),
    ("batch-size-zero", ["--batch_size=0"], r"--batch_size must be a number >= 1, got 0"),
    ("batch-size-negative", ["--batch_size=-3"], r"--batch_size must be .* got -3"),
    ("beam-size-zero", ["--beam_size=0"], r"--beam_size must be a number >= 1"),
    ("subsample-zero", ["--subsample=0"], r"--subsample must be a number >= 1"),
    ("max-input-length-zero", ["--max_input_length=0"], r"--max_input_length must be"),
    ("max-decode-length-negative", ["--max_decode_length=-5"], r"--max_decode_length must be"),
    ("top-k-negative", ["--top_k=-1"], r"--top_k must be a number >= 0"),
    ("alpha-negative", ["--alpha=-0.5"], r"--alpha must be a number >= 0"),
    (
        "sample-temperature-zero",
        ["--decode=sample", "--temperature=0"],
        r"--temperature must be > 0 for --decode=sample",
    ),
    ("steps-word", ["--steps=last"], r"--steps: 'last' is not a whole number"),
    ("data-parallel-zero", ["--data_parallel=0"], r"--data_parallel must be >= 1 or -1"),
    ("two-wildcards", ["--expert_parallel=-1"], r"only one of .* may be -1"),
    (
        "checkpoint-dir-missing",
        ["--checkpoint_dir=/no/such/run"],
        r"--checkpoint_dir '/no/such/run' does not exist; pass a MODEL_DIR",
    ),
    (
        "data-dir-missing",
        ["--data_dir=/no/such/data"],
        r"--data_dir '/no/such/data' does not exist",
    ),
    (
        "data-dir-without-suite",
        ["--data_dir={tmp}"],
        r"suite mmlu needs .*mmlu but it does not exist",
    ),
    ("output-dir-is-file", ["--output_dir={file}"], r"--output_dir .* is a file"),
]


@pytest.mark.parametrize(
    "extra,pattern", [c[1:] for c in EVAL_CASES], ids=[c[0] for c in EVAL_CASES]
)
def test_eval_input_errors(extra, pattern, tmp_path, data_dir, capsys):
    (tmp_path / "file").write_text("x")
    fill = {"data": str(data_dir), "tmp": str(tmp_path), "file": str(tmp_path / "file")}
    base = ["--baseline=random", f"--output_dir={tmp_path / 'out'}", f"--data_dir={data_dir}"]
    code, err = _run(eval_cli.main, base + [e.format(**fill) for e in extra], capsys)
    _assert_one_clear_error(code, err, pattern)
    assert not (tmp_path / "out" / "results.json").exists()


def test_eval_argparse_type_errors_exit_2(capsys):
    code, err = _run(eval_cli.main, ["--baseline=random", "--batch_size=abc"], capsys)
    assert code == 2 and "invalid int value: 'abc'" in err
    code, err = _run(eval_cli.main, ["--baseline=random", "--split=dev"], capsys)
    assert code == 2 and "invalid choice: 'dev'" in err


EXPERIMENT_CASES = [
    ("name-typo", ["setting_2"], r"unknown experiment 'setting_2' \(did you mean 'setting2'\?\)"),
    (
        "scale-typo",
        ["setting2", "--scale=tinny"],
        r"unknown scale 'tinny' \(did you mean 'tiny'\?\)",
    ),
    (
        "gin-file-missing",
        ["gin_configs/experiments/nope.gin"],
        r"'gin_configs/experiments/nope.gin'"
        r" does not exist",
    ),
    ("output-dir-is-file", ["setting2", "--output_dir={file}"], r"--output_dir .* is a file"),
    ("gin-macro-typo", ["{gin}"], r"macro SCAL is set but nothing reads it \(did you mean 'SCALE'"),
]


@pytest.mark.parametrize("argv,pattern", [c[1:] for c in EXPERIMENT_CASES],
                         ids=[c[0] for c in EXPERIMENT_CASES])  # fmt: skip
def test_experiment_input_errors(argv, pattern, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "typo.gin").write_text(
        'EXPERIMENT = "setting2_instruction_tuning"\nSCAL = "tiny"\n'
    )
    argv = [a.format(file=tmp_path / "file", gin=tmp_path / "typo.gin") for a in argv]
    code, err = _run(experiment_cli.main, argv, capsys)
    _assert_one_clear_error(code, err, pattern)


# ------------------------------------------------------------------------------- data files

MINI_GOOD = {"query": "Is the sky blue?", "choices": ["yes", "no"], "gold": 0}
# (id, file written as flan_mini/train/boolq.jsonl, expected message regex)
MINI_CASES = [
    (
        "missing-gold",
        [MINI_GOOD, {"query": "q", "choices": ["yes", "no"]}],
        r"boolq.jsonl line 2: missing key 'gold' \(expected .*\); fix or remove that record",
    ),
    (
        "invalid-json",
        ['{"query": "q", "choices": ['],
        r"boolq.jsonl line 1: invalid JSON .*fix or remove that record",
    ),
    ("not-an-object", [["a", "b"]], r"boolq.jsonl line 1: TypeError: a JSON list, not an object"),
    ("gold-out-of-range", [{**MINI_GOOD, "gold": 5}], r"line 1: IndexError"),
    ("gold-not-int", [{**MINI_GOOD, "gold": "yes"}], r"line 1: TypeError"),
    ("choices-missing", [{"query": "q", "gold": 0}], r"line 1: missing key 'choices'"),
]


@pytest.mark.parametrize(
    "rows,pattern", [c[1:] for c in MINI_CASES], ids=[c[0] for c in MINI_CASES]
)
def test_flan_mini_records_name_file_and_line(rows, pattern, tmp_path):
    path = tmp_path / "flan_mini" / "train" / "boolq.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    with pytest.raises(MalformedRecordError, match=pattern):
        records.read_records("flan_mini", "boolq", data_dir=tmp_path)


def test_flan_cot_row_with_missing_field(tmp_path):
    path = tmp_path / "flan_cot" / "creak_train.tsv"
    path.parent.mkdir(parents=True)
    path.write_text("q1\ta1\tr1\nq2\ta2\n")
    with pytest.raises(MalformedRecordError, match=r"creak_train.tsv row 2: ValueError: 2 tab-"):
        records.read_records("flan_cot", "creak", data_dir=tmp_path)


def _copy_bbh(data_dir: Path, tmp_path: Path) -> Path:
    shutil.copytree(data_dir / "bbh", tmp_path / "bbh")
    return tmp_path / "bbh" / "bbh" / f"{heldout.BBH_FILES[0]}.json"


@pytest.mark.parametrize(
    "content,pattern",
    [
        ({"examples": [{"input": "x"}]}, r"example 0: missing key 'target'"),
        ({"examples": [{"target": "x"}]}, r"example 0: missing key 'input'"),
        ({"rows": []}, r"\(whole file\): missing key 'examples'"),
        ("{not json", r"\(whole file\): invalid JSON"),
    ],
    ids=["no-target", "no-input", "no-examples", "invalid-json"],
)
def test_bbh_file_errors_name_file_and_example(content, pattern, data_dir, tmp_path):
    path = _copy_bbh(data_dir, tmp_path)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(MalformedRecordError, match=f"{path.name} {pattern}"):
        heldout.load_suite("bbh", mode="direct", shots=0, data_dir=str(tmp_path))


def test_gsm8k_heldout_row_without_answer(data_dir, tmp_path):
    path = tmp_path / "flan_mini" / "heldout" / "gsm8k_test.jsonl"
    path.parent.mkdir(parents=True)
    (tmp_path / "flan_cot").mkdir()
    shutil.copy(data_dir / "flan_cot" / "gsm8k_train.tsv", tmp_path / "flan_cot")
    path.write_text(json.dumps({"context": "1+1?", "answer": "2"}) + "\n\n" + '{"context": "x"}\n')
    with pytest.raises(
        MalformedRecordError, match=r"gsm8k_test.jsonl line 3: missing key 'answer'"
    ):
        heldout.load_suite("gsm8k", mode="direct", shots=0, data_dir=str(tmp_path))

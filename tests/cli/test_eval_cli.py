"""The eval command line: a sweep over real orbax checkpoints skips what results.json holds."""

import csv
import json
import os
from pathlib import Path

import jax.numpy as jnp
import pytest

from flan_moe.cli import eval as eval_cli
from flan_moe.evaluation import results
from flan_moe.model.config import get_config
from flan_moe.model.transformer import EncoderDecoder
from flan_moe.training import checkpoints
from flan_moe.training.train_state import TrainState
from tests.random_params import random_params


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A MODEL_DIR with checkpoints at steps 1 and 2, written by the trainer's Checkpointer."""
    cfg = get_config("tiny", dtype="float32")
    directory = tmp_path_factory.mktemp("run")
    saver = checkpoints.Checkpointer(str(directory), keep=None)
    metadata = {
        "vocabulary": "byte",
        "task_feature_lengths": {"inputs": 64, "targets": 2},
        "model_config": cfg.to_dict(),
    }
    for step in (1, 2):
        state = TrainState(
            step=jnp.asarray(step, jnp.int32),
            params=random_params(EncoderDecoder(cfg), step),
            opt_state={"count": jnp.zeros((), jnp.int32)},
            rng=jnp.zeros((2,), jnp.uint32),
        )
        saver.save(state, data_position=step, metadata=metadata)
        saver.wait()
    saver.close()
    assert [s for s, _ in checkpoints.list_checkpoints(str(directory))] == [1, 2]
    return directory


def _args(model_dir: Path, data_root: Path, *extra: str) -> list[str]:
    return [
        f"--checkpoint_dir={model_dir}",
        "--suites=bbh",
        "--mode=direct",
        "--shots=0",
        "--subsample=1",
        "--batch_size=32",
        "--max_decode_length=2",
        f"--data_dir={data_root}",
        "--no_progress",
        *extra,
    ]


def test_sweep_skips_evaluated_checkpoints(model_dir, data_root, monkeypatch, capsys):
    loaded: list[str] = []
    real_load = checkpoints.load_params

    def counting_load(path):
        loaded.append(os.path.basename(path))
        return real_load(path)

    monkeypatch.setattr(checkpoints, "load_params", counting_load)
    results_file = model_dir / "results.json"

    eval_cli.main(_args(model_dir, data_root, "--steps=1"))
    assert loaded == ["checkpoint_1"]
    first = results.read_results(results_file)
    assert [e.checkpoint for e in first] == ["checkpoint_1"]
    assert first[0].metadata["max_input_length"] == 64  # from the checkpoint's lengths
    assert first[0].metadata["truncation"]["prompts_truncated_left"] > 0
    assert first[0].summary["num_examples"] == 27

    loaded.clear()
    eval_cli.main(_args(model_dir, data_root))  # the whole MODEL_DIR: a sweep
    assert loaded == ["checkpoint_2"]  # step 1 is in results.json: not even loaded
    entries = results.read_results(results_file)
    assert [e.checkpoint for e in entries] == ["checkpoint_1", "checkpoint_2"]
    assert entries[0].created == first[0].created
    out = capsys.readouterr().out
    assert "skip checkpoint_1 bbh direct 0-shot generation" in out
    assert "checkpoint_2  bbh" in out  # the table
    for entry in entries:
        records = results.read_predictions_jsonl(model_dir / entry.predictions_file)
        assert len(records) == 27

    loaded.clear()
    eval_cli.main(_args(model_dir, data_root))
    assert loaded == []
    eval_cli.main(_args(model_dir, data_root, "--force", "--latest_only"))
    assert loaded == ["checkpoint_2"]


def test_baseline_through_the_cli(tmp_path, data_root):
    eval_cli.main(
        [
            "--baseline=constant",
            f"--output_dir={tmp_path}",
            "--suites=mmlu",
            "--subsample=3",
            f"--data_dir={data_root}",
            "--no_progress",
        ]
    )
    (entry,) = results.read_results(tmp_path / "results.json")
    assert (entry.checkpoint, entry.method) == ("baseline", "baseline_constant")
    # Reference: option A answers the first 3 questions of each subject when the gold is A.
    right = total = 0
    for path in sorted((data_root / "mmlu" / "val").glob("*_val.csv")):
        with open(path, encoding="utf-8", newline="") as f:
            gold = [row[5] for row in csv.reader(f) if row][:3]
        right += gold.count("A")
        total += len(gold)
    assert entry.summary["num_examples"] == total
    assert entry.summary["num_correct"] == right
    lines = (tmp_path / entry.predictions_file).read_text().splitlines()
    assert json.loads(lines[0])["output"] == "A"


def test_shots_are_capped_per_suite_and_bad_flags_are_named(tmp_path, data_root, capsys):
    args = eval_cli.build_parser().parse_args(
        ["--suites=mmlu,bbh", "--shots=5", "--baseline=random"]
    )
    assert eval_cli.plan(args) == [("mmlu", "direct", 5, 5), ("bbh", "direct", 5, 3)]
    with pytest.raises(ValueError, match="unknown suite"):  # validation.InputError
        eval_cli.main(["--baseline=random", f"--output_dir={tmp_path}", "--suites=mmlu,xyz"])
    with pytest.raises(SystemExit, match="mode=direct"):
        eval_cli.main(
            ["--baseline=random", f"--output_dir={tmp_path}", "--method=score", "--mode=cot"]
        )
    with pytest.raises(SystemExit, match="no complete checkpoint"):
        eval_cli.main([f"--checkpoint_dir={tmp_path}"])


def test_val_and_test_splits_are_separate_entries(tmp_path, data_root, capsys):
    """--split=val then --split=test into one folder: two entries (n=1531 and n=14042), two
    prediction files; the test run neither skips nor returns the val numbers."""
    common = ["--baseline=constant", f"--output_dir={tmp_path}", "--suites=mmlu",
              f"--data_dir={data_root}", "--no_progress"]  # fmt: skip
    assert eval_cli.main([*common, "--split=val"]) == 0
    assert eval_cli.main([*common, "--split=test"]) == 0
    entries = results.read_results(tmp_path / "results.json")
    by_split = {e.split: e for e in entries}
    assert sorted(by_split) == ["test", "val"]
    assert by_split["val"].summary["num_examples"] == 1531
    assert by_split["test"].summary["num_examples"] == 14042
    assert by_split["val"].predictions_file != by_split["test"].predictions_file
    for entry in entries:
        assert (tmp_path / entry.predictions_file).exists()
        low_high = entry.metadata["intervals"]["macro"]
        assert low_high[1] <= entry.summary["macro_avg"] <= low_high[2]
    # a second --split=test run skips: it is already there
    capsys.readouterr()
    assert eval_cli.main([*common, "--split=test"]) == 0
    assert "skip baseline mmlu test" in capsys.readouterr().out


def test_old_results_without_split_are_read_as_val(tmp_path, capsys):
    subtasks = {"anatomy": results.SubtaskResult(1, 2)}
    entry = results.make_entry(checkpoint="c", suite="mmlu", mode="direct", shots=0,
                               method="generation", subtasks=subtasks)  # fmt: skip
    data = {"schema_version": 1, "entries": [{**entry.to_json(), "split": None}]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    (read,) = results.read_results(path)
    assert read.split == "val" and read.key.split == "val"
    assert "reading them as split 'val'" in capsys.readouterr().err


def test_sweep_writes_eval_scalars_for_tensorboard(model_dir, data_root, tmp_path):
    out = tmp_path / "sweep"
    assert eval_cli.main(_args(model_dir, data_root, f"--output_dir={out}")) == 0
    lines = [json.loads(x) for x in (out / "eval" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    entries = {e.checkpoint: e for e in results.read_results(out / "results.json")}
    tag = "bbh/direct_0shot_generation_sub1"
    for line in lines:
        entry = entries[f"checkpoint_{line['step']}"]
        assert line[f"{tag}/macro"] == pytest.approx(100 * entry.summary["macro_avg"])
        assert line[f"{tag}/bbh23"] == pytest.approx(100 * entry.summary["macro_avg_tasks"])
    assert list((out / "eval").glob("events.out.tfevents.*"))


def _hf_t5_folder(path: Path, data_root: Path) -> Path:
    """A random-weight HF T5 v1.1 folder (untied head) with a small SentencePiece vocabulary."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    spm = pytest.importorskip("sentencepiece")
    path.mkdir()
    lines = [
        ex["input"]
        for name in ("boolean_expressions", "navigate", "web_of_lies")
        for ex in json.loads((data_root / f"bbh/bbh/{name}.json").read_text())["examples"]
    ]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(path / "spiece"), vocab_size=120,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, hard_vocab_limit=False,
        minloglevel=2,
    )  # fmt: skip
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=128, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight))
    model.save_pretrained(path)
    return path


@pytest.mark.slow  # torch + transformers + a SentencePiece training: ~30 s on 2 busy cores
def test_hugging_face_folder_is_evaluated_with_its_vocabulary(tmp_path, data_root):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder = _hf_t5_folder(tmp_path / "t5", data_root)
    out = tmp_path / "out"
    argv = [f"--hf_model_dir={folder}", f"--output_dir={out}", "--suites=bbh", "--mode=direct",
            "--shots=0", "--subsample=1", "--max_decode_length=4", "--max_input_length=128",
            "--batch_size=32",
            f"--data_dir={data_root}", "--no_progress"]  # fmt: skip
    assert eval_cli.main(argv) == 0
    (entry,) = results.read_results(out / "results.json")
    assert entry.checkpoint == "hf_t5" and entry.summary["num_examples"] == 27
    assert entry.metadata["vocabulary"] == str(folder / "spiece.model")
    # Our greedy output equals Hugging Face's greedy generation on the same token ids.
    from flan_moe.data import heldout
    from flan_moe.data.vocabularies import get_vocabulary

    vocab = get_vocabulary(str(folder / "spiece.model"))
    record = next(
        r for r in results.read_predictions_jsonl(out / entry.predictions_file)
        if r.task == "boolean_expressions"
    )  # fmt: skip
    example = heldout.load_suite("bbh", mode="direct", shots=0, data_dir=str(data_root))[
        "boolean_expressions"
    ][0]
    ids = torch.tensor([(vocab.encode(example.inputs) + [1])[-128:]])  # cut from the left
    hf = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    generated = hf.generate(ids, max_new_tokens=4, do_sample=False, num_beams=1)
    assert record.output == vocab.decode(generated[0, 1:].tolist())

"""Download the project's public data into $FLAN_MOE_DATA_DIR (default ./data) and verify it.

    FLAN_MOE_DATA_DIR=./data python scripts/fetch_data.py            # download + verify
    python scripts/fetch_data.py --verify-only --data-dir ../shared/data

Sources (public repositories at pinned commits, as listed in the data README):

- BBH: suzgunmirac/BIG-Bench-Hard @ 9ee07bd4 -> ``bbh/bbh/*.json``, ``bbh/cot-prompts/*.txt``
- MMLU: hiyouga/LLaMA-Factory @ c4c6ef28, ``evaluation/mmlu/mmlu.zip`` -> ``mmlu/{dev,val,test}``
- FLAN v2 CoT: google-research/FLAN @ e9e4ec6e, ``flan/v2/cot_data`` -> ``flan_cot/*_train.tsv``
- FLAN-2021/T0-style sets, GSM8K test, SVAMP: mosaicml/llm-foundry @ 8c8dd48f,
  ``scripts/eval/local_data`` -> ``flan_mini/{train,heldout}/*.jsonl``

Verification checks the file layout (every expected file present, non-empty, with the expected
number of records) and, with ``--checksums FILE``, each file's SHA-256 against a manifest written
by ``--write-checksums FILE`` on a trusted copy.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
import urllib.request
import zipfile
from pathlib import Path

RAW = "https://raw.githubusercontent.com"
BBH_COMMIT = "9ee07bd4"
MMLU_COMMIT = "c4c6ef28"
FLAN_COMMIT = "e9e4ec6e"
FOUNDRY_COMMIT = "8c8dd48f"

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The file lists live in the package (one source of truth; both modules are pure Python).
from flan_moe.data.heldout import BBH_FILES, MMLU_SUBJECTS  # noqa: E402
from flan_moe.data.records import COT_DATASETS as COT_FILES  # noqa: E402
from flan_moe.data.records import MINI_DATASETS as MINI_TRAIN  # noqa: E402
from flan_moe.training.integrity import file_sha256  # noqa: E402

MINI_HELDOUT = ("gsm8k_test", "svamp")
# Expected record counts (from the data README) for a layout check.
EXPECTED_COUNTS = {
    "bbh_examples": 6511,
    "mmlu_val_rows": 1531,
    "mmlu_test_rows": 14042,
    "cot_rows": 33443,
    "mini_train_rows": 22316,  # the data README says 22,307; the files hold 22,316
    "gsm8k_test_rows": 1319,
    "svamp_rows": 300,
}


@dataclasses.dataclass(frozen=True)
class Download:
    """One file to fetch: URL -> path under the data dir (``unzip_to`` for archives)."""

    url: str
    dest: str
    unzip_to: str | None = None


def manifest() -> list[Download]:
    """Every download, in order."""
    items = []
    bbh = f"{RAW}/suzgunmirac/BIG-Bench-Hard/{BBH_COMMIT}"
    for name in BBH_FILES:
        items.append(Download(f"{bbh}/bbh/{name}.json", f"bbh/bbh/{name}.json"))
        items.append(Download(f"{bbh}/cot-prompts/{name}.txt", f"bbh/cot-prompts/{name}.txt"))
    items.append(Download(f"{bbh}/LICENSE", "bbh/LICENSE"))
    items.append(
        Download(
            f"https://github.com/hiyouga/LLaMA-Factory/raw/{MMLU_COMMIT}/evaluation/mmlu/mmlu.zip",
            "mmlu/mmlu.zip",
            unzip_to="mmlu",
        )
    )
    flan = f"{RAW}/google-research/FLAN/{FLAN_COMMIT}/flan/v2/cot_data"
    for name in COT_FILES:
        items.append(Download(f"{flan}/{name}_train.tsv", f"flan_cot/{name}_train.tsv"))
    foundry = f"{RAW}/mosaicml/llm-foundry/{FOUNDRY_COMMIT}/scripts/eval/local_data"
    foundry_paths = {
        "aqua": "symbolic_problem_solving/aqua.jsonl",
        "arc_challenge": "world_knowledge/arc_challenge.jsonl",
        "arc_easy": "world_knowledge/arc_easy.jsonl",
        "boolq": "reading_comprehension/boolq.jsonl",
        "commonsense_qa": "commonsense_reasoning/commonsense_qa.jsonl",
        "copa": "commonsense_reasoning/copa.jsonl",
        "jeopardy_all": "world_knowledge/jeopardy_all.jsonl",
        "math_qa": "symbolic_problem_solving/math_qa.jsonl",
        "openbook_qa": "commonsense_reasoning/openbook_qa.jsonl",
        "piqa": "commonsense_reasoning/piqa.jsonl",
        "siqa": "commonsense_reasoning/siqa.jsonl",
        "triviaqa_sm_sub": "world_knowledge/triviaqa_sm_sub.jsonl",
        "winograd_wsc": "language_understanding/winograd_wsc.jsonl",
        "winogrande": "language_understanding/winogrande.jsonl",
        "gsm8k_test": "symbolic_problem_solving/gsm8k.jsonl",
        "svamp": "symbolic_problem_solving/svamp.jsonl",
    }
    for name in MINI_TRAIN:
        items.append(Download(f"{foundry}/{foundry_paths[name]}", f"flan_mini/train/{name}.jsonl"))
    for name in MINI_HELDOUT:
        items.append(
            Download(f"{foundry}/{foundry_paths[name]}", f"flan_mini/heldout/{name}.jsonl")
        )
    return items


def expected_files(mmlu_subjects: list[str] | None = None) -> list[str]:
    """Relative paths that a complete data dir holds (MMLU subjects from the held-out module)."""
    if mmlu_subjects is None:
        mmlu_subjects = list(MMLU_SUBJECTS)
    files = [f"bbh/bbh/{n}.json" for n in BBH_FILES] + [
        f"bbh/cot-prompts/{n}.txt" for n in BBH_FILES
    ]
    for split in ("dev", "val", "test"):
        files += [f"mmlu/{split}/{s}_{split}.csv" for s in mmlu_subjects]
    files += [f"flan_cot/{n}_train.tsv" for n in COT_FILES]
    files += [f"flan_mini/train/{n}.jsonl" for n in MINI_TRAIN]
    files += [f"flan_mini/heldout/{n}.jsonl" for n in MINI_HELDOUT]
    return files


def _count_lines(path: Path) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def _count_csv_rows(path: Path) -> int:
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        return sum(1 for row in csv.reader(f) if row)


def verify_layout(root: Path) -> dict[str, int]:
    """Checks every expected file exists and the record counts; returns the counts.

    Raises ``FileNotFoundError`` listing missing files, ``ValueError`` on wrong counts.
    """
    missing = [p for p in expected_files() if not (root / p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} data files missing under {root} (first: {missing[:5]}); run "
            "`python scripts/fetch_data.py`."
        )
    counts = {
        "bbh_examples": sum(
            len(json.loads((root / f"bbh/bbh/{n}.json").read_text("utf-8"))["examples"])
            for n in BBH_FILES
        ),
        "mmlu_val_rows": sum(_count_csv_rows(p) for p in (root / "mmlu/val").glob("*.csv")),
        "mmlu_test_rows": sum(_count_csv_rows(p) for p in (root / "mmlu/test").glob("*.csv")),
        "cot_rows": sum(_count_lines(root / f"flan_cot/{n}_train.tsv") for n in COT_FILES),
        "mini_train_rows": sum(
            _count_lines(root / f"flan_mini/train/{n}.jsonl") for n in MINI_TRAIN
        ),
        "gsm8k_test_rows": _count_lines(root / "flan_mini/heldout/gsm8k_test.jsonl"),
        "svamp_rows": _count_lines(root / "flan_mini/heldout/svamp.jsonl"),
    }
    wrong = {k: (v, EXPECTED_COUNTS[k]) for k, v in counts.items() if v != EXPECTED_COUNTS[k]}
    if wrong:
        raise ValueError(f"unexpected record counts (found, expected): {wrong}")
    return counts


def checksums(root: Path) -> dict[str, str]:
    return {p: file_sha256(root / p) for p in expected_files()}


def verify_checksums(root: Path, manifest_path: Path) -> None:
    expected = json.loads(manifest_path.read_text("utf-8"))
    bad = [p for p, digest in expected.items() if file_sha256(root / p) != digest]
    if bad:
        raise ValueError(f"{len(bad)} files fail their SHA-256 check (first: {bad[:5]})")


def download(root: Path) -> None:
    for item in manifest():
        dest = root / item.dest
        if dest.exists() or (item.unzip_to and (root / item.unzip_to / "dev").is_dir()):
            continue
        print(f"fetching {item.url}", flush=True)
        with urllib.request.urlopen(item.url, timeout=120) as r:
            payload = r.read()
        dest.parent.mkdir(parents=True, exist_ok=True)
        if item.unzip_to:
            _unzip_mmlu(payload, root / item.unzip_to)
        else:
            dest.write_bytes(payload)


def _unzip_mmlu(payload: bytes, out: Path) -> None:
    """Extracts ``{dev,val,test}/*.csv`` from the MMLU archive into ``out``."""
    with zipfile.ZipFile(io.BytesIO(payload)) as z:
        for name in z.namelist():
            parts = Path(name).parts
            if name.endswith(".csv") and len(parts) >= 2 and parts[-2] in ("dev", "val", "test"):
                target = out / parts[-2] / parts[-1]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("FLAN_MOE_DATA_DIR", "./data"))
    parser.add_argument("--verify-only", action="store_true")
    parser.add_argument("--checksums", type=Path, help="verify against this SHA-256 manifest")
    parser.add_argument("--write-checksums", type=Path, help="write a SHA-256 manifest")
    args = parser.parse_args(argv)
    root = Path(args.data_dir)
    if not args.verify_only:
        download(root)
    print(json.dumps(verify_layout(root)))
    if args.checksums:
        verify_checksums(root, args.checksums)
    if args.write_checksums:
        args.write_checksums.write_text(json.dumps(checksums(root), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

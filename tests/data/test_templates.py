"""Templates: golden strings, deterministic choices, exemplars never the evaluated example."""

import subprocess
import sys
from pathlib import Path

from flan_moe.data import templates
from flan_moe.data.records import Record, stable_hash

REPO = Path(__file__).resolve().parents[2]
MC = Record("toy", "toy/0", "Which is a fruit?", "apple", ("apple", "brick"), "Kitchen.")
MC2 = Record("toy", "toy/1", "Which is a color?", "red", ("red", "loud"))
COT = Record("toy", "toy/2", "What is 2+3?", "5", rationale="2 plus 3 is 5.")


def test_mc_golden_with_and_without_options():
    r = templates.render(MC, cot=False, with_options=True, template_index=0)
    assert r.candidates == ("Kitchen.\n\nWhich is a fruit?\n\nOPTIONS:\n- apple\n- brick",)
    assert r.targets == "apple"
    r = templates.render(MC, cot=False, with_options=False, template_index=2)
    assert r.candidates == ("Kitchen.\n\nQuestion: Which is a fruit?\nWhat is the correct answer?",)


def test_cot_golden_target_and_few_shot():
    r = templates.render(COT, cot=True, template_index=0)
    assert r.candidates == ("What is 2+3?\nLet's think step by step.",)
    assert r.targets == "2 plus 3 is 5. So the answer is 5."
    ex = Record("toy", "toy/3", "What is 1+1?", "2", rationale="1 plus 1 is 2.")
    r = templates.render(COT, cot=True, exemplars=[ex], template_index=1)
    assert r.candidates == (
        "Q: What is 1+1?\nA: Let's think first.\n1 plus 1 is 2. So the answer is 2.\n\n"
        "Q: What is 2+3?\nA: Let's think first.",
        "Q: What is 2+3?\nA: Let's think first.",
    )


def test_few_shot_candidates_drop_exemplars_never_the_question():
    r = templates.render(MC, cot=False, exemplars=[MC2], with_options=True, template_index=0)
    assert r.candidates[0] == (
        "Which is a color?\n\nOPTIONS:\n- red\n- loud\nred\n\n"
        "Kitchen.\n\nWhich is a fruit?\n\nOPTIONS:\n- apple\n- brick"
    )
    assert r.candidates[-1] == "Kitchen.\n\nWhich is a fruit?\n\nOPTIONS:\n- apple\n- brick"
    count = len  # characters as tokens
    assert templates.fit_candidates(r.candidates, 1000, count) == r.candidates[0]
    assert (
        templates.fit_candidates(r.candidates, len(r.candidates[-1]) + 1, count) == r.candidates[-1]
    )
    # Even when nothing fits, the question is kept whole (the pipeline truncates and counts).
    assert templates.fit_candidates(r.candidates, 5, count) == r.candidates[-1]


def test_exemplars_never_include_the_evaluated_example():
    pool = [Record("toy", f"toy/{i}", f"q{i % 40}", "a") for i in range(60)]
    for rec in pool:
        shots = templates.choose_exemplars(rec, pool, 5)
        assert len(shots) == 5 and len({s.example_id for s in shots}) == 5
        assert all(s.example_id != rec.example_id and s.question != rec.question for s in shots)
    # A pool holding only the example itself (or copies of its question) gives no exemplars.
    assert templates.choose_exemplars(pool[0], [pool[0], pool[40]], 3) == []


def test_choices_are_stable_across_processes():
    # Python's hash() is salted per process; stable_hash must not be.
    code = (
        "from flan_moe.data.records import stable_hash\nprint(stable_hash('template', 'toy/0'))\n"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert outs == {str(stable_hash("template", "toy/0"))}
    a = templates.render(MC, cot=False)
    assert a == templates.render(MC, cot=False)


def test_template_and_option_choices_are_spread():
    recs = [Record("toy", f"toy/{i}", "q", "a", ("a", "b")) for i in range(400)]
    rendered = [templates.render(r, cot=False) for r in recs]
    counts = [
        sum(x.template_index == i for x in rendered) for i in range(len(templates.MC_TEMPLATES))
    ]
    assert min(counts) > 60  # 100 expected each
    with_opts = sum(x.with_options for x in rendered)
    assert 150 < with_opts < 250
    fs = sum(templates.prompt_variant(r) == "fs" for r in recs)
    assert 150 < fs < 250

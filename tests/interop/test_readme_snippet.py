"""The README's Hugging Face snippet runs as written on a random T5 folder with a
SentencePiece model, and its logits equal transformers' (float32, 1e-4)."""

import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")

README = Path(__file__).resolve().parents[2] / "README.md"
PLACEHOLDER = "/path/to/flan-t5-small"


def _snippet() -> str:
    section = README.read_text().split("## Use Hugging Face checkpoints", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _folder(tmp_path: Path) -> str:
    text = tmp_path / "text.txt"
    words = [
        "hello",
        "world",
        "translate",
        "english",
        "german",
        "hallo",
        "welt",
        "the",
        "a",
        "of",
        "to",
        "and",
        "is",
        "it",
    ]
    rng = np.random.default_rng(0)
    text.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(300)))
    folder = tmp_path / "t5"
    folder.mkdir()
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(folder / "spiece"), vocab_size=24,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, model_type="unigram",
    )  # fmt: skip
    config = transformers.T5Config(
        vocab_size=48, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    model.save_pretrained(folder)
    return str(folder)


@pytest.mark.slow  # ~1-2 min on 2 busy cores (greedy generate compiles)
def test_readme_snippet_runs_and_matches_transformers(tmp_path, capsys):
    folder = _folder(tmp_path)
    code = _snippet()
    assert PLACEHOLDER in code
    namespace: dict = {}
    exec(compile(code.replace(PLACEHOLDER, folder), "README.md", "exec"), namespace)
    assert capsys.readouterr().out.strip() is not None  # it printed the decoded text
    assert namespace["config"].dtype == "float32"
    hf = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        ref = hf(
            input_ids=torch.tensor(np.asarray(namespace["inputs"])),
            decoder_input_ids=torch.tensor(np.asarray(namespace["decoder_inputs"])),
        ).logits.numpy()
    np.testing.assert_allclose(np.asarray(namespace["logits"]), ref, rtol=1e-4, atol=1e-4)
    # greedy decoding: the first generated token is the argmax after the start token
    first = int(np.asarray(namespace["tokens"])[0, 0])
    with torch.no_grad():
        start = hf(
            input_ids=torch.tensor(np.asarray(namespace["inputs"])),
            decoder_input_ids=torch.zeros((1, 1), dtype=torch.long),
        ).logits.numpy()
    assert first == int(start[0, -1].argmax())

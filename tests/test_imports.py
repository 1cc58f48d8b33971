"""The model, partitioning and training code import without TensorFlow, SeqIO or gin."""

import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent(
    """
    import sys

    class Block:
        BLOCKED = ("tensorflow", "seqio", "gin", "tensorflow_datasets", "tensorflow_text")

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ImportError(f"{name} is blocked for this test")
            return None

    sys.meta_path.insert(0, Block())
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )


def test_model_training_and_evaluation_import_without_tf_seqio_gin():
    result = _run(
        """
        import flan_moe.model, flan_moe.partitioning
        import flan_moe.models, flan_moe.decoding
        import flan_moe.training.trainer, flan_moe.training.loop, flan_moe.training.checkpoints
        import flan_moe.evaluation.evaluator, flan_moe.evaluation.scoring
        import flan_moe.model.moe, flan_moe.model.flops, flan_moe.interop.hf_switch
        import flan_moe.data.vocabularies, flan_moe.data.heldout
        from flan_moe.model.transformer import EncoderDecoder
        from flan_moe.model.config import get_config
        import jax, numpy as np
        m = EncoderDecoder(get_config("tiny"))
        x = np.ones((1, 4), np.int32)
        m.init(jax.random.PRNGKey(0), x, x, x)
        for name in ("tensorflow", "seqio", "gin"):
            assert name not in sys.modules, name
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_blocker_really_blocks():
    result = _run("import seqio")
    assert result.returncode != 0
    assert "blocked for this test" in result.stderr

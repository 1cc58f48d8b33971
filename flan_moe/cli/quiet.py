"""Keep library start-up noise off the console, and only the noise.

Importing TensorFlow on a machine without CUDA prints C++ log lines before Python can
configure anything ("Could not find cuda drivers on your machine, GPU will not be used",
"oneDNN custom operations are on", CPU-instruction advice, "failed call to cuInit" at the
first op). TensorFlow serves only the
data pipeline here (tf.data / SeqIO on the CPU), so these say nothing about the run. They
are written straight to file descriptor 2, so ``import_tensorflow_quietly`` captures that
descriptor during the import and writes back every line that is NOT one of these known
messages: an unexpected error or warning from the import still reaches the user.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

# Lines known to be noise on a CPU machine (each one is matched anywhere in the line).
TENSORFLOW_NOISE: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
        r"cudart_stub\.cc.*Could not find cuda drivers on your machine",
        r"oneDNN custom operations are on",
        r"cpu_feature_guard\.cc.*This TensorFlow binary is optimized",
        r"^To enable the following instructions: .*rebuild TensorFlow",
        r"Unable to register cu(DNN|FFT|BLAS) factory",
        r"TF-TRT Warning: Could not find TensorRT",
        r"computation placer already registered",
        r"cuda_platform\.cc.*failed call to cuInit",
    )
)


def is_noise(line: str) -> bool:
    return any(p.search(line) for p in TENSORFLOW_NOISE)


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Capture file descriptor 2 inside the block; afterwards re-emit all non-noise lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not is_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def import_tensorflow_quietly() -> None:
    """Import TensorFlow (if installed and not yet imported) without its CPU-machine noise."""
    if "tensorflow" in sys.modules:
        return
    with filtered_stderr():
        try:
            import tensorflow as tf
        except ImportError:
            return
        # TF only feeds data here: keep it off the accelerators JAX uses (this also runs
        # TF's CUDA probe now, inside the filter, instead of at its first op).
        tf.config.set_visible_devices([], "GPU")

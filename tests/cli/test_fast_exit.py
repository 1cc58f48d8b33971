"""``fast_exit.exit_now``: buffered output and log lines survive, the status is kept."""

import os
import subprocess
import sys

_CHILD = """
import logging, sys
from flan_moe.cli.fast_exit import exit_now
logger = logging.getLogger("flan_moe.test")
handler = logging.FileHandler(sys.argv[1])
logger.addHandler(handler)
logger.setLevel(logging.INFO)
logger.info("a log line")
sys.stdout.write("buffered stdout")  # no newline, no flush
sys.stderr.write("buffered stderr")
exit_now(int(sys.argv[2]))
print("never reached")
"""


def _run(tmp_path, status, **env):
    log = tmp_path / "log.txt"
    # buffered (a pipe, no PYTHONUNBUFFERED): unflushed text would be lost by os._exit
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | env
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(log), str(status)],
        capture_output=True,
        text=True,
        env=environment,
    )
    return done, log.read_text()


def test_exit_now_flushes_and_keeps_the_status(tmp_path):
    done, log = _run(tmp_path, 75)
    assert done.returncode == 75
    assert done.stdout == "buffered stdout"
    assert "buffered stderr" in done.stderr
    assert log == "a log line\n"


def test_normal_exit_when_asked(tmp_path):
    done, log = _run(tmp_path, 3, FLAN_MOE_NORMAL_EXIT="1")
    assert done.returncode == 3
    assert done.stdout == "buffered stdout"
    assert log == "a log line\n"


def test_data_iterators_are_released_off_the_main_thread():
    import threading
    import time

    from flan_moe.cli.train import release_in_background

    freed = threading.Event()

    class SlowToDelete:  # like a tf.data iterator waiting for its in-flight work
        def __del__(self):
            time.sleep(1.0)
            freed.set()

    opened = [SlowToDelete()]
    start = time.perf_counter()
    release_in_background(opened)
    assert time.perf_counter() - start < 0.5 and opened == []
    assert freed.wait(timeout=30)  # ... and it is still freed

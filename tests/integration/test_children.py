"""Children of `up` die with it, even when it is killed without a chance to stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from services.runtime.up import REPO

PARENT = """
import sys, time
from pathlib import Path
from services.runtime import children
child = children.spawn([sys.executable, "-c",
    "from services.runtime.children import die_with_parent; die_with_parent(); print('armed', flush=True);"
    " import time; time.sleep(60)"],
    env=dict(__import__("os").environ), log_path=Path(sys.argv[1]))
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_child_dies_when_its_parent_is_killed(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "child.log")], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        child = psutil.Process(int(parent.stdout.readline()))  # type: ignore[union-attr]
        log = tmp_path / "child.log"
        deadline = time.monotonic() + 10
        while not (log.exists() and "armed" in log.read_text()):  # the child armed its death signal
            assert time.monotonic() < deadline and child.is_running()
            time.sleep(0.02)
        parent.send_signal(signal.SIGKILL)
        parent.wait(5)
        gone, _ = psutil.wait_procs([child], timeout=5)
        assert gone, "the child outlived its killed parent"
    finally:
        parent.kill()

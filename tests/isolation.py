"""`in_child_process`: run one test in a fresh Python process.

The tests that kill their own process with SIGTERM mid-training and resume have crashed a pytest
worker now and then (never reproduced alone; the worker had run OpenVINO, ONNX Runtime and other
native runtimes before), and so did real signals sent inside a worker whose handlers earlier
tests had changed. A fresh interpreter gives them the process a user's `upsample train` has.
"""

import contextlib
import functools
import inspect
import os
import subprocess
import sys
import time


def in_child_process(test):
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        if os.environ.get("UPSAMPLE_TEST_CHILD"):
            return test(*args, **kwargs)
        node = f"{inspect.getfile(test)}::{test.__name__}"
        run = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:xdist",
                              "-p", "no:cacheprovider", node], env={**os.environ, "UPSAMPLE_TEST_CHILD": "1"},
                             capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        assert " passed" in run.stdout, run.stdout[-2000:]  # not skipped or deselected
    return wrapper


def wait_for(path, child: subprocess.Popen, log) -> None:
    """Until `path` exists (the child says it reached the point a test signals it at), at most
    60 s or until the child ends; `log`'s text is the assertion's message."""
    deadline = time.monotonic() + 60
    while not path.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), log.read_text()


@contextlib.contextmanager
def reaped(child: subprocess.Popen):
    """`child`, killed and waited for on the way out if it still runs, wherever the test stopped."""
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

"""Test-session settings.

The CLI's default backend is `auto` (OpenVINO on the CPU). OpenVINO brings its own TBB and oneDNN
into the process, and a pytest worker that had compiled OpenVINO graphs (int8 in an earlier
session) later crashed in a training test; so commands run by tests default to the torch backend
($UPSAMPLE_BACKEND, as a user can set it too), and the tests of the runtimes ask for them by name.
"""

import os
import tempfile

import pytest

os.environ.setdefault("UPSAMPLE_BACKEND", "torch")
# Most tests run registered models that have no trained weights (their shapes and runtimes are
# what is tested); the refusal a user gets is tested with this unset (tests/test_infer.py).
os.environ.setdefault("UPSAMPLE_ALLOW_UNTRAINED", "1")
# Exports, start-up plans, training stores and video-frame caches of the tests go to one folder of
# their own (kept between runs for speed), never into the user's ~/.cache/upsample.
os.environ.setdefault("UPSAMPLE_CACHE", os.path.join(tempfile.gettempdir(), f"upsample-tests-cache-{os.getuid()}"))


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the refusal must come first."""
    from upsample.inference import api, batch, load

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(batch, "Engines", loaded)
    monkeypatch.setattr(load, "resolve_model", loaded)
    monkeypatch.setattr(api, "make_upscaler", loaded)

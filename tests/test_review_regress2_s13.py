"""Review of 2cd71bc..1ad98ee (regrev13b): `--backend auto` lets a cached int8 IR compete on any
CPU (4f12a6f), timed against fp32. A plan of `upsample image` made before an int8 was cached no
longer hides it; an int8 IR OpenVINO cannot run at the gate's sizes loses instead of a traceback.

A stand-in "int8" IR (the fp32 network's own IR, put where `quantize` puts one) passes the quality
gate exactly; `auto.speed_vs_fp32` is replaced so it also "runs faster", as OpenVINO's real int8
VDSR does on an AVX2 CPU (685 ms against 1140 ms a probe)."""

import numpy as np
import pytest
import torch
from PIL import Image

from upsample import cli
from upsample.inference import fastpath
from upsample.inference.load import load_upscaler
from upsample.models.checkpoint import save_checkpoint
from upsample.models.registry import create_model
from upsample.runtime import auto, checks, export, int8


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("upsample.runtime.hardware.cpu_has_bf16", lambda: False)


def _setup(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "espcn-x3.safetensors"
    save_checkpoint(create_model("espcn-x3"), ckpt)
    arr = np.random.default_rng(0).integers(0, 256, (22, 30, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    return ckpt, tmp_path / "a.png"


def _image(src, out, model):
    return cli.main(["image", str(src), "-o", str(out), "--model", str(model), "--backend", "auto",
                     "--overwrite"])


def _cache_int8(ckpt, monkeypatch, shape=None, faster=True) -> None:
    """The fp32 network's IR as the cached int8 of `ckpt` at x3 (optionally of a fixed input
    shape), timed faster than fp32."""
    model = load_upscaler(str(ckpt), backend="torch", device="cpu").model
    key = export.model_key(model)
    net = auto.network_graph(model, key)
    out = int8.cached_path(key, 3)
    out.parent.mkdir(parents=True, exist_ok=True)
    if shape is None:
        from upsample.runtime import quantize
        assert quantize.copy_to_cache(model, 3, net) == out  # as `upsample quantize` caches one
    else:
        import openvino as ov
        m = ov.Core().read_model(net)
        m.reshape(shape)
        ov.save_model(m, out, compress_to_fp16=False)
    assert int8.find_cached(key, 3) == out
    if faster:
        monkeypatch.setattr(auto, "speed_vs_fp32", lambda *a, **k: {"ms": 1.0, "fp32_ms": 2.0})


def test_image_runs_the_same_graph_whether_or_not_a_plan_came_before_the_int8(tmp_path, monkeypatch):
    # a plan written before the int8 was cached (`bench --calib` / `quantize` later) pinned fp32
    # for `upsample image` until `cache clear` (its stamps do not see the int8), while bench /
    # eval / video ran int8: caching an int8 now drops the plans
    ckpt, src = _setup(tmp_path)
    assert _image(src, tmp_path / "first", ckpt) == 0  # fp32: a plan
    _cache_int8(ckpt, monkeypatch)
    args = cli.build_parser("upsample.cli.image").parse_args(
        ["image", str(src), "-o", "x", "--model", str(ckpt), "--backend", "auto"])
    assert fastpath.FastEngine.load(args) is None, "the fp32 plan still hides the cached int8 from the gate"


def test_int8_that_fails_at_the_timing_size_is_no_traceback(tmp_path, monkeypatch):
    # an int8 IR of a fixed input shape that the probes fit (espcn x3: 48x48 Y) passed the
    # quality check, then `checks.speed_vs_fp32` fed it the probe tiled larger and OpenVINO's
    # RuntimeError escaped `upsample image` as a traceback: now it loses, remembered, said once
    ckpt, src = _setup(tmp_path)
    _cache_int8(ckpt, monkeypatch, shape=[1, 1, 48, 48], faster=False)  # the real timing
    assert _image(src, tmp_path / "o", ckpt) == 0
    up = load_upscaler(str(ckpt), backend="auto", quiet=True)
    assert up.precision == "fp32"
    verdicts = auto.remembered_results(up.model, 3.0)
    assert "error" in verdicts["int8"] and "did not run here" in checks.in_words(verdicts["int8"])

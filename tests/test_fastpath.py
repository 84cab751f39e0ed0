"""The cache-hit path of `upsample image`: same bytes as the full path, no torch, safe misses."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from upsample import cli
from upsample.inference import api, fastpath
from upsample.runtime import cache
from upsample.models.checkpoint import save_checkpoint
from upsample.models.registry import create_model


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("upsample.runtime.hardware.cpu_has_bf16", lambda: False)  # fp32 plans (see conftest)


def _ckpt(tmp_path, name="espcn-x3", **kwargs):
    torch.manual_seed(0)
    path = tmp_path / f"{name}.safetensors"
    save_checkpoint(create_model(name, **kwargs), path)
    return path


def _photo(path, mode="RGB", size=(30, 22)):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    Image.fromarray(arr[..., 0] if mode == "L" else arr, mode).save(path)
    return path


def _image(src, out, model, *extra):
    return cli.main(["image", str(src), "-o", str(out), "--model", str(model), "--backend", "auto",
                     "--overwrite", *extra])


@pytest.mark.parametrize("name", ["espcn-x3", "espcn-rgb-x2"])  # a fused Y graph, an RGB network
def test_second_call_runs_the_plan_without_torch_and_writes_the_same_bytes(tmp_path, monkeypatch, name):
    ckpt, src = _ckpt(tmp_path, name), _photo(tmp_path / "a.png")
    assert _image(src, tmp_path / "full", ckpt) == 0
    full = next((tmp_path / "full").iterdir()).read_bytes()
    assert list((cache.cache_dir() / "plans").glob("*.json"))

    def no_torch_path(*a, **k):
        raise AssertionError("the full path ran on a cache hit")
    monkeypatch.setattr(api, "make_upscaler", no_torch_path)
    assert _image(src, tmp_path / "fast", ckpt) == 0
    assert next((tmp_path / "fast").iterdir()).read_bytes() == full


def test_a_plan_hit_in_a_fresh_process_imports_no_torch(tmp_path):
    ckpt, src = _ckpt(tmp_path), _photo(tmp_path / "a.png")
    assert _image(src, tmp_path / "o", ckpt) == 0
    code = ("import sys; from upsample import cli; rc = cli.main(sys.argv[1:]); "
            "print('torch' in sys.modules); sys.exit(rc)")
    run = subprocess.run([sys.executable, "-c", code, "image", str(src), "-o", str(tmp_path / "o2"),
                          "--model", str(ckpt), "--backend", "auto"],
                         env={**os.environ}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("False")
    assert (tmp_path / "o2" / "a_x3.png").read_bytes() == (tmp_path / "o" / "a_x3.png").read_bytes()


def test_a_changed_checkpoint_or_other_options_miss_the_plan(tmp_path):
    ckpt, src = _ckpt(tmp_path), _photo(tmp_path / "a.png")
    assert _image(src, tmp_path / "o", ckpt) == 0
    args = cli.build_parser("upsample.cli.image").parse_args(
        ["image", str(src), "-o", "x", "--model", str(ckpt), "--backend", "auto"])
    assert fastpath.FastEngine.load(args) is not None
    for extra in (["--threads", "1"], ["--tile", "64"], ["--backend", "torch"], ["--precision", "fp32"]):
        other = cli.build_parser("upsample.cli.image").parse_args(
            ["image", str(src), "-o", "x", "--model", str(ckpt), "--backend", "auto", *extra])
        assert fastpath.FastEngine.load(other) is None, extra
    torch.manual_seed(1)
    save_checkpoint(create_model("espcn-x3"), ckpt)  # new weights under the same name
    os.utime(ckpt, ns=(1, 1))
    assert fastpath.FastEngine.load(args) is None


def test_images_the_plan_does_not_take_go_the_full_path(tmp_path):
    ckpt = _ckpt(tmp_path)
    rgb, rgba, gray = (_photo(tmp_path / f"{m}.png", m) for m in ("RGB", "RGBA", "L"))
    assert _image(rgb, tmp_path / "o", ckpt) == 0
    args = cli.build_parser("upsample.cli.image").parse_args(
        ["image", str(rgb), "-o", "x", "--model", str(ckpt), "--backend", "auto"])
    engine = fastpath.FastEngine.load(args)
    from upsample.media.imageio import read_planes
    assert engine.upscale_planes(read_planes(rgba)) is None and engine.upscale_planes(read_planes(gray)) is None
    assert _image(rgba, tmp_path / "o", ckpt) == 0 and _image(gray, tmp_path / "o", ckpt) == 0
    assert Image.open(tmp_path / "o" / "RGBA_x3.png").mode == "RGBA"
    assert Image.open(tmp_path / "o" / "L_x3.png").size == (90, 66)


def _planes_file(path, mode, dtype, size=(31, 23)):
    """A random image of `mode` (RGB, L, RGBA, LA) in uint8 or uint16, written by our own writer."""
    from upsample.media.imageio import Planes, save_planes
    rng = np.random.default_rng(1)
    top = np.iinfo(dtype).max
    color = rng.integers(0, top + 1, (size[1], size[0], 1 if mode[0] == "L" else 3)).astype(dtype)
    alpha = rng.integers(0, top + 1, (size[1], size[0], 1)).astype(dtype) if mode.endswith("A") else None
    return save_planes(Planes(color, alpha), path)


@pytest.mark.parametrize("scale", ["3", "2", "2.5", "4", "0.5", "0.3"])
@pytest.mark.parametrize("mode,dtype", [("RGB", np.uint8), ("L", np.uint8), ("RGBA", np.uint8),
                                        ("LA", np.uint8), ("RGB", np.uint16), ("L", np.uint16),
                                        ("RGBA", np.uint16)])
def test_bicubic_runs_without_torch_and_writes_the_torch_paths_bytes(tmp_path, monkeypatch, scale, mode, dtype):
    """The torch-free bicubic writes the bytes of the full path, on any CPU (the same numpy taps)."""
    src = _planes_file(tmp_path / f"a.{mode}.png", mode, dtype)
    with monkeypatch.context() as m:
        m.setattr(fastpath.BicubicEngine, "load", classmethod(lambda cls, args: None))
        assert _image(src, tmp_path / "full", "bicubic", "--scale", scale) == 0
    monkeypatch.setattr(api, "make_upscaler", lambda *a, **k: pytest.fail("bicubic took the full path"))
    assert _image(src, tmp_path / "fast", "bicubic", "--scale", scale) == 0
    (full,), (fast,) = (list((tmp_path / d).iterdir()) for d in ("full", "fast"))
    assert fast.name == full.name and fast.read_bytes() == full.read_bytes()


def test_bicubic_in_a_fresh_process_imports_no_torch_on_its_first_call(tmp_path):
    src = _photo(tmp_path / "a.png")
    code = ("import sys; from upsample import cli; rc = cli.main(sys.argv[1:]); "
            "print('torch' in sys.modules); sys.exit(rc)")
    run = subprocess.run([sys.executable, "-c", code, "image", str(src), "-o", str(tmp_path / "o"),
                          "--model", "bicubic", "--scale", "3", "--backend", "auto"],
                         env={**os.environ}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("False")
    assert not (cache.cache_dir() / "plans").exists()  # nothing cached: there is nothing to cache
    assert Image.open(tmp_path / "o" / "a_x3.png").size == (90, 66)


def test_bicubic_options_and_images_the_numpy_path_does_not_take(tmp_path):
    def engine(*extra):
        args = cli.build_parser("upsample.cli.image").parse_args(
            ["image", "a.png", "-o", "x", "--model", "bicubic", "--backend", "auto", *extra])
        return fastpath.load(args)
    assert isinstance(engine(), fastpath.BicubicEngine) and engine().scale == 2.0  # bicubic's default
    for extra in (["--threads", "1"], ["--tile", "64"], ["--backend", "torch"], ["--outscale", "3"],
                  ["--scale", "x"], ["--scale", "1.2345"], ["--half"]):
        assert engine(*extra) is None, extra
    from upsample.media.imageio import Planes
    big = Planes(np.zeros((1000, 1000, 3), np.uint8))  # 3000 x 3000 out: over MAX_OUT_PIXELS
    assert engine("--scale", "3").upscale_planes(big) is None


def test_bicubic_scale_the_tiling_refuses_is_refused_on_every_path(tmp_path, capsys):
    """A scale that is not a ratio of small integers: one line and no file, with or without
    --threads (which takes the full path), whatever the image size."""
    src = _photo(tmp_path / "a.png")
    for extra in ([], ["--threads", "1"]):
        out = tmp_path / f"o{len(extra)}"
        assert _image(src, out, "bicubic", "--scale", "1.2345", *extra) == 2
        assert "not a ratio of small integers" in capsys.readouterr().err
        assert not out.exists() or not any(out.iterdir())


def test_the_plan_runs_one_infer_request_a_thread_from_several_threads(tmp_path):
    """`image --jobs 2` feeds the engine from two threads: each keeps one request (a fresh request
    per image from two threads hung for good in OpenVINO's input copy), with the same bytes."""
    import threading
    ckpt = _ckpt(tmp_path)
    rgb = _photo(tmp_path / "p.png")
    assert _image(rgb, tmp_path / "o", ckpt) == 0
    args = cli.build_parser("upsample.cli.image").parse_args(
        ["image", str(rgb), "-o", "x", "--model", str(ckpt), "--backend", "auto"])
    engine = fastpath.FastEngine.load(args)
    from upsample.media.imageio import read_planes
    planes = read_planes(rgb)
    made = []
    real = fastpath.per_thread

    def counting(compiled):
        real_create = compiled.create_infer_request
        class Counted:
            def __getattr__(self, name):
                return getattr(compiled, name)

            def create_infer_request(self):
                made.append(threading.get_ident())
                return real_create()
        return real(Counted())
    fastpath.per_thread = counting
    try:
        results = []
        threads = [threading.Thread(target=lambda: results.extend(engine.upscale_planes(planes).color
                                                                  for _ in range(3))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        fastpath.per_thread = real
    assert len(results) == 6 and all(np.array_equal(r, results[0]) for r in results)
    assert len(made) == len(set(made)) == 2

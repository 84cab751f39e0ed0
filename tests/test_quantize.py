"""`upsample quantize`: int8 models for ONNX Runtime (QDQ) and OpenVINO (NNCF) that run in eval,
image and bench with their backend."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from upsample.models import checkpoint, registry
from upsample import cli
from upsample.inference.load import load_upscaler
from isolation import in_child_process


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A smooth 'trained-like' espcn-x2 (weights scaled so outputs stay near the input) and a few
    natural-looking calibration / test images."""
    root = tmp_path_factory.mktemp("q")
    rng = np.random.default_rng(0)
    for folder in ("calib", "test"):
        (root / folder).mkdir()
        for i in range(4):
            base = rng.random((6, 6, 3))
            img = Image.fromarray((base * 255).astype(np.uint8)).resize((64, 64), Image.BICUBIC)
            img.save(root / folder / f"{i}.png")
    torch.manual_seed(0)
    model = registry.create_model("espcn-x2")
    ckpt = root / "espcn.safetensors"
    checkpoint.save_checkpoint(model, ckpt)
    return root, ckpt


@pytest.mark.parametrize("backend, suffix", [("onnxruntime", ".onnx"), ("openvino", ".xml")])
def test_int8_model_runs_in_eval_image_and_bench(setup, tmp_path, capsys, backend, suffix):
    root, ckpt = setup
    out = tmp_path / f"m.int8{suffix}"
    # in a child process, as a user runs it: NNCF left in this process makes a later test's
    # training segfault (seen with nncf 3.4 + torch 2.13)
    proc = subprocess.run([sys.executable, "-m", "upsample", "quantize", str(ckpt), "--backend", backend,
                           "--calib", str(root / "calib"), "--samples", "4", "--size", "24", "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "int8" in proc.stdout and out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".quantize-")]

    def cli_run(*args):  # OpenVINO int8 graphs run in this process make a later test's
        # training segfault (openvino 2026.4 + torch 2.13), so every int8 run is a child process
        proc = subprocess.run([sys.executable, "-m", "upsample", *args], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    evals = {}
    for model in (ckpt, out):
        report = json.loads(cli_run("eval", "--model", str(model), "--backend", backend, "--scale", "2",
                                    "--data", str(root / "test"), "--json", "-"))
        evals[model] = report["datasets"]["test"]["psnr"]
    assert evals[ckpt] != evals[out] and abs(evals[ckpt] - evals[out]) < 1.0  # int8, and close
    cli_run("image", str(root / "test" / "0.png"), "-o", str(tmp_path / "img"), "--model", str(out),
            "--backend", backend)
    assert list((tmp_path / "img").iterdir())
    rows = json.loads(cli_run("bench", "--model", str(ckpt), "--backend", backend, "--int8", str(out),
                              "--size", "32x24", "--runs", "1", "--warmup", "0", "--json"))["rows"]
    assert [r["backend"] for r in rows] == ["torch eager fp32", f"{backend} fp32", f"{backend} int8"]
    assert all(r["speedup"] > 0 for r in rows)
    if backend == "onnxruntime":  # the Python API on the int8 file
        int8, fp32 = load_upscaler(str(out), backend=backend), load_upscaler(str(ckpt), backend=backend)
        assert int8.scale == 2 and int8.spec.input == "y" and int8.model is None
        x = torch.rand(1, 3, 20, 28)
        a, b = fp32(x), int8(x)
        assert a.shape == b.shape == (1, 3, 40, 56) and 0 < (a - b).abs().mean() < 0.05


def test_wrong_backend_foreign_file_and_bad_output_are_one_line(setup, tmp_path, capsys):
    root, ckpt = setup
    out = tmp_path / "m.int8.onnx"
    assert cli.main(["quantize", str(ckpt), "--backend", "onnxruntime", "--calib", str(root / "calib"),
                     "--samples", "2", "--size", "16", "-o", str(out)]) == 0
    capsys.readouterr()

    def one_line_error(args, text):
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip()
        lines = [line for line in err.splitlines() if not line.startswith("note:")]
        assert len(lines) == 1 and text in lines[0], err

    one_line_error(["eval", "--model", str(out), "--backend", "openvino", "--scale", "2",
                    "--data", str(root / "test")], "run it with --backend onnxruntime")
    # (an .onnx without our metadata is no longer refused: it runs as another project's graph,
    # `runtime.foreign_onnx`)
    one_line_error(["quantize", str(ckpt), "--backend", "onnxruntime", "--calib", str(root / "calib"),
                    "-o", str(out)], "exists; pass --overwrite")
    one_line_error(["quantize", str(ckpt), "--backend", "openvino", "--calib", str(root / "calib"),
                    "-o", str(tmp_path / "x.onnx")], "must end in .xml")
    one_line_error(["quantize", str(ckpt), "--backend", "onnxruntime", "--calib", str(tmp_path / "none"),
                    "-o", str(tmp_path / "y.onnx")], "folder not found")
    (tmp_path / "empty").mkdir()
    one_line_error(["quantize", str(ckpt), "--backend", "onnxruntime", "--calib", str(tmp_path / "empty"),
                    "-o", str(tmp_path / "y.onnx")], "no images found")
    one_line_error(["quantize", "vdsr", "--backend", "onnxruntime", "--calib", str(root / "calib"),
                    "-o", str(tmp_path / "z.onnx")], "give one with --scale")


@in_child_process
def test_auto_makes_a_cached_int8_model_once_and_lets_it_compete_under_the_gate(setup, monkeypatch, capsys):
    """`bench --calib DIR` quantizes into the cache (first/last convs float); `--backend auto`
    then measures it on the probe set like any other graph and takes it only if it passes."""
    from upsample.runtime import auto, cache, checks, export, int8
    root, ckpt = setup
    monkeypatch.setenv("UPSAMPLE_CACHE", str(root / "cache"))
    (root / "calib-big").mkdir()
    for i in range(2):  # auto calibrates on 64x64 LR crops: 128x128 at x2
        Image.open(root / "calib" / f"{i}.png").resize((160, 160), Image.BICUBIC).save(root / "calib-big" / f"{i}.png")
    args = ["bench", "--model", str(ckpt), "--backend", "auto", "--precision", "fp32", "--calib",
            str(root / "calib-big"), "--size", "32x24", "--runs", "1", "--warmup", "0", "--json"]
    assert cli.main(args) == 0
    model, _ = checkpoint.load_checkpoint(ckpt)
    key = f"{model.upsample_spec.arch}-{export.weights_hash(model)}"
    made = int8.find_cached(key, 2.0)
    assert made is not None and int8.read_meta(made)[1]["float_edges"] is True
    stamp = made.stat().st_mtime_ns
    assert cli.main(args) == 0 and made.stat().st_mtime_ns == stamp  # made once
    monkeypatch.setattr("upsample.runtime.hardware.cpu_has_bf16", lambda: False)  # int8 alone competes
    monkeypatch.setattr("upsample.runtime.hardware.cpu_has_int8_dot", lambda: True)
    capsys.readouterr()
    up = load_upscaler(str(ckpt), backend="auto")
    result = next(v for k, v in json.loads(checks.checks_path(key).read_text()).items() if "int8" in k)
    assert up.precision == ("int8" if checks.passes(result) else "fp32")
    assert "int8 with the first and last layers float (PSNR" in capsys.readouterr().err
    assert load_upscaler(str(ckpt), backend="auto", precision="int8").precision == "int8"
    assert auto.remembered_results(model, 2.0) == {"int8": result} and cache.cache_files()

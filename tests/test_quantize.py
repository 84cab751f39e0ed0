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
    plain = tmp_path / "plain.onnx"
    from upsample.runtime.export import example_input, onnx_bytes
    plain.write_bytes(onnx_bytes(registry.create_model("espcn-x2"), example_input(registry.create_model("espcn-x2"), False)))
    one_line_error(["eval", "--model", str(plain), "--backend", "onnxruntime", "--scale", "2",
                    "--data", str(root / "test")], "not written by `upsample quantize`")
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

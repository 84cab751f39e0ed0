"""`upsample quantize`: int8 models for ONNX Runtime (QDQ) and OpenVINO (NNCF) that run in eval,
image and bench with their backend."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upsample.models import checkpoint, registry
from upsample import cli
from upsample.inference.load import load_upscaler, resolve_model
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
    if backend == "openvino":  # also where `--backend auto` finds its int8 candidate
        from upsample.runtime import int8, quantize
        cached = int8.find_cached(quantize.model_key(checkpoint.load_checkpoint(ckpt)[0]), 2.0)
        assert cached is not None and "copied to" in proc.stdout
        assert cached.read_bytes() == out.read_bytes()
        assert cached.with_suffix(".bin").read_bytes() == out.with_suffix(".bin").read_bytes()

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
    other = subprocess.run([sys.executable, "-m", "upsample", "bench", "--model", "vdsr", "--scale", "2", "--int8", str(out),
                            "--size", "32x24", "--runs", "1", "--backend", backend], capture_output=True, text=True,
                           timeout=300)  # another model's int8 file: refused, not timed as if it were this one
    assert other.returncode == 2 and "not vdsr" in other.stderr and "Traceback" not in other.stderr
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
    assert json.loads(capsys.readouterr().out)["rows"]  # NNCF's log and progress not on stdout
    model, _ = checkpoint.load_checkpoint(ckpt)
    key = f"{model.upsample_spec.arch}-{export.weights_hash(model)}"
    made = int8.find_cached(key, 2.0)
    assert made is not None and int8.read_meta(made)[1]["float_edges"] is True
    stamp = made.stat().st_mtime_ns
    assert cli.main(args) == 0 and made.stat().st_mtime_ns == stamp  # made once
    monkeypatch.setattr("upsample.runtime.hardware.cpu_has_bf16", lambda: False)  # int8 alone competes
    capsys.readouterr()
    up = load_upscaler(str(ckpt), backend="auto")
    result = next(v for k, v in json.loads(checks.checks_path(key).read_text()).items() if "int8" in k)
    assert up.precision == ("int8" if checks.passes(result) else "fp32")
    assert "int8 with the first and last layers float (PSNR" in capsys.readouterr().err
    assert load_upscaler(str(ckpt), backend="auto", precision="int8").precision == "int8"
    assert auto.remembered_results(model, 2.0) == {"int8": result} and cache.cache_files()


BSD400 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "train" / "BSD400"


@pytest.mark.skipif(not BSD400.is_dir(), reason="needs ../shared/datasets/train/BSD400")
@in_child_process
def test_openvino_int8_keeps_the_recipe_closer_to_the_float_network(tmp_path, monkeypatch, capsys):
    """NNCF's fast bias correction (the recipe that suits vdsr) moved the shipped espcn-x3 by
    0.74 dB on the probe set (8 BSD400 crops); `quantize` makes the full-correction recipe too and
    keeps the one closer to the float network: about 0.06 dB there."""
    import openvino as ov
    from upsample.runtime import checks, export
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "espcn-x3.int8.xml"
    assert cli.main(["quantize", "espcn-x3", "--backend", "openvino", "--calib", str(BSD400),
                     "--samples", "8", "-o", str(out)]) == 0
    assert "int8: kept the bias-correction recipe" in capsys.readouterr().err
    model = resolve_model("espcn-x3")[0].eval()
    onnx = tmp_path / "fp32.onnx"
    onnx.write_bytes(export.onnx_bytes(model.cpu().eval(), export.example_input(model, False)))
    core, f32 = ov.Core(), {"INFERENCE_PRECISION_HINT": "f32"}
    float_net, int8_net = (core.compile_model(str(p), "CPU", f32) for p in (onnx, out))
    probes = checks.probe_set(3, channels=1)
    ref = checks.reference(lambda x: float_net(x.numpy())[0], probes)
    result = checks.quality(lambda x: int8_net(x.numpy())[0], probes, ref)
    assert abs(result["db_change"]) < 0.2 and result["vs_fp32_db"] > 45, result


@pytest.mark.parametrize("name, scale, size", [("vdsr", 3.0, 20), ("espcn-rgb-x2", 2.0, 16),
                                                ("rrdbnet-x2", 2.0, 15), ("joint-x2", 2.0, 16)])
def test_calibration_inputs_are_what_the_upscaler_feeds_the_network(setup, name, scale, size):
    """One calibration for `upsample quantize` and auto's cached int8 model, computed without
    `inference` (runtime may not import it): it must equal what `ModelUpscaler` gives the network
    for the same crops (Y, pre-upsampling, padding to the network's multiple)."""
    from upsample.data.degrade import make_lr, modcrop
    from upsample.inference.upscaler import ModelUpscaler
    from upsample.media.imageio import list_images, read_rgb
    from upsample.runtime.kinds import Backend
    from upsample.runtime.quantize import calibration_inputs, calibration_order
    root, _ = setup
    model = registry.create_model(name)
    seen = []

    def record(x):  # the network's input; a blank output of the right shape for the edges
        seen.append(x.numpy())
        s = 1 if model.upsample_spec.pre_upsample else int(scale)
        return torch.zeros(1, model.upsample_spec.channels, x.shape[2] * s, x.shape[3] * s)

    up = ModelUpscaler(model, record, scale=scale, name=name, backend=Backend.TORCH, device=torch.device("cpu"))
    side = int(round(size * scale))
    for path in calibration_order(list_images(str(root / "calib"))[0], str(root / "calib"))[:3]:
        hr = read_rgb(path)
        top, left = (hr.shape[0] - side) // 2, (hr.shape[1] - side) // 2
        up(make_lr(modcrop(hr[top:top + side, left:left + side], scale), scale))
    made = calibration_inputs(model, scale, str(root / "calib"), samples=3, size=size)
    assert len(made) == len(seen) == 3
    for a, b in zip(made, seen):
        assert a.shape == b.shape and a.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_calibration_folder_errors_are_one_line(setup, tmp_path):
    from upsample.errors import UserError
    from upsample.runtime.quantize import calibration_inputs, calibration_order
    root, _ = setup
    model = registry.create_model("espcn-x2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found"):
        calibration_inputs(model, 2.0, str(tmp_path / "empty"))
    with pytest.raises(UserError, match="use smaller --size"):
        calibration_inputs(model, 2.0, str(root / "calib"), size=40)  # 80x80 crops of 64x64 images


def _labelled_int8_files(tmp_path):
    """espcn-rgb-x2's float graphs with the metadata of `upsample quantize` outputs (.xml and
    .onnx): which precision and device they are given is tested, not int8 arithmetic, which
    is not run in this process (see `cli_run` above)."""
    import shutil

    from upsample.runtime import export, int8
    net = registry.create_model("espcn-rgb-x2")
    spec = net.upsample_spec
    meta = {"arch": spec.arch, "kwargs": spec.kwargs, "name": "espcn-rgb-x2"}
    xml = export.cached_ir(net)
    shutil.copy(xml, tmp_path / "q.xml")
    shutil.copy(xml.with_suffix(".bin"), tmp_path / "q.bin")
    shutil.copy(export.cached_onnx(net), tmp_path / "q.onnx")
    int8.write_meta(tmp_path / "q.xml", "openvino", meta)
    int8.write_meta(tmp_path / "q.onnx", "onnxruntime", meta)
    return tmp_path / "q.xml", tmp_path / "q.onnx"


def test_a_precision_other_than_int8_for_an_int8_file_is_one_line(tmp_path, monkeypatch):
    """upsample.load("q.xml", precision="bf16" / "fp16") ran int8 without a word; fp32, eval's
    default, runs the file in its own int8."""
    from upsample.errors import UserError
    from upsample.runtime import cache, sessions
    xml, onnx = _labelled_int8_files(tmp_path)
    for path in (xml, onnx):
        for precision in ("bf16", "fp16"):
            with pytest.raises(UserError, match=f"is an int8 model and runs only in int8: leave --precision out "
                                                f"or give --precision int8 \\(for {precision}, run the model"):
                load_upscaler(str(path), backend="auto", precision=precision)
        assert load_upscaler(str(path), backend="auto", precision="int8").precision == "int8"
        # fp32 is eval's default and a float backend's one mode: the file runs in its int8
        backend = "openvino" if path == xml else "onnxruntime"
        for b in (backend, "auto"):
            assert load_upscaler(str(path), backend=b, precision="fp32").precision == "int8"
    monkeypatch.setattr(sessions, "openvino_devices", lambda: ["CPU", "GPU"])
    monkeypatch.setattr(cache, "openvino_devices", lambda: ["CPU", "GPU"], raising=False)
    with pytest.raises(UserError, match="int8 onnxruntime model, which runs on no OpenVINO device"):
        load_upscaler(str(onnx), backend="auto", device="GPU")  # it ran on the CPU, --device unsaid

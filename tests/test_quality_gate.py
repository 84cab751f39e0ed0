"""The quality gate of `--backend auto` (`runtime.checks`) on the shipped probe set, and
`--device` names for OpenVINO. Candidates here are torch runners (no bf16 OpenVINO graph runs in
the pytest process, see conftest.py): the fp32 network itself, one a rounding step away, and
deliberately broken ones."""

import pytest
import torch

from upsample import cli
from upsample.errors import UserError
from upsample.models import registry
from upsample.runtime import checks, sessions


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))


def smooth_espcn():
    """An espcn-x2 whose output is close to a bicubic-like picture: random weights, scaled down,
    plus the input's pixel repeated (so its PSNR against HR is that of a real, if poor, upscaler)."""
    torch.manual_seed(0)
    net = registry.create_model("espcn-x2").eval()

    def run(x):
        with torch.no_grad():
            return (0.05 * net(x) + torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear")).clamp(0, 1)
    return run


def test_probe_set_is_small_natural_and_shaped_for_each_graph():
    files = sorted(checks.PROBE_DIR.glob("*.png"))
    assert len(files) >= 3 and sum(f.stat().st_size for f in files) < 200_000
    rgb = checks.probe_set(3)
    assert [p.x.shape[1] for p in rgb] == [3] * len(files) and all(p.hr.shape[0] == 3 * p.x.shape[2] for p in rgb)
    vdsr = checks.probe_set(2.5, channels=1, pre_upsample=True)
    assert all(p.x.shape[1] == 1 and tuple(p.x.shape[2:]) == p.hr.shape[:2] for p in vdsr)
    assert all(p.x.shape[2] % 4 == 0 for p in checks.probe_set(2, pad_multiple=2))


def test_the_fp32_graph_and_a_rounding_step_pass():
    run, probes = smooth_espcn(), checks.probe_set(2, channels=1)
    ref = checks.reference(run, probes)
    assert 15 < ref[0][0] < 45  # a real PSNR against the HR
    same = checks.quality(run, probes, ref)
    assert same == {"db_change": 0.0, "vs_fp32_db": checks.IDENTICAL_DB, "fp32_db": same["fp32_db"]}
    assert checks.passes(same) and "identical to the fp32 picture" in checks.in_words(same)
    near = checks.quality(lambda x: (run(x) + 1e-4).clamp(0, 1), probes, ref)  # bf16-sized
    assert checks.passes(near) and near["vs_fp32_db"] > 50


@pytest.mark.parametrize("broken, why", [
    (lambda y: (y + 3 / 255 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1),
     "noise"),
    (lambda y: y * 1e6, "overflow"),
    (lambda y: y + float("nan"), "NaN"),
    (lambda y: torch.where(torch.rand(y.shape, generator=torch.Generator().manual_seed(1)) < 1e-3, 1.0, y),
     "a few saturated pixels"),
])
def test_a_broken_graph_fails(broken, why):
    run, probes = smooth_espcn(), checks.probe_set(2, channels=1)
    ref = checks.reference(run, probes)
    result = checks.quality(lambda x: broken(run(x)), probes, ref)
    assert not checks.passes(result), (why, result)


def test_results_are_remembered_per_weights_as_numbers(tmp_path):
    calls = []

    def measure():
        calls.append(1)
        return {"db_change": -0.01, "vs_fp32_db": 55.0, "fp32_db": 30.0}
    first = checks.remembered_check("k", f"x-{checks.GATE}", measure)
    again = checks.remembered_check("k", f"x-{checks.GATE}", measure)
    assert first == (measure(), True) and again == (first[0], False) and len(calls) == 2
    assert "0.010 dB lower than fp32" in checks.in_words(first[0])
    # a change under the printed precision reads as none, in words that parse
    for tiny in (0.0, 4e-4, -4e-4):
        words = checks.in_words({"db_change": tiny, "vs_fp32_db": 70.0})
        assert words.startswith("PSNR the same as fp32's on the worst probe picture") and "0.000" not in words


def test_openvino_devices_are_accepted_and_a_missing_one_is_one_line_listing_them(tmp_path, capsys):
    assert sessions.openvino_device("cpu") is None and sessions.openvino_device("cuda:0") is None
    have = sessions.openvino_devices()
    assert "CPU" in have and sessions.openvino_device("CPU") == "CPU"
    assert sessions.openvino_device("AUTO") == "AUTO" and sessions.openvino_device("AUTO:CPU") == "AUTO:CPU"
    missing = next(d for d in ("NPU", "GPU") if d not in have)
    with pytest.raises(UserError, match=f"--device {missing}: not on this machine; it has cpu.*CPU"):
        sessions.openvino_device(missing)
    with pytest.raises(UserError, match="not on this machine"):
        sessions.openvino_device(f"AUTO:{missing},CPU")
    from PIL import Image
    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    assert cli.main(["image", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", "espcn-x2",
                     "--backend", "auto", "--device", missing]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CPU" in err[0] and "AUTO" in err[0], err


def test_the_openvino_cpu_device_by_name_runs_as_the_cpu_does():
    from upsample.inference.load import load_upscaler
    x = torch.rand(1, 3, 12, 10)
    by_name = load_upscaler("espcn-rgb-x2", backend="openvino", device="CPU")
    plain = load_upscaler("espcn-rgb-x2", backend="openvino")
    with torch.no_grad():
        assert torch.equal(by_name(x), plain(x)) and by_name.runtime == "openvino"
    with pytest.raises(UserError, match="OpenVINO device: use --backend auto or openvino"):
        load_upscaler("espcn-rgb-x2", backend="torch", device="CPU")


def _fake_gpu(monkeypatch) -> list:
    """OpenVINO told a GPU exists; its compile intercepted (run on the CPU, fp32), each call's
    (device, config) recorded in the list returned."""
    import openvino as ov

    from upsample.runtime import cache
    seen, real = [], ov.Core.compile_model

    def compile_model(self, model, device=None, config=None):
        seen.append((device, dict(config or {})))
        return real(self, model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    monkeypatch.setattr(ov.Core, "compile_model", compile_model)
    monkeypatch.setattr(sessions, "openvino_devices", lambda: ["CPU", "GPU"])
    monkeypatch.setattr(cache, "openvino_devices", lambda: ["CPU", "GPU"], raising=False)
    return seen


@pytest.mark.parametrize("backend, precision, hint", [
    ("openvino", "auto", "f32"),  # the openvino backend runs fp32, on any device
    ("auto", "fp32", "f32"),      # eval's default: exact on a GPU too
    ("auto", "auto", None),       # auto: the device's own precision (f16 on Intel GPUs)
])
def test_an_openvino_device_gets_the_precision_asked_for(backend, precision, hint, monkeypatch):
    """No GPU here: OpenVINO's compile is intercepted, told a GPU exists, and runs on the CPU."""
    from upsample.inference.load import load_upscaler
    seen = _fake_gpu(monkeypatch)
    up = load_upscaler("espcn-rgb-x2", backend=backend, device="GPU", precision=precision)
    with torch.no_grad():
        up(torch.rand(1, 3, 12, 10))
    gpu = [config for device, config in seen if device == "GPU"]
    assert gpu and all(config.get("INFERENCE_PRECISION_HINT") == hint for config in gpu), seen


def test_a_device_that_cannot_run_the_precision_is_one_line(monkeypatch, tmp_path):
    import openvino as ov

    from upsample.runtime import cache

    def compile_model(self, model, device=None, config=None):
        raise RuntimeError("Exception from src/inference/src/core.cpp: Unsupported property "
                           "INFERENCE_PRECISION_HINT by NPU plugin\nmore lines")
    monkeypatch.setattr(ov.Core, "compile_model", compile_model)
    xml = tmp_path / "m.xml"
    with pytest.raises(UserError, match=r"--device NPU cannot run f32 \(Exception from .*NPU plugin\); "
                                        r"use --backend auto --precision auto"):
        cache.ov_compiled(xml, "f32", device="NPU")


def test_bf16_asked_for_an_openvino_gpu_is_one_line(monkeypatch):
    """--precision bf16 names the CPU's units: on a GPU it was silently the device's own (f16)."""
    from upsample.inference.load import load_upscaler
    from upsample.runtime import cache
    monkeypatch.setattr(sessions, "openvino_devices", lambda: ["CPU", "GPU"])
    monkeypatch.setattr(cache, "openvino_devices", lambda: ["CPU", "GPU"], raising=False)
    with pytest.raises(UserError, match="--precision bf16 is for the CPU's bf16 units; on the OpenVINO "
                                        "device GPU use --precision fp32"):
        load_upscaler("espcn-rgb-x2", backend="auto", device="GPU", precision="bf16")


def _graph_files(tmp_path):
    """espcn-rgb-x2 as another project's .onnx graph (no `arch` in its metadata) and as an
    `upsample quantize`-style OpenVINO file (a float graph with the int8 files' metadata: what
    is run where is tested, not int8 arithmetic, which is not run in this process)."""
    import shutil

    from upsample.runtime import export, int8
    net = registry.create_model("espcn-rgb-x2")
    graph = tmp_path / "graph.onnx"
    shutil.copy(export.cached_onnx(net), graph)
    xml = export.cached_ir(net)
    shutil.copy(xml, tmp_path / "q.xml")
    shutil.copy(xml.with_suffix(".bin"), tmp_path / "q.bin")
    spec = net.upsample_spec
    int8.write_meta(tmp_path / "q.xml", "openvino", {"arch": spec.arch, "kwargs": spec.kwargs, "name": "espcn-rgb-x2"})
    return graph, tmp_path / "q.xml"


@pytest.mark.parametrize("backend, hint", [("openvino", "f32"), ("auto", None)])
def test_graph_files_run_on_the_openvino_device_asked(backend, hint, tmp_path, monkeypatch):
    """--device GPU was dropped for another project's .onnx and for int8 files: they compiled for
    the CPU. OpenVINO's compile is intercepted (no GPU here); the precision follows our models'
    rule (f32 under --backend openvino, else the device's own)."""
    from upsample.inference.load import load_upscaler
    seen = _fake_gpu(monkeypatch)
    for path in _graph_files(tmp_path):
        seen.clear()
        up = load_upscaler(str(path), backend=backend, device="GPU")
        with torch.no_grad():
            assert up(torch.rand(1, 3, 12, 10)).shape == (1, 3, 24, 20)
        assert seen and all(d == "GPU" and c.get("INFERENCE_PRECISION_HINT") == hint for d, c in seen), (path, seen)
        assert up.runtime.startswith("openvino GPU"), up.runtime


def test_a_virtual_device_that_can_only_pick_the_cpu_is_the_cpu_under_the_gate(monkeypatch):
    """--device AUTO (AUTO:CPU, MULTI:CPU, HETERO:CPU) skipped the quality gate although OpenVINO
    could only pick the CPU, where it ran every layer in bf16 unchecked."""
    from upsample.inference.load import load_upscaler
    from upsample.runtime import cache
    monkeypatch.setattr("upsample.runtime.hardware.cpu_has_bf16", lambda: False)  # no bf16 graph runs here
    for have, cpu_only in ((["CPU"], ["AUTO", "AUTO:CPU", "MULTI:CPU", "HETERO:CPU", "CPU"]),
                           (["CPU", "GPU"], ["AUTO:CPU", "MULTI:CPU"])):
        monkeypatch.setattr(sessions, "openvino_devices", lambda: have)
        monkeypatch.setattr(cache, "openvino_devices", lambda: have, raising=False)
        for device in cpu_only:
            up = load_upscaler("espcn-rgb-x2", backend="auto", device=device)
            assert (up.runtime, up.precision) == ("openvino", "fp32") and up.graph is not None, (device, up.runtime)
    up = load_upscaler("espcn-rgb-x2", backend="auto", device="AUTO")  # compiled when first run
    assert (up.runtime, up.precision) == ("openvino AUTO", "device")
    for device in ("AUTO", "AUTO:GPU,CPU", "MULTI:GPU,CPU", "GPU"):  # another device may be picked
        assert not sessions.on_cpu_only(device), device


def test_multi_and_hetero_without_their_devices_are_one_line(tmp_path, capsys):
    """OpenVINO cannot compile MULTI or HETERO without the devices named: it was a traceback."""
    for name in ("MULTI", "HETERO", "MULTI:", "AUTO:"):
        with pytest.raises(UserError, match=f"--device {name} needs the devices it spreads over: name them, "
                                            f"e.g. {name.rstrip(':')}:CPU"):
            sessions.openvino_device(name)
    from PIL import Image
    Image.new("RGB", (8, 6)).save(tmp_path / "a.png")
    assert cli.main(["image", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model", "espcn-x2",
                     "--backend", "auto", "--device", "HETERO"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "HETERO:CPU" in err[0], err

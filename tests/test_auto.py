"""`--backend auto`: the exact bicubic as convolutions, the fused RGB graph, the cached choice."""

import json
from pathlib import Path

import pytest
import torch

from upsample.runtime import auto, cache, checks, export
from upsample import cli
from upsample.models import registry
from upsample.data.degrade import BicubicUp, imresize
from upsample.errors import UserError
from upsample.inference.upscaler import ModelUpscaler
from upsample.inference.load import load_upscaler
from upsample.runtime.hardware import cpu_has_bf16

CPU_HAS_BF16 = cpu_has_bf16()  # this machine's, read before the fixture below hides it

@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))
    # no bf16 OpenVINO graphs in the pytest process (see conftest.py); the CLI test below runs
    # the real check in a child process
    monkeypatch.setattr("upsample.runtime.hardware.cpu_has_bf16", lambda: False)


def test_image_with_auto_in_a_child_process_checks_once_then_hits_the_cache(tmp_path):
    import subprocess
    import sys
    from PIL import Image
    Image.fromarray((torch.rand(20, 24, 3) * 255).byte().numpy()).save(tmp_path / "a.png")
    env = {**__import__("os").environ, "UPSAMPLE_BACKEND": "auto"}
    cmd = [sys.executable, "-m", "upsample", "image", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"),
           "--model", "espcn-x3", "--overwrite"]
    for _ in range(2):
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
    assert (tmp_path / "o" / "a_x3.png").is_file()
    # a CPU without bf16 units has no candidate graph to check (fp32 is the only one)
    assert any(p.name.endswith(".checks.json") for p in cache.cache_files()) == CPU_HAS_BF16
    assert "auto:" not in run.stderr  # the second run read its choices from the cache


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("hw", [(3, 5), (7, 9), (20, 33)])
def test_bicubic_as_convolutions_equals_imresize(scale, hw):
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(scale))
    want, got = imresize(x, float(scale)), BicubicUp(scale)(x)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-6


@pytest.mark.parametrize("name, scale", [("espcn-x3", 3), ("espcn-x2", 2), ("vdsr", 2)])
def test_fused_graph_computes_what_the_torch_upscaler_does(name, scale):
    torch.manual_seed(0)
    kwargs = {"num_layers": 4} if name == "vdsr" else {}
    net = registry.create_model(name, **kwargs).eval()
    ref = ModelUpscaler(net, net, scale=scale, name=name, backend="torch", device=torch.device("cpu"))
    x = torch.rand(1, 3, 17, 23)
    fused = auto.FusedRGB(net, scale)
    assert fused.in_phases == name.startswith("espcn")  # sub-pixel: the colour added before the shuffle
    with torch.no_grad():
        assert (fused(x) - ref(x)).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["espcn-x2", "espcn-rgb-x2"])
def test_auto_on_cpu_matches_eager_and_reuses_its_cache(name, capsys):
    x = checks.probe_image(3, 40)
    eager = load_upscaler(name, backend="torch")
    up = load_upscaler(name, backend="auto")
    assert up.backend == "auto" and up.runtime.startswith("openvino") and up.precision in ("fp32", "bf16")
    assert (up.run_rgb is not None) == (name == "espcn-x2")  # Y models: the edges in the graph
    with torch.no_grad():
        diff = (up(x).clamp(0, 1) - eager(x).clamp(0, 1)).abs().max().item()
    assert diff <= 1e-4  # fp32 (no bf16 in this process): the same picture
    files = {p: p.stat().st_mtime_ns for p in cache.cache_files()}
    assert any(p.suffix == ".xml" for p in files)
    capsys.readouterr()
    again = load_upscaler(name, backend="auto")  # a cache hit: nothing exported or checked again
    assert {p: p.stat().st_mtime_ns for p in cache.cache_files() if p in files} == files
    assert again.precision == up.precision and "auto:" not in capsys.readouterr().err


FAILED = {"db_change": -0.05, "vs_fp32_db": 48.0, "fp32_db": 30.0}
PASSED = {"db_change": -0.004, "vs_fp32_db": 57.0, "fp32_db": 30.0}


def test_a_failed_gate_is_remembered_and_falls_back_to_fp32(monkeypatch):
    monkeypatch.setattr("upsample.runtime.hardware.cpu_has_bf16", lambda: True)
    net = registry.create_model("espcn-x2")
    key = f"{net.upsample_spec.arch}-{export.weights_hash(net)}"
    cache.cache_dir().mkdir(parents=True)
    def name_of(option):
        return auto._check_name(option, 2.0, net, True, Path("-"))
    assert name_of("bf16") == f"openvino-bf16-x2-{cache.FUSED_GRAPH}-{checks.GATE}"
    assert name_of("bf16-body") == f"openvino-bf16-body{auto.fp32_ends.VERSION}-x2-{cache.FUSED_GRAPH}-{checks.GATE}"
    failed = {name_of("bf16"): FAILED,  # as if all had been measured
              name_of("bf16-tail"): {**FAILED, "db_change": -0.025},
              name_of("bf16-body"): {**FAILED, "db_change": 0.03, "vs_fp32_db": 55.0}}
    checks.checks_path(key).write_text(json.dumps(failed))
    up = auto.cpu_runner(net, name="t", scale=2.0)
    assert up.precision == "fp32" and up.graph[1] == "f32"
    assert json.loads(checks.checks_path(key).read_text()) == failed  # nothing re-measured
    name = name_of("bf16-body")
    assert checks.remembered_check(key, name, lambda: 1 / 0) == (failed[name], False)


def test_the_gate_takes_the_first_graph_that_passes_and_says_what_each_costs(monkeypatch, capsys):
    """The decision both ways, with the measurements given (no bf16 graph runs in this process):
    all-bf16 fails, bf16 with fp32 ends passes and is taken; the printed line is plain words."""
    monkeypatch.setattr("upsample.runtime.hardware.cpu_has_bf16", lambda: True)
    measured = []

    def measure(self, option, xml):
        measured.append(option)
        return {"bf16": FAILED, "bf16-split": {**FAILED, "vs_fp32_db": 49.0}, "bf16-tail": {**FAILED, "db_change": -0.021},
                "bf16-body": PASSED}[option]
    monkeypatch.setattr(auto._Gate, "measure", measure)
    net = registry.create_model("espcn-rgb-x2")  # an RGB model: one graph
    key = f"{net.upsample_spec.arch}-{export.weights_hash(net)}"
    net_xml = export.cached_ir(net, key=key)
    use, xml = auto._cpu_choice(net, key, net_xml, None, name="espcn-rgb-x2", scale=2.0, precision="auto",
                                threads=None, quiet=False)
    assert use == "bf16-body" and xml.name.endswith(f"-fp32ends{auto.fp32_ends.VERSION}.xml")
    err = capsys.readouterr().err
    assert "runs bf16 with the first and last layers in fp32" in err
    assert "0.004 dB lower" in err and "0.050 dB lower" in err and "48.0 dB from the fp32 picture" in err
    assert "bf16 with the last layer in fp32 (PSNR 0.021 dB lower" in err
    assert "bf16 with the input split in two bf16 parts (PSNR 0.050 dB lower" in err
    assert measured == ["bf16", "bf16-split", "bf16-tail", "bf16-body"]
    again = auto._cpu_choice(net, key, net_xml, None, name="espcn-rgb-x2", scale=2.0, precision="auto",
                             threads=None, quiet=False)
    assert again == (use, xml) and measured == ["bf16", "bf16-split", "bf16-tail", "bf16-body"]
    assert not capsys.readouterr().err
    assert set(auto.remembered_results(net, 2.0)) == {"bf16", "bf16-split", "bf16-tail", "bf16-body"}
    assert auto._cpu_choice(net, key, net_xml, None, name="t", scale=2.0, precision="fp32",
                            threads=None, quiet=False)[0] == "f32"  # --precision fp32: exact


@pytest.mark.parametrize("kwargs, message", [
    ({"backend": "torch", "precision": "bf16"}, "needs --backend auto"),
    ({"backend": "auto", "precision": "int8"}, "no int8 model of espcn-x2 x2 in the cache.*upsample quantize"),
    ({"backend": "auto", "precision": "fp16"}, "for CUDA"),
    ({"backend": "auto", "precision": "fp8"}, "unknown precision"),
    ({"backend": "auto", "threads": 0}, "--threads"),
])
def test_bad_precision_requests_are_one_clear_error(kwargs, message):
    with pytest.raises(UserError, match=message):
        load_upscaler("espcn-x2", **kwargs)


def test_cache_info_and_clear(capsys):
    load_upscaler("espcn-x2", backend="auto")
    assert cli.main(["cache", "info"]) == 0
    assert " files, " in capsys.readouterr().out and cache.cache_files()
    assert cli.main(["cache", "clear"]) == 0
    assert "cleared" in capsys.readouterr().out and not cache.cache_files()


def test_the_cuda_path_picks_a_checked_half_type_and_remembers_its_layout():
    """The CUDA logic, run on the CPU (bf16 there; compile off to keep it seconds)."""
    net = registry.create_model("espcn-rgb-x2").eval()
    ref = ModelUpscaler(net, net, scale=2, name="t", backend="torch", device=torch.device("cpu"))
    x = checks.probe_image(3, 24)
    with torch.no_grad():
        want = ref(x)
    runner = auto.cuda_runner(net, name="t", device=torch.device("cpu"), precision="bf16", compile=False)
    up = ModelUpscaler.from_runner(runner, scale=2, name="t", backend="auto", device=torch.device("cpu"))
    assert up.precision == "bf16" and up.runtime == "torch"
    assert (up(x) - want).abs().max() < 0.05
    key = f"{net.upsample_spec.arch}-{export.weights_hash(net)}"
    done = json.loads(checks.checks_path(key).read_text())
    assert set(done) == {"cuda-bf16-layout"} and done["cuda-bf16-layout"] in (0, 1)  # asked for: no gate
    # auto: fp16 then bf16, each through the gate
    runner = auto.cuda_runner(net, name="t", device=torch.device("cpu"), precision="auto", compile=False)
    done = json.loads(checks.checks_path(key).read_text())
    gated = {k: v for k, v in done.items() if k.endswith(checks.GATE)}
    assert set(gated) <= {f"cuda-fp16-x2-{checks.GATE}", f"cuda-bf16-x2-{checks.GATE}"} and gated
    assert (runner.precision != "fp32") == any(checks.passes(v) for v in gated.values())


def test_the_y_network_alone_is_gated_on_its_own_when_first_run(monkeypatch, capsys):
    """A Y model's fused RGB graph and its network alone (video's graph) are different graphs:
    the second is measured when first run, and runs the candidate that passed for it."""
    monkeypatch.setattr("upsample.runtime.hardware.cpu_has_bf16", lambda: True)
    measured = []

    def measure(self, option, xml):
        fused = cache.FUSED_GRAPH in xml.name
        measured.append((option, fused))
        return PASSED if option == ("bf16-tail" if fused else "bf16") else FAILED
    monkeypatch.setattr(auto._Gate, "measure", measure)
    compiled = []
    monkeypatch.setattr(auto, "file_session", lambda xml, *a, precision=None, **k: compiled.append((xml, precision)) or (lambda t: t))
    net = registry.create_model("espcn-x3")
    runner = auto.cpu_runner(net, name="espcn-x3", scale=3.0)
    assert runner.precision == "bf16-tail" and measured == [("bf16", True), ("bf16-tail", True)]
    assert compiled[-1][0].name.endswith(f"{cache.FUSED_GRAPH}-x3-fp32tail{auto.fp32_ends.VERSION}.xml")
    assert "espcn-x3 x3 runs bf16 with the last layer in fp32" in capsys.readouterr().err
    runner.run(torch.zeros(1, 1, 8, 8))
    assert measured[2:] == [("bf16", False)]  # measured now, once
    assert compiled[-1] == (auto.network_graph(net, f"espcn-{export.weights_hash(net)}"), "bf16")
    assert compiled[-1][0].name.endswith(f"-{auto.PHASES_GRAPH}.xml")  # the clamped sub-pixel graph
    assert "espcn-x3 x3 (its Y network alone, as video runs it) runs bf16 in every layer" in capsys.readouterr().err
    runner.run(torch.zeros(1, 1, 8, 8))
    assert len(measured) == 3


@pytest.mark.parametrize("name", ["espcn-x2", "espcn-rgb-x2", "vdsr", "vapsr-x2"])
def test_the_split_input_graph_computes_what_the_network_does(name):
    """`SplitInput` feeds the first convolution bf16(x) and x - bf16(x) with its weights twice:
    in fp32 the same network; where the first convolution does not take the picture, no split."""
    torch.manual_seed(0)
    kwargs = {"num_layers": 4} if name == "vdsr" else {}
    net = registry.create_model(name, **kwargs).eval()
    split = auto.split_input(net)
    assert isinstance(split.get_submodule(next(n for n, m in split.named_modules()
                                                if isinstance(m, (torch.nn.Conv2d, auto.SplitInput)))), auto.SplitInput)
    x = torch.rand(1, net.upsample_spec.channels, 11, 13)
    with torch.no_grad():
        assert (split(x) - net(x)).abs().max() < 1e-5
    reflecting = registry.create_model("espcn-x2")
    reflecting.first_part[0] = torch.nn.Conv2d(1, 64, 5, padding=2, padding_mode="reflect")
    assert auto.split_input(reflecting) is None  # SplitInput pads with zeros

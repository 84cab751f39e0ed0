"""A CPU with AVX2 only - no avx512*, no bf16 units, no VNNI (an AMD EPYC Zen 3) - as every
CPU-dependent path sees it (review s13). The CPU is faked through `cpu._cpuinfo`, so these
tests hold on AVX-512 / AMX machines too."""

import pytest

from cli_checks import one_error_line
from upsample import cli
from upsample.runtime import cpu, hardware

ZEN3 = ("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n"
        "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi1 bmi2 sha_ni vaes vpclmulqdq\n")
ZEN5 = ("processor\t: 0\nmodel name\t: AMD EPYC 9B45\n"
        "flags\t\t: avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 avx512_vp2intersect\n")


@pytest.fixture
def zen3(monkeypatch, tmp_path):
    """This process on an AVX2-only CPU, with a cache of its own (no plan or verdict of another
    machine in it)."""
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: ZEN3)
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_avx2_cpu_has_no_bf16_units(monkeypatch):
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: ZEN3)
    assert not hardware.cpu_has_bf16()
    assert hardware.cpu_name() == "AMD EPYC 7B13"
    # the machine kind a training state records: no speed flag to name on this CPU
    import torch
    assert hardware.machine_kind(torch.device("cpu")) == "AMD EPYC 7B13"
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: ZEN5)
    assert hardware.cpu_has_bf16()
    assert hardware.machine_kind(torch.device("cpu")) == "AMD EPYC 9B45 avx512f avx512_bf16 avx512_vnni"


def test_bench_has_no_bf16_row_or_peak_without_bf16_units(zen3):
    import torch
    from upsample.evaluation import bench
    assert bench.half_dtype(torch.device("cpu")) is None  # no "bfloat16" peak in the table


def test_bench_half_on_avx2_is_one_line(zen3, capsys):
    assert cli.main(["bench", "--model", "espcn-x3", "--size", "32x32", "--half", "--runs", "1",
                     "--warmup", "0"]) == 2
    one_error_line(capsys, "--half", "no bf16 units")


def test_auto_offers_no_bf16_graph_on_avx2(zen3, monkeypatch):
    # OpenVINO runs a bf16 hint in f32 on such a CPU (its output is bit-identical to f32's), so a
    # "bf16" candidate would be fp32 timed and gated under a bf16 label
    from pathlib import Path
    from upsample.runtime import auto, int8
    monkeypatch.setattr(int8, "find_cached", lambda key, scale: None)
    assert auto._cpu_candidates(None, "k", Path("net.xml"), 3, fused=False) == []
    assert auto._cpu_candidates(None, "k", Path("rgb.xml"), 3, fused=True) == []


@pytest.mark.parametrize("command", ["image", "video"])
def test_precision_bf16_on_avx2_is_refused_in_one_line(zen3, capsys, command):
    pytest.importorskip("openvino")
    from PIL import Image
    if command == "image":
        src = zen3 / "in.png"
        Image.new("RGB", (24, 16), (90, 120, 30)).save(src)
        out = zen3 / "out.png"
    else:
        src, out = zen3 / "in.gif", zen3 / "out.mp4"
        frames = [Image.new("RGB", (24, 16), (10 * i, 80, 40)) for i in range(2)]
        frames[0].save(src, save_all=True, append_images=frames[1:], duration=100)
    assert cli.main([command, str(src), "-o", str(out), "--model", "espcn-x3", "--backend", "auto",
                     "--precision", "bf16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    # one line: video's note about the encoder (GIF's bgra) comes only after the model loaded
    assert len(err.splitlines()) == 1, err
    assert err.endswith("--precision bf16: this CPU has no bf16 units; use fp32 or auto"), err
    assert not out.exists()


def test_train_amp_bf16_on_avx2_says_it_is_emulated(zen3, capsys):
    from upsample.training import speed
    import torch
    assert not speed.has_fast_bf16(torch.device("cpu"))
    assert cli.main(["train", "configs/tiny.toml", "--run-dir", str(zen3 / "run"), "--set", "train.amp=bf16",
                     "--set", "train.steps=1", "--set", "val.every=1", "--set", "val.max_images=1",
                     "--set", "train.ckpt_every=1", "--set", "data.max_images=2"]) == 0
    err = capsys.readouterr()
    said = err.out + err.err
    assert 'train.amp = "bf16" on AMD EPYC 7B13, a CPU without bf16 units: torch emulates it' in said


def test_int8_competes_on_any_cpu_and_is_used_only_where_it_is_faster(zen3, monkeypatch):
    """No rule of int8 units (OpenVINO's int8 vdsr ran 1.8x fp32 on a Zen 3 without VNNI): a
    cached int8 network of a dense model is a candidate, and passes only if also faster."""
    from pathlib import Path
    from upsample.models import registry
    from upsample.runtime import auto, checks, int8
    monkeypatch.setattr(int8, "find_cached", lambda key, scale: Path("net-int8.xml"))
    dense = registry.create_model("espcn-x3")
    assert auto._cpu_candidates(dense, "k", Path("rgb.xml"), 3, fused=True) == [("int8", Path("net-int8.xml"))]
    good = {"db_change": 0.01, "vs_fp32_db": 55.0}
    assert checks.passes(good)  # a bf16 graph's check: quality alone
    assert checks.passes({**good, "ms": 368.0, "fp32_ms": 649.0})
    assert not checks.passes({**good, "ms": 700.0, "fp32_ms": 649.0})  # as good, but slower here
    assert not checks.passes({**good, "ms": 600.0, "fp32_ms": 649.0})  # a near tie: not clearly faster
    assert not checks.passes({"error": "shape mismatch"})  # an IR OpenVINO could not run here
    assert "368 ms a probe against fp32's 649" in checks.in_words({**good, "ms": 368.0, "fp32_ms": 649.0})


def test_speed_vs_fp32_times_both_on_a_tiled_probe():
    import torch
    from upsample.runtime import checks
    seen = []
    probes = [checks.Probe("a", torch.zeros(1, 1, 48, 40), None, 3)]
    result = checks.speed_vs_fp32(lambda x: seen.append(("int8", tuple(x.shape))),
                                  lambda x: seen.append(("fp32", tuple(x.shape))), probes, rounds=2)
    assert set(result) == {"ms", "fp32_ms"} and result["ms"] >= 0
    assert seen == [("int8", (1, 1, 240, 200)), ("fp32", (1, 1, 240, 200))] * 3  # warm-up, then interleaved


def test_plans_and_gate_verdicts_are_each_cpus_own(monkeypatch, tmp_path):
    """A cache shared by machines (a home folder on a cluster): an fp32 plan or a timed int8
    verdict made on this AVX2 CPU is not what an AVX-512 one reads, nor the other way round."""
    from upsample import cli as cli_mod
    from upsample.inference import fastpath
    from upsample.runtime import checks
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))
    args = cli_mod.build_parser("upsample.cli.image").parse_args(
        ["image", "a.png", "-o", "x", "--model", "espcn-x3", "--backend", "auto"])
    seen = {}
    for name, info in (("zen3", ZEN3), ("zen5", ZEN5)):
        monkeypatch.setattr(cpu, "_cpuinfo", lambda info=info: info)
        seen[name] = fastpath.plan_path(args), checks.checks_path("espcn-abc")
    assert seen["zen3"][0] != seen["zen5"][0] and seen["zen3"][1] != seen["zen5"][1]
    assert seen["zen3"][1].name.startswith("espcn-abc-cpu") and seen["zen3"][1].name.endswith(".checks.json")


def test_bench_says_why_auto_runs_fp32_where_it_had_nothing_to_gate(zen3):
    from upsample.evaluation import bench
    from upsample.inference.load import load_upscaler
    for name, why in (("espcn-x3", "no int8 network of it is in the cache"), ("vapsr-x2", "int8 is for dense models")):
        up = load_upscaler(name, backend="auto", allow_untrained=True, quiet=True)
        choice = bench.auto_choice(up)
        assert choice["in_words"].startswith(f"{name} x") and "runs fp32: this CPU has no bf16 units" in choice["in_words"]
        assert why in choice["in_words"] and choice["gate"] == {}

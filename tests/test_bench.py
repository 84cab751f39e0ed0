"""upsample bench: MAC counting, peak measurement and the per-backend report (tiny sizes)."""

from __future__ import annotations

import json

from pathlib import Path

import pytest
import torch

from upsample.evaluation import bench
from upsample.runtime import hardware
from upsample import cli
from upsample.models import registry
from upsample.errors import UserError
from upsample.inference.load import load_upscaler


def test_frame_size_parsing():
    assert bench.parse_frame_size("640x360") == (640, 360)
    assert bench.parse_frame_size("1920X1080") == (1920, 1080)
    for bad in ("640", "ax360", "0x10"):
        with pytest.raises(UserError):
            bench.parse_frame_size(bad)


def test_macs_match_the_registry_count_and_scale_with_pixels():
    up = load_upscaler("vapsr-s-x2")
    with torch.device("meta"):
        meta = registry.create_model("vapsr-s-x2")
    assert bench.network_macs(up, 64, 64) == registry.count_macs(meta, 64)
    assert bench.network_macs(up, 64, 128) == 2 * bench.network_macs(up, 64, 64)
    assert bench.network_macs(load_upscaler("bicubic", scale=2), 64, 64) == 0
    rrdb = load_upscaler("rrdbnet-x2", allow_untrained=True, backend="torch")  # unshuffles by 2
    assert bench.network_macs(rrdb, 15, 15) == bench.network_macs(rrdb, 16, 16)  # padded, as it runs


def test_peak_matmul_is_a_positive_rate():
    g = hardware.peak_gflops(torch.device("cpu"), torch.float32, n=256, runs=2, seconds=0.05)
    assert 0.1 < g < 1e5


def test_report_rows_against_eager(capsys):
    r = bench.bench("espcn-rgb-x2", size=(40, 24), backends=["torch", "onnxruntime"], warmup=1, runs=1)
    rows = {row["backend"]: row for row in r["rows"]}
    assert list(rows) == ["torch eager fp32", "onnxruntime fp32"]
    eager, ort = rows["torch eager fp32"], rows["onnxruntime fp32"]
    assert eager["speedup"] == 1.0 and eager["max_abs_diff"] == 0.0
    assert ort["max_abs_diff"] < 1e-4
    macs = bench.network_macs(load_upscaler("espcn-rgb-x2"), 24, 40)
    assert r["gmacs_per_frame"] == pytest.approx(macs / 1e9)
    for row in (eager, ort):
        assert row["gflops"] == pytest.approx(2 * macs / (row["ms_per_frame"] / 1e3) / 1e9)
        assert row["of_peak"] == pytest.approx(row["gflops"] / r["peak_gflops"]["fp32"])
        assert row["mpix_per_s"] == pytest.approx(80 * 48 / (row["ms_per_frame"] / 1e3) / 1e6)
    text = bench.format_report(r)
    assert "torch eager fp32" in text and "onnxruntime fp32" in text


def test_cli_json(capsys):
    assert cli.main(["bench", "--model", "bicubic", "--scale", "2", "--size", "32x16",
                     "--backend", "torch", "--runs", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["size"] == "32x16" and report["rows"][0]["backend"] == "torch eager fp32"
    assert report["rows"][0]["gflops"] is None  # bicubic: no network MACs


def test_an_untrained_model_is_timed_only_when_asked(monkeypatch):
    monkeypatch.delenv("UPSAMPLE_ALLOW_UNTRAINED")
    with pytest.raises(UserError, match="espcn-rgb-x2 has no trained weights"):
        bench.bench("espcn-rgb-x2", size=(40, 24), backends=["torch"], warmup=0, runs=1)
    r = bench.bench("espcn-rgb-x2", size=(40, 24), backends=["torch"], warmup=0, runs=1,
                    allow_untrained=True)
    assert r["rows"][0]["ms_per_frame"] > 0


def test_the_auto_row_says_which_graph_the_gate_chose_and_what_it_costs(monkeypatch, tmp_path):
    """The gate's remembered results for the weights, in the JSON row and in plain words."""
    from upsample.runtime import auto, checks, export
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("upsample.runtime.hardware.cpu_has_bf16", lambda: False)  # no bf16 graph here
    monkeypatch.setattr(bench, "cpu_has_bf16", lambda: False)
    up = load_upscaler("espcn-rgb-x2", backend="auto")  # fp32 in this process: nothing measured, said why
    assert bench.auto_choice(up)["gate"] == {} and "runs fp32: this CPU has no bf16 units" in bench.auto_choice(up)["in_words"]
    assert bench.auto_choice(load_upscaler("espcn-rgb-x2", backend="torch")) is None
    key = f"espcn-{export.weights_hash(up.model)}"
    failed = {"db_change": -0.031, "vs_fp32_db": 52.0, "fp32_db": 30.0}
    checks.remembered_check(key, auto._check_name("bf16", 2.0, up.model, False, Path("-")), lambda: failed)
    choice = bench.auto_choice(up)
    assert choice["graph"] == "fp32 (exact)" and choice["gate"] == {"bf16": failed}
    assert "runs fp32 (exact); not used" in choice["in_words"] and "0.031 dB lower" in choice["in_words"]
    row = {"backend": "auto (openvino fp32)", "ms_per_frame": 1.0, "mpix_per_s": 1.0, "gflops": None,
           "of_peak": None, "speedup": 2.0, "max_abs_diff": 0.0, "choice": choice}
    text = bench.format_report({"model": "m", "scale": 2, "size": "8x8", "device": "cpu", "threads": 2,
                                "gmacs_per_frame": 0.0, "peak_gflops": {"fp32": 1.0}, "runs": 1,
                                "warmup": 0, "rows": [row]})
    assert text.splitlines()[-1] == f"auto: {choice['in_words']}"


def test_another_projects_onnx_graph_is_timed_without_the_eager_row(tmp_path):
    """bench on a foreign .onnx built its eager torch reference first and failed with "the torch
    backend cannot run", even with --backend onnxruntime: it now times the graph's rows alone."""
    import shutil

    from upsample.runtime import export
    graph = tmp_path / "graph.onnx"
    shutil.copy(export.cached_onnx(registry.create_model("espcn-rgb-x2")), graph)
    r = bench.bench(str(graph), size=(16, 12), backends=["torch", "onnxruntime"], warmup=0, runs=1)
    (row,) = r["rows"]
    assert row["backend"] == "onnxruntime fp32" and row["ms_per_frame"] > 0
    assert row["speedup"] is None and row["max_abs_diff"] is None and "no torch eager fp32 row" in r["note"]
    text = bench.format_report(r)
    assert f"note: {r['note']}" in text and "unavailable" not in text
    with pytest.raises(UserError, match="use --backend onnxruntime, openvino, auto or all"):
        bench.bench(str(graph), size=(16, 12), backends=["torch"], warmup=0, runs=1)
    with pytest.raises(UserError, match="which --half needs: leave it out"):
        bench.bench(str(graph), size=(16, 12), backends=["onnxruntime"], half=True, warmup=0, runs=1)


def test_an_int8_file_as_the_model_says_how_to_time_it(tmp_path):
    """bench --model q.xml built its eager torch reference from the int8 file and said "run it with
    --backend openvino" even when given: the advice is now the command that times it."""
    import shutil

    from upsample.runtime import export, int8
    net = registry.create_model("espcn-rgb-x2")
    shutil.copy(export.cached_onnx(net), tmp_path / "q.onnx")  # a float graph labelled as int8
    meta = {"arch": net.upsample_spec.arch, "kwargs": net.upsample_spec.kwargs, "name": "espcn-rgb-x2"}
    int8.write_meta(tmp_path / "q.onnx", "onnxruntime", meta)
    with pytest.raises(UserError, match=r"`upsample bench --model espcn-rgb-x2 --int8 .*q\.onnx`"):
        bench.bench(str(tmp_path / "q.onnx"), size=(16, 12), backends=["onnxruntime"], warmup=0, runs=1)

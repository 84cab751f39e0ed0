"""`upsample bench` / `models` as a user meets them: options no row would use, other projects'
graphs and int8 files in the wrong place, what --warmup 0 times, the footer of `models --all`, and
`bench --train` on a joint down+up recipe and a GAN recipe (tiny sizes, no timing asserted)."""

from __future__ import annotations

import shutil

import pytest
import torch

from upsample import cli
from upsample.errors import UserError
from upsample.evaluation import bench
from upsample.models import registry, table
from upsample.runtime import export, int8
from upsample.training import bench as train_bench


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """Another project's ONNX graph (x2, RGB): an export with no architecture in its metadata."""
    path = tmp_path_factory.mktemp("graph") / "graph.onnx"
    shutil.copy(export.cached_onnx(registry.create_model("espcn-rgb-x2")), path)
    return path


def _int8_of(tmp_path, name: str):
    """A float graph labelled as `upsample quantize`'s int8 file of `name` (as test_bench does)."""
    net = registry.create_model(name)
    path = tmp_path / f"{name}-int8.onnx"
    shutil.copy(export.cached_onnx(net), path)
    int8.write_meta(path, "onnxruntime", {"arch": net.upsample_spec.arch, "kwargs": net.upsample_spec.kwargs,
                                          "name": name})
    return path


def test_a_graph_with_scale_is_checked_not_a_traceback(graph, monkeypatch):
    """bench --model other.onnx --scale 3 multiplied the text "3" in the frame-size check: TypeError."""
    monkeypatch.setattr(bench, "measure_peaks", lambda *a: {"fp32": 1.0})  # seconds of matmuls, not tested here
    with pytest.raises(UserError, match="is a x2 model but --scale is 3"):
        bench.bench(str(graph), size=(16, 12), backends=["onnxruntime"], scale="3", warmup=0, runs=1)
    with pytest.raises(UserError, match="--scale must be a positive number"):
        bench.bench(str(graph), size=(16, 12), backends=["onnxruntime"], scale="abc", warmup=0, runs=1)
    r = bench.bench(str(graph), size=(16, 12), backends=["onnxruntime"], scale="2", warmup=0, runs=1)
    # its MACs are not counted: no 0.00 GMAC/frame that reads as a measured figure
    assert r["gmacs_per_frame"] is None and "GMAC/frame not counted" in bench.format_report(r)


def test_int8_files_that_are_not_this_models_are_named_for_what_they_are(tmp_path, graph):
    q = _int8_of(tmp_path, "espcn-x2")
    # another scale's file: said as another model, not as a --scale the user never gave
    with pytest.raises(UserError, match=r"is a quantized espcn-x2, not espcn-x3") as err:
        bench.bench("espcn-x3", size=(16, 12), backends=["torch"], int8=[str(q)], warmup=0, runs=1)
    assert "--scale" not in str(err.value)
    # another project's graph: it was "a quantized onnx {}"
    with pytest.raises(UserError, match=r"is an ONNX graph, not an `upsample quantize` output"):
        bench.bench("espcn-x2", size=(16, 12), backends=["torch"], int8=[str(graph)], warmup=0, runs=1)
    # bicubic has no network: the int8 row was timed and its max|diff| taken against bicubic
    with pytest.raises(UserError, match=r"`upsample bench --model espcn-x2 --int8 "):
        bench.bench("bicubic", scale=2, size=(16, 12), backends=["torch"], int8=[str(q)], warmup=0, runs=1)


@pytest.mark.parametrize("model, options, says", [
    ("espcn-x2", {"backends": ["onnxruntime"], "precision": "bf16"}, "add --backend auto"),
    ("bicubic", {"backends": ["openvino"]}, "bicubic runs on the torch backend only"),
    ("bicubic", {"backends": ["torch"], "half": True}, "leave --half out"),
])
def test_options_no_row_would_use_are_refused(model, options, says):
    """They were left out of the figures silently: a bf16 run that ran fp32, an openvino run on torch."""
    with pytest.raises(UserError, match=says):
        bench.bench(model, scale=2, size=(16, 12), warmup=0, runs=1, **options)


def test_cli_says_it_in_one_line(capsys):
    assert cli.main(["bench", "--model", "bicubic", "--scale", "2", "--backend", "onnxruntime", "--size", "8x8"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "torch backend only" in err


class _Counting:
    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return x * self.calls  # each call's output differs: which one is compared shows


@pytest.mark.parametrize("warmup, runs, calls", [(0, 2, 2), (1, 2, 3), (3, 1, 4)])
def test_warmup_counts_the_untimed_calls_it_reports(warmup, runs, calls):
    """--warmup 0 made one untimed call anyway and reported "after 0 warm-up"."""
    up = _Counting()
    x = torch.full((1, 3, 2, 2), 0.1)
    outs, times = bench.time_entries([("fake", up, "fp32")], x, torch.device("cpu"), warmup=warmup,
                                     runs=runs, say=lambda m: None)
    assert up.calls == calls and len(times[0]) == runs
    assert torch.allclose(outs[0], x * (warmup + 1))  # the first timed call's output


def test_models_all_says_at_which_size_the_discriminators_macs_are_counted(capsys):
    for name, side in table.MACS_INPUT_OF.items():
        assert registry.get_spec(name).kwargs["input_size"] == side != table.MACS_INPUT
    for name in table.names("discriminator"):
        assert name in table.MACS_INPUT_OF or registry.get_spec(name).kwargs.get("input_size") is None
    assert cli.main(["models", "--all"]) == 0
    assert "esrgan-discriminator: 128x128" in capsys.readouterr().out.splitlines()[-1]
    assert cli.main(["models"]) == 0
    assert "discriminator" not in capsys.readouterr().out


def test_train_bench_counts_a_joint_models_round_trip():
    """joint-x2 trains HR -> downscaler -> codec proxy -> upscaler; its MACs counted only the
    upscaler's, at the LR size, and the reference loop trained the upscaler alone."""
    joint = registry.create_model("joint-x2")
    round_trip = train_bench.forward_macs(joint, (1, 1, 32, 32))
    assert round_trip > train_bench.forward_macs(joint.up, (1, 1, 16, 16)) > 0


def test_train_report_says_what_both_loops_left_out():
    report = {"model": "rrdbnet-x4", "recipe": "configs/esrgan-x4.toml", "input_side": 32, "batch": 2,
              "gmacs_per_patch": 0.1, "device": "cpu", "peak_gflops": {"fp32": 10.0}, "peak_key": "fp32",
              "rows": [{"loop": "ours", "patches_per_s": 1.0, "gflops": 0.6, "of_peak": 0.06}],
              "speedup": 1.0, "note": "the recipe's discriminator left out of both loops: ..."}
    assert train_bench.format_train_report(report).splitlines()[-1].startswith("note: the recipe's discriminator")


def test_json_is_strict_json_when_a_row_overflowed(monkeypatch, capsys):
    """A row whose output was NaN (fp16 overflow) printed `"max_abs_diff": NaN`, which jq refuses."""
    import json

    def report(model, log, **_):
        log("round 1 of 1")  # progress: on stderr with --json too (it was silent for minutes at 4K)
        row = {"backend": "torch float16", "ms_per_frame": 1.0, "max_abs_diff": float("nan"),
               "speedup": float("inf"), "gflops": None}
        return {"model": model, "rows": [row], "peak_gflops": {"fp32": 1.0}}
    monkeypatch.setattr(bench, "bench", report)
    assert cli.main(["bench", "--model", "espcn-x2", "--json"]) == 0

    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    out, err = capsys.readouterr()
    assert err == "round 1 of 1\n"
    (row,) = json.loads(out, parse_constant=refuse)["rows"]
    assert row["max_abs_diff"] is None and row["speedup"] is None and row["ms_per_frame"] == 1.0


def test_a_size_whose_activations_do_not_fit_is_refused_before_allocating(monkeypatch, capsys):
    """vdsr --scale 2 --size 3840x2160 passed the frames-only check (0.5 GB) and then needed some
    25 GB of activations: on this 23 GB machine the OS kills it, or another process."""
    from upsample.inference.load import load_upscaler
    up = load_upscaler("vdsr", scale=2, backend="torch")
    need = bench.network_peak_bytes(up, 24, 32)
    assert need >= 2 * 64 * 48 * 64 * 4  # two 64-channel feature maps of the upscaled 64x48 frame
    assert bench.network_peak_bytes(load_upscaler("bicubic", scale=2), 24, 32) == 0
    monkeypatch.setattr(bench, "free_memory", lambda dev: need)  # room for the activations, not the frames too
    assert cli.main(["bench", "--model", "vdsr", "--scale", "2", "--size", "32x24"]) == 2
    err = capsys.readouterr().err
    assert "the network's activations need" in err and len(err.strip().splitlines()) == 1


def test_cache_without_an_action_does_not_call_the_optional_parts_required(capsys):
    """`upsample cache` said "the following arguments are required: action, PART"; PART is optional."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["cache"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "required: action" in err and "PART" not in err

"""Session-10 fixes across commands: a codec named as other tools name it gets a suggestion,
prune's suggestion leaves out bicubic, bench --int8 names what it takes, a checkpoint saved twice
is the same bytes, the fp32-ends variant's temporaries of a killed writer go, the int8 converter's
telemetry child ends quietly, and the remembered checks are merged under a lock."""

from __future__ import annotations

import inspect
import json
import os
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from upsample import cli
from upsample.errors import UserError
from upsample.models import checkpoint, registry


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))


def _one_line_error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def _picture(path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------- 1. codec-study


@pytest.mark.parametrize("given,meant", [("jpg", "jpeg"), ("JPEG", "jpeg"), ("webb", "webp"), ("h264", "x264")])
def test_an_unknown_codec_suggests_the_one_meant_but_is_refused(tmp_path, capsys, given, meant):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _picture(folder / "a.png")
    err = _one_line_error(capsys, ["codec-study", str(folder), "-o", str(tmp_path / "o"), "--codecs", given])
    assert f"unknown codec '{given}'; did you mean {meant}?" in err and "use one of jpeg" in err
    assert not (tmp_path / "o").exists()
    from upsample.studies.codec import get_codec
    with pytest.raises(UserError, match="did you mean"):
        get_codec(given)  # a suggestion, never taken in its place


def test_a_codec_far_from_any_gets_no_suggestion_and_ladder_names_get_one(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _picture(folder / "a.png")
    base = ["codec-study", str(folder), "-o", str(tmp_path / "o")]
    err = _one_line_error(capsys, [*base, "--codecs", "zzzz"])
    assert "did you mean" not in err and "use one of jpeg" in err
    err = _one_line_error(capsys, [*base, "--codecs", "jpeg", "--ladder", "jpg=20,50"])
    assert err.endswith("did you mean jpeg?"), err


@pytest.mark.parametrize("scale", ["nan", "inf", "-2", "two"])
def test_a_bad_codec_study_scale_names_the_option(tmp_path, capsys, scale):
    folder = tmp_path / "imgs"
    folder.mkdir()
    _picture(folder / "a.png")
    err = _one_line_error(capsys, ["codec-study", str(folder), "-o", str(tmp_path / "o"), "--codecs", "jpeg",
                                   "--scale", scale])
    assert "--scale must be a positive number" in err, err


# ------------------------------------------------------------------- 2. prune's suggestion


def test_a_mistyped_model_offers_bicubic_only_where_the_command_takes_it(tmp_path, capsys):
    from upsample.inference.load import load_upscaler, resolve_model
    with pytest.raises(UserError) as net_only:
        resolve_model("espnc-x2")
    assert "did you mean espcn-x2" in str(net_only.value)
    assert str(net_only.value).endswith("(or a checkpoint file)") and "bicubic" not in str(net_only.value)
    with pytest.raises(UserError, match=r"\(or 'bicubic', or a checkpoint file\)$"):
        load_upscaler("espnc-x2")  # image, eval, video, bench: bicubic is a model there
    err = _one_line_error(capsys, ["prune", "espnc-x2", "-o", str(tmp_path / "p.safetensors")])
    assert "did you mean espcn-x2" in err and "bicubic" not in err, err


# ------------------------------------------------------------------------ 3. bench --int8


@pytest.mark.parametrize("name", ["in.png", "model.safetensors"])
def test_bench_int8_of_another_kind_of_file_says_what_it_takes(tmp_path, capsys, name):
    path = tmp_path / name
    if name.endswith(".png"):
        _picture(path)
    else:
        checkpoint.save_checkpoint(registry.create_model("espcn-x2"), path)
    err = _one_line_error(capsys, ["bench", "--model", "espcn-x2", "--int8", str(path), "--allow-untrained"])
    assert "not a checkpoint" not in err and "int8 model written by `upsample quantize` (.onnx or .xml)" in err, err
    err = _one_line_error(capsys, ["bench", "--model", "espcn-x2", "--int8", str(tmp_path / "gone.xml")])
    assert "gone.xml: no such file" in err, err


# ------------------------------------------------------------------ 4. checkpoint bytes


def _header(path) -> dict:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0  # tensor data stays 8-byte aligned
    return json.loads(data[8:8 + n])


def test_the_same_model_saved_twice_is_the_same_bytes(tmp_path):
    torch.manual_seed(0)
    model = registry.create_model("espcn-x2")
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for path in (a, b):
        checkpoint.save_checkpoint(model, path, config={"z": 1, "a": [2]}, extra={"pruned_from": "x", "method": "l1"})
    assert a.read_bytes() == b.read_bytes()
    header = _header(a)
    assert list(header) == sorted(header) and list(header["__metadata__"]) == sorted(header["__metadata__"])
    loaded, meta = checkpoint.load_checkpoint(a)
    assert meta["arch"] == "espcn" and meta["extra"]["method"] == "l1"
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


# ------------------------------------------------------------ 5. fp32_ends temporaries

_IR = """<?xml version="1.0"?>
<net name="t" version="11"><layers>
<layer id="0" name="in" type="Parameter"/>
{convs}
<layer id="4" name="out" type="Result"/>
</layers><edges>
<edge from-layer="0" to-layer="1"/><edge from-layer="1" to-layer="2"/>
<edge from-layer="2" to-layer="3"/><edge from-layer="3" to-layer="4"/>
</edges></net>"""


def _conv(i: int, cin: int) -> str:
    dims = "".join(f"<dim>{d}</dim>" for d in (8, cin, 3, 3))
    return f'<layer id="{i}" name="c{i}" type="Convolution"><input><port id="0"/><port id="1">{dims}</port></input></layer>'


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_writers_variant_temporaries_are_removed_when_it_is_built(tmp_path, monkeypatch):
    from upsample.runtime import fp32_ends
    xml = tmp_path / "KEY.xml"
    xml.write_text(_IR.format(convs=_conv(1, 1) + _conv(2, 8) + _conv(3, 8)))
    xml.with_suffix(".bin").write_bytes(b"\0" * 64)
    stem = f"KEY-fp32ends{fp32_ends.VERSION}"
    dead, live = _dead_pid(), os.getppid()
    stale = [tmp_path / f"{stem}.bin.{dead}.tmp", tmp_path / f"{stem}.xml.{dead}.tmp"]
    kept = [tmp_path / f"{stem}.xml.{live}.tmp", tmp_path / f"{stem}.bin.notapid.tmp",
            tmp_path / f"KEY.bin.{dead}.tmp"]
    for path in stale + kept:
        path.write_bytes(b"half")
    out = fp32_ends.variant(xml)
    assert out.name == f"{stem}.xml" and out.is_file() and out.with_suffix(".bin").is_file()
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)  # a running writer's, and names that are not the variant's
    # one left a minute ago by a pid now someone else's (or a writer on another machine) goes too
    out.unlink()
    monkeypatch.setattr(fp32_ends, "STALE_S", -1.0)
    fp32_ends.variant(xml)
    assert not kept[0].exists() and kept[1].exists() and kept[2].exists()


# --------------------------------------------------------- 6. quantize's OpenVINO converter


def test_the_int8_converter_runs_with_quiet_forks(monkeypatch, tmp_path):
    ov = pytest.importorskip("openvino")
    from upsample.runtime import export, quantize
    seen = []

    def convert(path, *args, **kwargs):
        seen.append((path, bool(export._QUIET_FORKS)))
        return "graph"
    monkeypatch.setattr(ov, "convert_model", convert)
    assert quantize._float_graph(tmp_path / "m.onnx") == "graph"
    assert seen == [(str(tmp_path / "m.onnx"), True)] and not export._QUIET_FORKS
    # every conversion of the int8 path goes through it
    source = inspect.getsource(quantize._nncf_int8)
    assert "convert_model" not in source and source.count("_float_graph(") == 2


# ------------------------------------------------------------------- 7. checks.json lock


def test_remembered_checks_are_merged_under_the_files_lock():
    """Another process writing its check while this one stores its own: this one waits for the
    lock and then reads the file again, so neither result is lost."""
    from upsample.media.cache import entry_lock
    from upsample.runtime import checks
    path = checks.checks_path("k")
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {}
    with entry_lock(path.with_name(f".{path.name}.lock")):  # (another fd: flock holds it from this thread)
        worker = threading.Thread(target=lambda: result.update(
            b=checks.remembered_check("k", "b", lambda: 2.0)))
        worker.start()
        worker.join(1.0)
        assert worker.is_alive()  # waiting for the lock, its measurement made
        path.write_text(json.dumps({"a": 1.0}))  # the other process's write
    worker.join(10)
    assert result["b"] == (2.0, True)
    assert json.loads(path.read_text()) == {"a": 1.0, "b": 2.0}
    assert checks.remembered_check("k", "a", lambda: pytest.fail("measured again")) == (1.0, False)

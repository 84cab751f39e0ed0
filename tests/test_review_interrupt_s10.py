"""Ctrl-C / SIGTERM in the long commands other than training (video, prune, quantize,
codec-study): exit 130 / 143, one line that says what was kept and how to go on, no traceback, no
temporary file left and an earlier output as it was; and progress of `quantize` when stderr is no
terminal. Real signals go only to child processes started here."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from isolation import reaped, wait_for

# The child: `upsample ARGS` as the console command runs it (its SIGTERM handler), with one
# library function made to block where the real work would be, so the signal lands mid-way.
CHILD = textwrap.dedent("""
    import importlib, signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also where the parent ignores it
    module, attr, part_only, marker = sys.argv[1:5]
    mod = importlib.import_module(module)
    real = getattr(mod, attr)
    def blocking(*args, **kwargs):
        if part_only == "0" or ".part" in str(args[0]):
            open(marker, "w").close()
            time.sleep(60)
        return real(*args, **kwargs)
    setattr(mod, attr, blocking)
    sys.argv = ["upsample"] + sys.argv[5:]
    from upsample.cli import main
    sys.exit(main())
""")


def _stopped(tmp_path: Path, target: str, args: list[str], sig: int, part_only: bool = False):
    """Run `upsample ARGS` in a child blocked in `target` (module:function), send `sig` once it
    is there; its exit status and stderr."""
    module, attr = target.split(":")
    marker, err = tmp_path / "blocked", tmp_path / "stderr.txt"
    env = dict(os.environ, UPSAMPLE_BACKEND="torch", UPSAMPLE_CACHE=str(tmp_path / "cache"))
    with open(err, "w") as stderr:
        with reaped(subprocess.Popen([sys.executable, "-c", CHILD, module, attr, "1" if part_only else "0",
                                      str(marker), *args], stdout=subprocess.DEVNULL, stderr=stderr,
                                     cwd=tmp_path, env=env, start_new_session=True)) as child:
            wait_for(marker, child, err)
            child.send_signal(sig)
            rc = child.wait(30)
    return rc, err.read_text()


def _check_stopped(rc: int, err: str, sig: int, command: str, out: Path) -> None:
    assert rc == (130 if sig == signal.SIGINT else 143), err
    assert "Traceback" not in err, err
    word = "interrupted" if sig == signal.SIGINT else "terminated"
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"upsample {command}: {word}, nothing written to {out}"), err
    assert "run the same command again" in last
    assert err.count(f"upsample {command}:") == 1, err


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def _calib(tmp_path: Path) -> Path:
    from PIL import Image
    calib = tmp_path / "calib"
    calib.mkdir()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 40, 3), dtype=np.uint8)).save(calib / "a.png")
    return calib


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_quantize_stopped_keeps_the_earlier_output_and_says_so(tmp_path, sig):
    calib, out = _calib(tmp_path), tmp_path / "out"
    out.mkdir()
    (out / "q.onnx").write_text("old")
    rc, err = _stopped(tmp_path, "upsample.runtime.quantize:quantize_onnxruntime",
                       ["quantize", "espcn-x2", "--backend", "onnxruntime", "--calib", str(calib),
                        "-o", str(out / "q.onnx"), "--overwrite", "--samples", "1", "--size", "16"], sig)
    _check_stopped(rc, err, sig, "quantize", out / "q.onnx")
    assert (out / "q.onnx").read_text() == "old"
    assert _leftovers(out, {"q.onnx"}) == []  # no .quantize-* folder


def test_prune_stopped_while_saving_leaves_no_part_file(tmp_path):
    rc, err = _stopped(tmp_path, "upsample.models.checkpoint:load_checkpoint",
                       ["prune", "espcn-x2", "--filter-ratio", "0.25", "-o", "p.safetensors"],
                       signal.SIGTERM, part_only=True)
    _check_stopped(rc, err, signal.SIGTERM, "prune", Path("p.safetensors"))
    assert _leftovers(tmp_path, {"blocked", "stderr.txt", "cache"}) == []


def _clip(path: Path) -> None:
    import av
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = 32, 24, "yuv420p"
        a = c.add_stream("aac", rate=44100)
        for i in range(6):
            img = np.full((24, 32, 3), i * 30, np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for i in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1024
            for p in a.encode(frame):
                c.mux(p)
        for s in (v, a):
            for p in s.encode():
                c.mux(p)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_video_stopped_keeps_the_earlier_output_and_the_input(tmp_path, sig):
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    _clip(src)
    before = src.read_bytes()
    dst.write_text("old")
    rc, err = _stopped(tmp_path, "upsample.inference.video:_pump",
                       ["video", str(src), "-o", str(dst), "--model", "bicubic", "--overwrite"], sig)
    _check_stopped(rc, err, sig, "video", dst)
    assert dst.read_text() == "old" and src.read_bytes() == before
    assert _leftovers(tmp_path, {"in.mp4", "out.mp4", "blocked", "stderr.txt", "cache"}) == []


def test_codec_study_stopped_while_writing_leaves_no_folder(tmp_path):
    from PIL import Image
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(2):
        Image.fromarray(np.random.RandomState(i).randint(0, 255, (48, 64, 3), dtype=np.uint8)).save(images / f"{i}.png")
    rc, err = _stopped(tmp_path, "upsample.studies.codec_study:plot_rd",
                       ["codec-study", str(images), "--codecs", "jpeg", "--ladder", "jpeg=30,60,90",
                        "-o", "study"], signal.SIGINT)
    _check_stopped(rc, err, signal.SIGINT, "codec-study", Path("study"))
    assert not (tmp_path / "study").exists()  # not even an empty folder, nor a hidden .part one


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C handler, also where the run inherited SIGINT ignored (a script's
    background job: the deferred Ctrl-C was then, rightly, ignored too)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_study_replaces_the_earlier_one_whole_when_ctrl_c_lands_between_renames(tmp_path, monkeypatch,
                                                                                    python_ctrl_c):
    from upsample.studies import study_files
    out = tmp_path / "study"
    out.mkdir()
    for name in ("points.csv", "study.json", "summary.md"):
        (out / name).write_text("old")
    real_replace, sent = os.replace, []

    def replace_then_ctrl_c(src, dst):
        real_replace(src, dst)
        if not sent:  # the handler Python would run for a Ctrl-C here, called as the signal would
            sent.append(dst)
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
    monkeypatch.setattr(study_files.os, "replace", replace_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        with study_files.staged_outputs(out) as stage:
            for name in ("points.csv", "study.json", "summary.md"):
                (stage / name).write_text("new")
    assert sent and {p.name: p.read_text() for p in out.iterdir()} == {
        "points.csv": "new", "study.json": "new", "summary.md": "new"}


def test_quantize_says_how_far_it_is_when_stderr_is_no_terminal(tmp_path, monkeypatch):
    import shutil

    from upsample.inference.load import resolve_model
    from upsample.runtime import quantize
    monkeypatch.setattr(quantize, "LINE_INTERVAL", 0.05)

    def slow_tool(onnx_path, out, inputs, keep_float=()):  # the runtime's tool, silent for a while
        time.sleep(0.4)
        shutil.copyfile(onnx_path, out)
    monkeypatch.setattr(quantize, "quantize_onnxruntime", slow_tool)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    model, _ = resolve_model("espcn-x2", None)
    quantize.quantize_model(model, scale=2, backend="onnxruntime", calib=str(_calib(tmp_path)),
                            out=tmp_path / "q.onnx", samples=1, size=16, source="espcn-x2")
    beats = [line for line in err.getvalue().splitlines() if line.startswith("int8: calibrating, ")]
    assert len(beats) >= 2 and beats[0].endswith("elapsed"), err.getvalue()
    assert (tmp_path / "q.onnx").is_file()


def test_a_codec_study_of_images_counts_rate_points_not_images(tmp_path, monkeypatch):
    from PIL import Image
    from upsample.studies import codec_study
    from upsample.studies.codec import get_codec
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "a.png")
    counted = []

    class Bar:  # what the user sees, without tqdm's timing
        def __init__(self, total, enabled, **kwargs):
            counted.append(["total", total])

        def update(self, n):
            counted.append(["done", counted[-1][1] + n if counted[-1][0] == "done" else n])

        def close(self):
            pass
    monkeypatch.setattr(codec_study, "progress_bar", Bar)
    monkeypatch.setattr(codec_study, "measure_image", lambda hr, codec, ladder, *a: [{} for q in ladder])
    src = codec_study.Source(name="imgs", kind="image", paths=[tmp_path / "a.png"] * 2, root=tmp_path)
    jpeg, webp = get_codec("jpeg"), get_codec("webp")
    points = codec_study.measure_image_source(src, [jpeg, webp], {"jpeg": (10, 50, 90), "webp": (30, 70)},
                                              [], 2.0, 2)
    assert len(points) == 10
    assert counted[0] == ["total", 10] and counted[-1] == ["done", 10] and len(counted) == 11


@pytest.mark.parametrize("status, word", [(130, "interrupted"), (143, "terminated")])
def test_a_stopped_tune_says_which_signal_and_how_to_go_on(monkeypatch, capsys, status, word):
    import argparse

    from upsample.cli import tune as cli_tune
    monkeypatch.setattr(cli_tune.tune, "tune", lambda *a, **k: status)
    args = argparse.Namespace(config="c.toml", overrides=[], trials=1, storage="sqlite:///t.db", study=None,
                              run_dir=None, out=None, device="cpu", overwrite=False)
    assert cli_tune.run(args) == status
    assert capsys.readouterr().err.startswith(f"upsample tune: {word}; run the same command again")

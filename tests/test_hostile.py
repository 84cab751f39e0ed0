"""A hostile-input corpus: broken, odd and malicious files and options, given to the commands a
user runs. Every refusal is exit 2 with one `error:` line on stderr, no traceback, and no output
file left behind; every odd-but-valid input (CMYK, 1-bit, 16-bit, float) is upscaled. A pickle
that would run code when loaded must not run it.

Each case is one in-process `upsample.cli.main([...])` call on tiny files made in tmp_path.
"""

from __future__ import annotations

import os
import pickle
import struct
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from isolation import in_child_process
from upsample import cli
from upsample.media import imageio

RNG = np.random.default_rng(0)


def rgb(h=12, w=16):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def tiny_clip(path: Path, frames: int = 4, audio: bool = False, video: bool = True) -> Path:
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=10) if video else None
        if vs is not None:
            vs.width, vs.height, vs.pix_fmt = 32, 16, "yuv420p"
        aus = c.add_stream("pcm_s16le", rate=8000) if audio else None
        for i in range(frames):
            if vs is not None:
                frame = av.VideoFrame.from_ndarray(rgb(16, 32), format="rgb24")
                c.mux(vs.encode(frame))
            if aus is not None:
                samples = np.zeros((1, 800), np.int16)
                af = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
                af.sample_rate, af.pts = 8000, i * 800
                c.mux(aus.encode(af))
        for s in (vs, aus):
            if s is not None:
                c.mux(s.encode(None))
    return path


# ----------------------------------------------------------------------------- the inputs

def _png(tmp: Path, name="in.png", arr=None) -> Path:
    Image.fromarray(rgb() if arr is None else arr).save(tmp / name)
    return tmp / name


def _truncated(tmp, ext):
    src = _png(tmp, "whole.png") if ext == "png" else tmp / "whole.jpg"
    if ext != "png":
        Image.fromarray(rgb(64, 64)).save(src, quality=90)
    data = src.read_bytes()
    src.unlink()
    (tmp / f"cut.{ext}").write_bytes(data[:len(data) // 2])
    return tmp / f"cut.{ext}"


def _huge_header(tmp):
    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    data = (imageio.PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))
    (tmp / "huge.png").write_bytes(data)
    return tmp / "huge.png"


def _bad_crc(tmp):
    data = bytearray(_png(tmp, "crc.png").read_bytes())
    data[29] ^= 0xFF  # inside IHDR's CRC
    (tmp / "crc.png").write_bytes(bytes(data))
    return tmp / "crc.png"


def _animated(tmp, ext):
    frames = [Image.fromarray(rgb()) for _ in range(3)]
    frames[0].save(tmp / f"anim.{ext}", save_all=True, append_images=frames[1:], duration=100)
    return tmp / f"anim.{ext}"


def _float_tiff(tmp, hi):
    Image.fromarray((RNG.random((10, 12)) * hi).astype(np.float32)).save(tmp / "f.tif")
    return tmp / "f.tif"


def _int32_negative(tmp):
    Image.fromarray(RNG.integers(-500, 500, (10, 12)).astype(np.int32), "I").save(tmp / "neg.tif")
    return tmp / "neg.tif"


def _write(tmp, name, data: bytes):
    (tmp / name).write_bytes(data)
    return tmp / name


BAD_IMAGES = {
    "truncated png": lambda t: _truncated(t, "png"),
    "truncated jpeg": lambda t: _truncated(t, "jpg"),
    "zero-byte png": lambda t: _write(t, "z.png", b""),
    "zero-byte jpeg": lambda t: _write(t, "z.jpg", b""),
    "zero-byte webp": lambda t: _write(t, "z.webp", b""),
    "zero-byte tiff": lambda t: _write(t, "z.tif", b""),
    "text named .png": lambda t: _write(t, "t.png", b"hello, not an image\n"),
    "random bytes .bmp": lambda t: _write(t, "r.bmp", RNG.bytes(300)),
    "png signature then garbage": lambda t: _write(t, "g.png", imageio.PNG_SIGNATURE + b"garbage" * 9),
    "png with a broken crc": _bad_crc,
    "header claims 40000x40000": _huge_header,
    "animated gif": lambda t: _animated(t, "gif"),
    "animated png": lambda t: _animated(t, "png"),
    "animated webp": lambda t: _animated(t, "webp"),
    "float tiff outside [0, 1]": lambda t: _float_tiff(t, 7.5),
    "32-bit int with negatives": _int32_negative,
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_refused(tmp_path, capsys, case):
    src = BAD_IMAGES[case](tmp_path)
    out = tmp_path / "out"
    rc = cli.main(["image", str(src), "-o", str(out), "--model", "bicubic"])
    assert_refused(rc, capsys, out)


def assert_refused(rc, capsys, *gone: Path, text: str | None = None):
    err = capsys.readouterr().err
    assert rc == 2, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert "Traceback" not in err and "Error:" not in err.replace("error:", "")
    if text is not None:
        assert text in errors[0], errors[0]
    for path in gone:
        left = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path] if path.exists() else []
        assert not left, left
    return errors[0]


def _cmyk(tmp):
    Image.fromarray(rgb()).convert("CMYK").save(tmp / "c.jpg")
    return tmp / "c.jpg"


def _one_bit(tmp):
    Image.fromarray((RNG.random((12, 16)) > 0.5).astype(np.uint8) * 255).convert("1").save(tmp / "b.png")
    return tmp / "b.png"


def _gray16(tmp):
    Image.fromarray(RNG.integers(0, 65536, (12, 16)).astype(np.uint16)).save(tmp / "g16.png")
    return tmp / "g16.png"


def _wrong_ext(tmp):
    data = _png(tmp, "x.png").read_bytes()
    (tmp / "x.png").unlink()
    return _write(tmp, "x.jpg", data)


def _one_pixel(tmp):
    return _png(tmp, "one.png", rgb(1, 1))


def _still_gif(tmp):
    Image.fromarray(rgb()).convert("P").save(tmp / "still.gif")
    return tmp / "still.gif"


def _colour_key(tmp, mode):
    arr = np.maximum(rgb(), 1) if mode == "RGB" else np.maximum(rgb()[..., 0], 1)  # no key by chance
    arr[:6] = (255, 0, 255) if mode == "RGB" else 0
    img = Image.fromarray(arr)
    img.save(tmp / "key.png", transparency=(255, 0, 255) if mode == "RGB" else 0)
    return tmp / "key.png"


def _lab_tiff(tmp):
    from PIL import ImageCms
    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    ImageCms.applyTransform(Image.fromarray(rgb()), to_lab).save(tmp / "lab.tif")
    return tmp / "lab.tif"


# odd but valid: (make, output mode, output size for x2)
ODD_IMAGES = {
    "cmyk jpeg": (_cmyk, "RGB", (32, 24)),
    "1-bit png": (_one_bit, "L", (32, 24)),
    "16-bit gray png": (_gray16, "I;16", (32, 24)),
    "float tiff in [0, 1]": (lambda t: _float_tiff(t, 1.0), "I;16", (24, 20)),
    "png named .jpg": (_wrong_ext, "RGB", (32, 24)),
    "one pixel": (_one_pixel, "RGB", (2, 2)),
    "one-frame gif": (_still_gif, "RGB", (32, 24)),
    "rgb png with a colour key": (lambda t: _colour_key(t, "RGB"), "RGBA", (32, 24)),
    "gray png with a colour key": (lambda t: _colour_key(t, "L"), "LA", (32, 24)),
    "lab tiff": (_lab_tiff, "RGB", (32, 24)),
}


@pytest.mark.parametrize("case", list(ODD_IMAGES))
def test_odd_image_upscaled(tmp_path, capsys, case):
    make, mode, size = ODD_IMAGES[case]
    src = make(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["image", str(src), "-o", str(out), "--model", "bicubic"]) == 0, capsys.readouterr().err
    (written,) = out.iterdir()
    img = Image.open(written)
    assert img.size == size and img.mode in (mode, "I;16B", "I") and written.suffix == ".png"
    if "colour key" in case:  # the keyed rows are transparent, the rest opaque
        alpha = np.asarray(img)[..., -1]
        assert alpha[:8].max() == 0 and alpha[16:].min() == 255


def test_an_icc_profile_of_another_colour_space_is_not_attached_to_rgb_pixels(tmp_path, capsys):
    """A CMYK JPEG's profile describes CMYK: on the RGB output colour-managed readers fail."""
    from PIL import ImageCms
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    cmyk = srgb[:16] + b"CMYK" + srgb[20:]  # the header's colour space is what matters here
    src = tmp_path / "c.jpg"
    Image.fromarray(rgb()).convert("CMYK").save(src, icc_profile=cmyk)
    rgb_src = tmp_path / "r.jpg"
    Image.fromarray(rgb()).save(rgb_src, icc_profile=srgb)
    for path in (src, rgb_src):
        assert cli.main(["image", str(path), "-o", str(tmp_path / "out"), "--model", "bicubic"]) == 0
    assert "icc_profile" not in Image.open(tmp_path / "out" / "c_x2.png").info
    assert Image.open(tmp_path / "out" / "r_x2.png").info["icc_profile"] == srgb


@pytest.mark.parametrize("model", ["espcn-x2", "vdsr"])
def test_a_one_pixel_side_takes_the_unfused_path_under_auto(tmp_path, capsys, model):
    """The fused RGB graph's bicubic mirrors 2 pixels at each border: a 1-pixel image or row is
    upscaled by the unfused path (it failed with OpenVINO's multi-line error before)."""
    for name, size, out_size in (("one.png", (1, 1), (2, 2)), ("row.png", (1, 7), (14, 2))):
        src = _png(tmp_path, name, rgb(*size))
        out = tmp_path / f"out-{name}"
        args = ["image", str(src), "-o", str(out), "--model", model, "--scale", "2", "--backend", "auto"]
        assert cli.main(args) == 0, capsys.readouterr().err
        assert Image.open(out).size == out_size


def test_batch_goes_on_past_a_bomb(tmp_path, capsys):
    """Over the pixel limit: one line for that file, the others are written; --max-pixels lifts it."""
    folder = tmp_path / "in"
    folder.mkdir()
    _png(folder, "a.png")
    Image.fromarray(rgb(40, 40)).save(folder / "big.png")
    _png(folder, "c.png")
    imageio.set_max_pixels(1000)  # 40x40 = 1600 pixels is "too large" now
    try:
        rc = cli.main(["image", str(folder), "-o", str(tmp_path / "out"), "--model", "bicubic"])
        err = capsys.readouterr().err
        assert rc == 1 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x2.png", "c_x2.png"]
        assert [line for line in err.splitlines() if "error:" in line] == [
            line for line in err.splitlines() if "big.png is too large" in line and "--max-pixels" in line]
        assert cli.main(["image", str(folder / "big.png"), "-o", str(tmp_path / "big.png"),
                         "--model", "bicubic", "--max-pixels", "2000"]) == 0
    finally:
        imageio.set_max_pixels(178_956_970)
    assert Image.open(tmp_path / "big.png").size == (80, 80)


# ------------------------------------------------------------------ output locations (image)

def _existing_file(tmp):
    (tmp / "taken").write_text("mine")
    return tmp / "taken"


OUTPUTS = {
    # name: (inputs made, -o given, a word of the message)
    "existing file for a folder input": ("folder", _existing_file, "existing file"),
    "tif file": ("one", lambda t: t / "out.tif", ".tif files are not written"),
    "bmp file": ("one", lambda t: t / "out.bmp", ".bmp files are not written"),
    "one file for two images": ("two", lambda t: t / "out.png", "need a folder"),
    "the input itself": ("one", lambda t: t / "in.png", "the input itself"),
    "under a file": ("one", lambda t: _existing_file(t) / "sub" / "x.png", "is a file"),
    "folder under a file": ("folder", lambda t: _existing_file(t) / "sub", "is a file"),
    "unwritable /proc": ("one", lambda t: Path("/proc/upsample-test/out"), "cannot write"),
}


@pytest.mark.parametrize("case", list(OUTPUTS))
def test_output_location_refused_before_model_loads(tmp_path, capsys, monkeypatch, case):
    kind, make_out, words = OUTPUTS[case]
    src = _png(tmp_path)
    inputs = {"one": [src], "two": [src, _png(tmp_path, "b.png")]}.get(kind)
    if kind == "folder":
        (tmp_path / "folder").mkdir()
        _png(tmp_path / "folder", "f.png")
        inputs = [tmp_path / "folder"]
    out = make_out(tmp_path)
    before = out.read_bytes() if out.is_file() else None
    from upsample.inference import batch

    def no_model(*a, **k):
        raise AssertionError("a model was built before the output was checked")
    monkeypatch.setattr(batch.Engines, "full", no_model)
    rc = cli.main(["image", *map(str, inputs), "-o", str(out), "--model", "vdsr"])
    assert_refused(rc, capsys, text=words)
    assert (out.read_bytes() if out.is_file() else None) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        {"in.png", "b.png", "folder", "taken"} & {p.name for p in tmp_path.iterdir()})


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_refused(tmp_path, capsys):
    src = _png(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert_refused(cli.main(["image", str(src), "-o", str(ro), "--model", "bicubic"]), capsys, ro,
                       text="cannot write")
    finally:
        ro.chmod(0o755)


def test_missing_parents_are_made(tmp_path):
    src = _png(tmp_path)
    assert cli.main(["image", str(src), "-o", str(tmp_path / "a" / "b" / "up.png"), "--model", "bicubic"]) == 0
    assert Image.open(tmp_path / "a" / "b" / "up.png").size == (32, 24)


# ----------------------------------------------------------------------------- options

OPTIONS = {
    "--tile -8": ["--tile", "-8"],
    "--tile x": ["--tile", "x"],
    "--threads 0": ["--threads", "0"],
    "--jobs 0": ["--jobs", "0"],
    "--quality 0": ["--quality", "0"],
    "--quality 101": ["--quality", "101"],
    "--max-memory lots": ["--max-memory", "lots"],
    "--max-pixels many": ["--max-pixels", "many"],
    "--tile-batch 0": ["--tile-batch", "0"],
    "--scale 0": ["--scale", "0"],
    "--scale abc": ["--scale", "abc"],
    "--scale inf": ["--scale", "inf"],
    "--outscale -1": ["--outscale", "-1"],
    "--tile-pad -1": ["--tile-pad", "-1"],
    "--backend cuda-magic": ["--backend", "cuda-magic"],
    "--ext tif": ["--ext", "tif"],
    "unknown model": ["--model", "espcn-x9"],
    "unknown flag": ["--frobnicate"],
}


@pytest.mark.parametrize("case", list(OPTIONS))
def test_bad_option_refused(tmp_path, capsys, case):
    src = _png(tmp_path)
    out = tmp_path / "out"
    argv = ["image", str(src), "-o", str(out), *OPTIONS[case]]
    if "--model" not in argv:
        argv += ["--model", "bicubic"]
    assert_refused(cli.main(argv) if "--frobnicate" not in argv and case.split()[0] not in (
        "--tile", "--threads", "--jobs", "--backend", "--ext") else _parse_exit(argv), capsys, out)


def _parse_exit(argv) -> int:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return exc.value.code


def test_untrained_model_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("UPSAMPLE_ALLOW_UNTRAINED", raising=False)
    src = _png(tmp_path)
    assert_refused(cli.main(["image", str(src), "-o", str(tmp_path / "o"), "--model", "vapsr-x2"]),
                   capsys, tmp_path / "o", text="vapsr-x2")


# ----------------------------------------------------------------------------- checkpoints

class RunsCode:
    """Unpickling this would call `open(marker, "w")`: a stand-in for any code a file could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _evil_pickle(tmp):
    path = tmp / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": RunsCode(tmp / "PWNED")}, f)
    return path


def _torch_evil(tmp):
    path = tmp / "evil2.pth"
    torch.save({"params": RunsCode(tmp / "PWNED")}, path)
    return path


def _state(tmp, name, obj):
    torch.save(obj, tmp / name)
    return tmp / name


def _safetensors(tmp, tensors):
    from safetensors.torch import save_file
    save_file(tensors, str(tmp / "w.safetensors"))
    return tmp / "w.safetensors"


CHECKPOINTS = {
    "pickle that runs code": _evil_pickle,
    "torch.save of code": _torch_evil,
    "random bytes .pt": lambda t: _write(t, "r.pt", RNG.bytes(500)),
    "random bytes .pth": lambda t: _write(t, "r.pth", RNG.bytes(64)),
    "random bytes .safetensors": lambda t: _write(t, "r.safetensors", RNG.bytes(500)),
    "zero-byte .safetensors": lambda t: _write(t, "z.safetensors", b""),
    "zero-byte .pt": lambda t: _write(t, "z.pt", b""),
    "empty dict": lambda t: _state(t, "empty.pt", {}),
    "a list": lambda t: _state(t, "list.pt", [1, 2, 3]),
    "unknown architecture": lambda t: _state(t, "arch.pt", {"foo.weight": torch.zeros(3, 3)}),
    "espcn keys, wrong shapes": lambda t: _safetensors(t, {"first_part.0.weight": torch.zeros(2, 2)}),
    "missing checkpoint": lambda t: t / "nowhere.safetensors",
}


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_bad_checkpoint_refused(tmp_path, capsys, case):
    ckpt = CHECKPOINTS[case](tmp_path)
    src = _png(tmp_path)
    out = tmp_path / "out"
    rc = cli.main(["image", str(src), "-o", str(out), "--model", str(ckpt)])
    assert_refused(rc, capsys, out)
    assert not (tmp_path / "PWNED").exists()  # the pickle's code never ran


# ----------------------------------------------------------------------------- configs

BASE = '[model]\nname = "espcn-x2"\n\n[data]\ntrain = ["{data}"]\n\n[train]\nsteps = 10\n'
CONFIGS = {
    "unknown key": BASE + "colour = 3\n",
    "unknown section": BASE + "\n[optimiser]\nlr = 1\n",
    "wrong type": BASE.replace("steps = 10", 'steps = "ten"'),
    "negative steps": BASE.replace("steps = 10", "steps = -5"),
    "unknown model": BASE.replace("espcn-x2", "espcn-x9"),
    "not toml": "[model\nname = ",
    "empty data": BASE.replace('["{data}"]', "[]"),
}


@pytest.mark.parametrize("case", [*CONFIGS, "missing file"])
def test_bad_config_refused(tmp_path, capsys, case):
    (tmp_path / "imgs").mkdir()
    _png(tmp_path / "imgs", "a.png", rgb(64, 64))
    cfg = tmp_path / "c.toml"
    if case != "missing file":
        cfg.write_text(CONFIGS[case].replace("{data}", str(tmp_path / "imgs")))
    run = tmp_path / "run"
    assert_refused(cli.main(["train", str(cfg), "--run-dir", str(run), "--device", "cpu"]), capsys, run)


@pytest.mark.parametrize("val_fraction", [0.0, 0.5])
def test_an_unreadable_training_image_is_named_with_the_way_out(tmp_path, capsys, val_fraction):
    """In the training part or the validation part: one line naming the file and `upsample data
    check|clean`; no run dir is left."""
    (tmp_path / "imgs").mkdir()
    for name in "ab":
        _png(tmp_path / "imgs", f"{name}.png", rgb(128, 128))
    _write(tmp_path / "imgs", "corrupt.png", b"\x89PNG\r\n\x1a\nxxxx")
    cfg = tmp_path / "c.toml"
    cfg.write_text(BASE.replace("{data}", str(tmp_path / "imgs")))
    run = tmp_path / "run"
    line = assert_refused(cli.main(["train", str(cfg), "--run-dir", str(run), "--device", "cpu", "--set",
                                    f"data.val_fraction={val_fraction}", "--set", "val.every=0"]), capsys, run)
    assert "corrupt.png" in line and "upsample data check" in line


@pytest.mark.parametrize("override", ["optim.lr", "optim.lr=abc", "nosuch.key=1"])
def test_bad_override_refused(tmp_path, capsys, override):
    (tmp_path / "imgs").mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text(BASE.replace("{data}", str(tmp_path / "imgs")))
    run = tmp_path / "run"
    assert_refused(cli.main(["train", str(cfg), "--run-dir", str(run), "--set", override]), capsys, run)


# ----------------------------------------------------------------------------- videos

VIDEOS = {
    "zero-byte mp4": lambda t: _write(t, "z.mp4", b""),
    "random bytes mkv": lambda t: _write(t, "r.mkv", RNG.bytes(2000)),
    "truncated mkv": lambda t: _write(t, "cut.mkv", tiny_clip(t / "w.mkv").read_bytes()[:300]),
    "audio only": lambda t: tiny_clip(t / "a.mkv", audio=True, video=False),
    "still image": lambda t: _png(t),
    "missing file": lambda t: t / "nowhere.mp4",
}


@pytest.mark.parametrize("case", list(VIDEOS))
def test_bad_video_refused(tmp_path, capsys, case):
    src = VIDEOS[case](tmp_path)
    out = tmp_path / "out.mp4"
    assert_refused(cli.main(["video", str(src), "-o", str(out), "--model", "bicubic"]), capsys, out)
    assert not list(tmp_path.glob(".out*"))


VIDEO_OUTPUTS = {
    "a folder": lambda t: t,
    "no extension": lambda t: t / "out",
    "a gif": lambda t: t / "out.gif",
    "a picture format": lambda t: t / "out.png",
}


@pytest.mark.parametrize("case", list(VIDEO_OUTPUTS))
def test_bad_video_output_refused(tmp_path, capsys, case):
    src = tiny_clip(tmp_path / "in.mkv")
    out = VIDEO_OUTPUTS[case](tmp_path)
    assert_refused(cli.main(["video", str(src), "-o", str(out), "--model", "bicubic"]), capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mkv"]


# ------------------------------------------------------------------- other commands' outputs

def test_export_and_interpolate_outputs_refused(tmp_path, capsys):
    taken = _existing_file(tmp_path)
    assert_refused(cli.main(["export", "espcn-x2", "-o", str(tmp_path / "m.xml")]), capsys,
                   tmp_path / "m.xml", text="writes a .onnx file")
    (tmp_path / "m.onnx").write_bytes(b"mine")
    assert_refused(cli.main(["export", "espcn-x2", "-o", str(tmp_path / "m.onnx")]), capsys, text="exists")
    assert (tmp_path / "m.onnx").read_bytes() == b"mine"
    assert_refused(cli.main(["interpolate", str(taken), str(taken), "--alpha", "0.5", "-o",
                             str(tmp_path / "i.pt")]), capsys, tmp_path / "i.pt", text="safetensors")
    assert_refused(cli.main(["interpolate", str(taken), str(taken), "--alpha", "2", "-o",
                             str(tmp_path / "i.safetensors")]), capsys, tmp_path / "i.safetensors")


# ----------------------------------------------------------------------------- signals

@in_child_process
def test_sigint_mid_write_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    """Ctrl-C while a large image is being written in strips: exit 130, no file, no temp file."""
    from upsample.inference import api, batch
    monkeypatch.setattr(batch, "STREAM_BYTES", 1000)
    monkeypatch.setattr(api, "STRIP_BYTES", 4000)  # many bands
    real_write = imageio.PngStripWriter.write

    def write_then_interrupt(self, rows, *a, **k):
        real_write(self, rows, *a, **k)
        if self.done >= 8:  # some rows are on disk, in the temporary file
            # Ctrl-C as Python delivers it: a KeyboardInterrupt here. A real SIGINT (raise_signal)
            # is only seen when the main thread next runs bytecode - under a loaded CI that was
            # after the last band, and the test flaked with the picture written whole
            raise KeyboardInterrupt
    monkeypatch.setattr(imageio.PngStripWriter, "write", write_then_interrupt)
    src = _png(tmp_path, "in.png", rgb(40, 48))
    out = tmp_path / "out"
    assert cli.main(["image", str(src), "-o", str(out), "--model", "bicubic", "--jobs", "1"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True


@in_child_process
def test_sigterm_is_handled_as_ctrl_c_by_the_console_command(tmp_path, capsys, monkeypatch):
    """`kill`, `timeout` and `docker stop` send SIGTERM: the console command takes it as Ctrl-C
    (the temporary output removed), exit 143; the handler is the console command's only."""
    import signal
    from upsample.inference import api, batch
    monkeypatch.setattr(batch, "STREAM_BYTES", 1000)
    monkeypatch.setattr(api, "STRIP_BYTES", 4000)
    real_write = imageio.PngStripWriter.write

    def write_then_terminate(self, rows, *a, **k):
        real_write(self, rows, *a, **k)
        if self.done >= 8:
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # what the signal would run here
    monkeypatch.setattr(imageio.PngStripWriter, "write", write_then_terminate)
    src = _png(tmp_path, "in.png", rgb(40, 48))
    out = tmp_path / "out"
    monkeypatch.setattr("sys.argv", ["upsample", "image", str(src), "-o", str(out), "--model", "bicubic", "--jobs", "1"])
    assert cli.main() == 143
    assert "terminated" in capsys.readouterr().err
    assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert cli.main(["models", "--json"]) == 0 and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# ----------------------------------------------------------------------------- eval

EVAL_DATA = {
    "image smaller than the scale": lambda t: _png(t, "tiny.png", rgb(2, 2)),
    "no images": lambda t: _write(t, "notes.txt", b"hi"),
    "corrupt image": lambda t: _write(t, "bad.png", imageio.PNG_SIGNATURE + b"x" * 40),
}


@pytest.mark.parametrize("case", [*EVAL_DATA, "missing folder"])
def test_bad_eval_data_refused(tmp_path, capsys, case):
    data = tmp_path / "data"
    if case != "missing folder":
        data.mkdir()
        EVAL_DATA[case](data)
    assert_refused(cli.main(["eval", "--model", "espcn-x3", "--data", str(data)]), capsys)


def test_whole_output_over_max_memory_refused(tmp_path, capsys, monkeypatch):
    """A JPEG is encoded from the whole image: past --max-memory it is refused, not swapped. A
    budget under what the process holds before any picture says that instead (it blamed the
    output of a 3x7 picture)."""
    src = _png(tmp_path, "in.png", rgb(200, 200))
    out = tmp_path / "out"
    args = ["image", str(src), "-o", str(out), "--model", "bicubic", "--ext", "jpg", "--max-memory", "1MB"]
    line = assert_refused(cli.main(args), capsys, out, text="bounds this whole process")
    assert "before any picture" in line and "GB" in line
    from upsample.inference import batch
    monkeypatch.setattr(batch, "resident_bytes", lambda: 0)  # a process that holds nothing: the output is over
    line = assert_refused(cli.main(args), capsys, out, text="encoded whole")
    assert "--max-memory" in line and ".png" in line


def test_large_png_written_in_strips_equals_whole(tmp_path, monkeypatch):
    """The band-by-band writer gives the pixels of the whole-image path (bicubic: exactly)."""
    from upsample.inference import api, batch
    src = _png(tmp_path, "in.png", rgb(45, 38))
    assert cli.main(["image", str(src), "-o", str(tmp_path / "whole.png"), "--model", "bicubic"]) == 0
    monkeypatch.setattr(batch, "STREAM_BYTES", 1000)
    monkeypatch.setattr(api, "STRIP_BYTES", 3000)  # bands of a few rows
    assert cli.main(["image", str(src), "-o", str(tmp_path / "strips.png"), "--model", "bicubic"]) == 0
    whole, strips = (np.asarray(Image.open(tmp_path / n)) for n in ("whole.png", "strips.png"))
    assert strips.shape == (90, 76, 3) and np.array_equal(whole, strips)


# ------------------------------------------------------- outputs of the model-file commands


def test_untrained_models_are_not_exported_quantized_or_pruned_unless_asked(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("UPSAMPLE_ALLOW_UNTRAINED", raising=False)
    for args in (["export", "vapsr-x2", "-o", str(tmp_path / "v.onnx")],
                 ["quantize", "vapsr-x2", "--backend", "onnxruntime", "--calib", str(tmp_path), "-o",
                  str(tmp_path / "q.onnx")],
                 ["prune", "vapsr-x2", "--sparsity", "0.5", "-o", str(tmp_path / "p.safetensors")]):
        assert "no trained weights" in assert_refused(cli.main(args), capsys)
    assert list(tmp_path.iterdir()) == []
    assert cli.main(["export", "vapsr-s-x2", "--allow-untrained", "-o", str(tmp_path / "v.onnx")]) == 0


MODEL_FILE_OUTPUTS = {  # name: (arguments with {t} for the folder, a word of the message)
    "an OpenVINO .bin beside": (["export", "espcn-x2", "--format", "openvino", "-o", "{t}/m.xml"], "m.bin exists"),
    "a folder": (["export", "espcn-x2", "-o", "{t}/d.onnx", "--overwrite"], "is a folder"),
    "prune onto its input": (["prune", "{t}/in.safetensors", "--sparsity", "0.5", "-o", "{t}/in.safetensors",
                              "--overwrite"], "the input itself"),
    "prune to .onnx": (["prune", "espcn-x2", "--sparsity", "0.5", "-o", "{t}/p.onnx"], "*.safetensors"),
    "interpolate onto an input": (["interpolate", "{t}/in.safetensors", "{t}/in.safetensors", "--alpha", "0.5",
                                   "-o", "{t}/in.safetensors", "--overwrite"], "the input itself"),
    "make-clip over a file": (["make-clip", "{t}/in.png", "-o", "{t}/taken.mp4", "--size", "16x8"], "exists"),
    "make-clip of no frames": (["make-clip", "{t}/in.png", "-o", "{t}/c.mp4", "--size", "16x8", "--seconds",
                                "0.01", "--fps", "10"], "at least 2"),
}


@pytest.mark.parametrize("case", list(MODEL_FILE_OUTPUTS))
def test_model_file_outputs_never_replace_what_is_there(tmp_path, capsys, case):
    from upsample.models import registry
    from upsample.models.checkpoint import save_checkpoint
    args, words = MODEL_FILE_OUTPUTS[case]
    (tmp_path / "m.bin").write_bytes(b"someone's weights")
    (tmp_path / "taken.mp4").write_bytes(b"someone's clip")
    (tmp_path / "d.onnx").mkdir()
    _png(tmp_path, "in.png", rgb(32, 48))
    save_checkpoint(registry.create_model("espcn-x2"), tmp_path / "in.safetensors")
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    rc = cli.main([a.replace("{t}", str(tmp_path)) for a in args])
    assert words in assert_refused(rc, capsys)
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_a_file_system_error_is_one_line(tmp_path, capsys):
    """Where the output cannot be written (here: under /proc, or under a file), one line naming
    the place, before the export; no traceback, no temporary file's name."""
    (tmp_path / "e.onnx").write_bytes(b"")
    for out in ("/proc/upsample-test/m.onnx", str(tmp_path / "e.onnx" / "m.onnx")):
        rc = cli.main(["export", "espcn-x2", "-o", out])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert "error:" in err and out in err and ".part" not in err


@pytest.mark.parametrize("args, words", [
    (["--scale", "1000"], "at most 32"),
    (["--suffix", "/../../escape"], "without /"),
])
def test_image_refuses_scales_it_cannot_hold_and_suffixes_that_leave_the_folder(tmp_path, capsys, args, words):
    src = _png(tmp_path, "a.png")
    rc = cli.main(["image", str(src), "-o", str(tmp_path / "out"), "--model", "bicubic", *args])
    err = capsys.readouterr().err
    assert rc != 0 and words in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_tiny_outscale_gives_a_pixel_not_a_crash(tmp_path, capsys):
    src = _png(tmp_path, "a.png")
    out = tmp_path / "o.png"
    assert cli.main(["image", str(src), "-o", str(out), "--model", "espcn-x2", "--outscale", "0.01"]) == 0
    assert Image.open(out).size == (1, 1)


def test_an_unknown_pix_fmt_is_one_line(tmp_path, capsys):
    src = tiny_clip(tmp_path / "c.mkv")
    assert "not a pixel format" in assert_refused(
        cli.main(["video", str(src), "-o", str(tmp_path / "o.mp4"), "--model", "bicubic", "--pix-fmt", "nosuch"]),
        capsys, tmp_path / "o.mp4")


def test_data_commands_never_lose_or_mix_files(tmp_path, capsys):
    """prepare: crops of two same-named folders would share names (refused), crops written
    inside a source are not cut again, --stride 0 refused; split: another split over existing
    lists needs --overwrite (the same one is a no-op); clean: a quarantine inside the folder
    refused; check: a negative --min-size refused."""
    for sub in ("x", "y"):
        (tmp_path / sub / "imgs").mkdir(parents=True)
        _png(tmp_path / sub / "imgs", "a.png", rgb(40, 40))
    x = tmp_path / "x" / "imgs"
    assert "same names" in assert_refused(cli.main(["data", "prepare", str(x), str(tmp_path / "y" / "imgs"),
                                                    "-o", str(tmp_path / "o"), "--size", "16"]), capsys)
    counts = []
    for _ in range(2):
        assert cli.main(["data", "prepare", str(x), "-o", str(x / "crops"), "--size", "16"]) == 0
        counts.append(len(list((x / "crops").glob("*.png"))))
    assert counts == [9, 9]  # 40 px in 16 px crops at 0, 16, 24: 3 x 3, made once
    assert "--stride" in assert_refused(cli.main(["data", "prepare", str(x), "-o", str(tmp_path / "o2"),
                                                  "--size", "16", "--stride", "0"]), capsys)
    capsys.readouterr()
    assert cli.main(["data", "split", str(x), "--val", "0.5"]) == 0
    lists = {p: p.read_text() for p in (x / "train.txt", x / "val.txt")}
    assert cli.main(["data", "split", str(x), "--val", "0.5"]) == 0  # the same split: fine
    assert "--overwrite" in assert_refused(cli.main(["data", "split", str(x), "--val", "0.5", "--seed", "7"]), capsys)
    assert {p: p.read_text() for p in lists} == lists
    assert cli.main(["data", "split", str(x), "--val", "0.5", "--seed", "7", "--overwrite"]) == 0
    capsys.readouterr()
    assert "inside" in assert_refused(cli.main(["data", "clean", str(x), "--quarantine", str(x / "q")]), capsys)
    assert "--min-size" in assert_refused(cli.main(["data", "check", str(x), "--min-size", "-1"]), capsys)


@pytest.mark.parametrize("args, words", [
    (["--crf", "999"], "takes 0 (best) to 51"),
    (["--start", "1:99"], "under 60"),
    (["--duration", "0"], "must be > 0"),
    (["--max-memory", "0"], "no memory"),
    (["--start", "nan"], "must be seconds"),
    (["--duration", "inf"], "must be seconds"),
    (["--preset", "foo"], "libx264 takes ultrafast"),
    (["--codec", "mpeg4", "--crf", "30"], "mpeg4 has no constant-quality scale"),
    (["--codec", "mpeg4", "--preset", "fast"], "mpeg4 has no speed presets"),
])
def test_video_numbers_out_of_range_are_one_line(tmp_path, capsys, args, words):
    src = tiny_clip(tmp_path / "c.mkv")
    out = tmp_path / "o.mp4"
    rc = cli.main(["video", str(src), "-o", str(out), "--model", "bicubic", *args])
    assert words in assert_refused(rc, capsys, out)


def test_no_output_replaces_an_input_or_feeds_the_next_run(tmp_path, capsys):
    """image: x.png's output x_x2.png is not written over an input x_x2.png (even with
    --overwrite), and an -o folder inside the input folder is not read as input on a rerun;
    eval: --save never writes into a --data folder nor over earlier pictures without
    --overwrite, and --json never replaces a file that is not JSON."""
    folder = tmp_path / "in"
    folder.mkdir()
    _png(folder, "x.png")
    kept = _png(folder, "x_x2.png", rgb(5, 7)).read_bytes()
    assert cli.main(["image", str(folder), "-o", str(folder), "--model", "bicubic", "--overwrite"]) == 1
    assert (folder / "x_x2.png").read_bytes() == kept and "would replace an input" in capsys.readouterr().err
    # a rerun into the input folder: x_x2.png is x.png's earlier output, neither input nor replaced
    assert cli.main(["image", str(folder), "-o", str(folder), "--model", "bicubic"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["x.png", "x_x2.png"]
    assert (folder / "x_x2.png").read_bytes() == kept and "not read as an input" in capsys.readouterr().err
    other = tmp_path / "in2"
    other.mkdir()
    _png(other, "x.png")
    for _ in range(2):
        cli.main(["image", str(other), "-o", str(other / "out"), "--model", "bicubic"])
    assert sorted(p.name for p in (other / "out").iterdir()) == ["x_x2.png"]
    data = tmp_path / "set"
    data.mkdir()
    _png(data, "a.png", rgb(24, 24))
    before = (data / "a.png").read_bytes()
    base = ["eval", "--model", "bicubic", "--scale", "2", "--data", str(data)]
    capsys.readouterr()
    assert "data folder" in assert_refused(cli.main([*base, "--save", str(tmp_path)]), capsys)
    assert "not JSON" in assert_refused(cli.main([*base, "--json", str(data / "a.png")]), capsys)
    assert (data / "a.png").read_bytes() == before
    assert cli.main([*base, "--save", str(tmp_path / "sv")]) == 0
    capsys.readouterr()
    assert "--overwrite" in assert_refused(cli.main([*base, "--save", str(tmp_path / "sv")]), capsys)
    assert cli.main([*base, "--save", str(tmp_path / "sv"), "--overwrite"]) == 0


@pytest.mark.parametrize("override, words", [
    ("optim.betas=[0.9]", "optim.betas"), ("optim.lr=inf", "optim.lr"), ("sched.gamma=nan", "sched.gamma"),
    ("sched.step_size=0", "sched.step_size"), ("train.seed=-1", "train.seed"), ("val.crop=3", "val.crop"),
    ("degrade.noise_prob=2", "degrade.noise_prob"),
])
def test_numbers_torch_cannot_take_are_refused_before_a_run_dir(tmp_path, capsys, override, words):
    run = tmp_path / "run"
    rc = cli.main(["train", "configs/tiny.toml", "--run-dir", str(run), "--set", override])
    assert words in assert_refused(rc, capsys, run)
    assert not run.exists()


def test_eval_of_an_image_too_small_for_ssim_is_one_line(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    _png(tmp_path / "d", "a.png", rgb(12, 12))
    rc = cli.main(["eval", "--model", "bicubic", "--scale", "2", "--data", str(tmp_path / "d")])
    assert "SSIM needs" in assert_refused(rc, capsys)


def test_resume_refuses_set_values_the_saved_state_fixes(tmp_path, capsys):
    """--resume --set optim.name=sgd crashed on the saved Adam state (and rewrote config.toml
    first); optim.lr was silently ignored. Such changes are refused; steps may change."""
    run = tmp_path / "run"
    assert cli.main(["train", "configs/tiny.toml", "--run-dir", str(run), "--set", "train.steps=2"]) == 0
    saved = (run / "config.toml").read_text()
    capsys.readouterr()
    for change in ('optim.name="sgd"', "optim.lr=0.5", "train.seed=3"):
        rc = cli.main(["train", "configs/tiny.toml", "--run-dir", str(run), "--resume", "--set", change])
        assert "a resumed run keeps" in assert_refused(rc, capsys)
    assert (run / "config.toml").read_text() == saved
    assert cli.main(["train", "configs/tiny.toml", "--run-dir", str(run), "--resume", "--set", "train.steps=3"]) == 0


@pytest.mark.parametrize("args, words", [
    (["bench", "--train", "espcn-x3", "--seconds", "0"], "--seconds must be a positive"),
    (["bench", "--train", "espcn-x3", "--seconds", "nan"], "--seconds must be a positive"),
    (["bench", "--train", "espcn-x3", "--device", "tpu"], "--device must be cpu or cuda"),
    pytest.param(["bench", "--train", "espcn-x3", "--device", "cuda"], "no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),
    pytest.param(["tune", "TINY", "--trials", "1", "--device", "cuda"], "no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),
])
def test_training_commands_check_device_and_seconds_first(tmp_path, capsys, args, words):
    """Before any data is read or any study or run dir made: one line (a tune trial's failure
    used to print optuna's traceback; bench --train on cuda ended in torch's)."""
    tiny = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.toml")
    argv = [tiny if a == "TINY" else a for a in args]
    if argv[0] == "tune":
        argv += ["--run-dir", str(tmp_path / "runs"), "--storage", f"sqlite:///{tmp_path / 'tune.db'}"]
    assert words in assert_refused(cli.main(argv), capsys, tmp_path / "runs")
    assert not (tmp_path / "tune.db").exists()


def test_a_pix_fmt_the_default_encoder_cannot_take_says_it_was_the_default(tmp_path, capsys):
    src = tiny_clip(tmp_path / "c.mkv")
    out = tmp_path / "o.mp4"
    rc = cli.main(["video", str(src), "-o", str(out), "--model", "bicubic", "--pix-fmt", "rgb48le"])
    line = assert_refused(rc, capsys, out)
    assert "cannot encode rgb48le" in line and "is the default encoder for .mp4" in line and "--codec" in line


def test_eval_keeps_same_named_datasets_and_images_apart(tmp_path, capsys):
    """Two --data folders called Set5, and a/x.png beside b/x.png: every one its own row and
    its own --save picture; --json's folder and --per-image's need of --json are checked first."""
    for folder, (h, w) in (("one/Set5", (24, 24)), ("two/Set5", (24, 32)), ("rec/a", (24, 24)), ("rec/b", (32, 24))):
        (tmp_path / folder).mkdir(parents=True)
        _png(tmp_path / folder, "x.png", rgb(h, w))
    base = ["eval", "--model", "bicubic", "--scale", "2"]
    report = tmp_path / "r.json"
    assert cli.main([*base, "--data", str(tmp_path / "one/Set5"), str(tmp_path / "two/Set5"),
                     str(tmp_path / "rec"), "--json", str(report), "--per-image", "--save", str(tmp_path / "sv")]) == 0
    import json
    sets = json.loads(report.read_text())["datasets"]
    assert sorted(sets) == ["one/Set5", "rec", "two/Set5"]
    assert [r["image"] for r in sets["rec"]["images"]] == ["a/x.png", "b/x.png"]
    saved = sorted(p.relative_to(tmp_path / "sv").as_posix() for p in (tmp_path / "sv").rglob("x.png"))
    assert saved == ["one/Set5/x.png", "rec/a/x.png", "rec/b/x.png", "two/Set5/x.png"]
    capsys.readouterr()
    assert "use it with --json" in assert_refused(cli.main([*base, "--data", str(tmp_path / "rec"), "--per-image"]), capsys)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "--json" in assert_refused(cli.main([*base, "--data", str(tmp_path / "rec"), "--json",
                                                str(blocker / "r.json")]), capsys)


def test_model_messages_say_what_to_do(tmp_path, capsys):
    """bicubic has no network to export; a --scale mismatch names the scale as given; the
    trainer's resume state points at the weights beside it."""
    assert "no network" in assert_refused(cli.main(["export", "bicubic", "-o", str(tmp_path / "b.onnx")]), capsys)
    src = _png(tmp_path, "a.png", rgb(24, 24))
    line = assert_refused(cli.main(["image", str(src), "-o", str(tmp_path / "o.png"), "--model", "espcn-x2",
                                    "--scale", "3"]), capsys)
    assert "or a x3 model" in line
    state = tmp_path / "run" / "last_state.pt"
    state.parent.mkdir()
    torch.save({"step": 1, "run_dir": Path("run")}, state)  # more than tensors, as the real one
    line = assert_refused(cli.main(["image", str(src), "-o", str(tmp_path / "o.png"), "--model", str(state)]), capsys)
    assert "best.safetensors" in line


def test_a_16_bit_rgb_tiff_keeps_16_bits(tmp_path, capsys):
    """Pillow opens it as 8-bit RGB; PyAV decodes its 16 bits, as for 16-bit PNG."""
    import av
    deep = RNG.integers(0, 65536, (12, 16, 3), dtype=np.uint16)
    src = tmp_path / "d.tif"
    with av.open(str(src), "w", format="image2") as c:
        s = c.add_stream("tiff", rate=1)
        s.width, s.height, s.pix_fmt = 16, 12, "rgb48le"
        c.mux(s.encode(av.VideoFrame.from_ndarray(deep, format="rgb48le")))
        c.mux(s.encode())
    assert cli.main(["image", str(src), "-o", str(tmp_path / "o.png"), "--model", "bicubic", "--scale", "1"]) == 0
    with av.open(str(tmp_path / "o.png")) as c:
        out = next(c.decode(video=0)).to_ndarray(format="rgb48le")
    assert np.abs(out.astype(int) - deep).max() <= 1


def test_habits_and_slips_from_other_tools(tmp_path, capsys):
    """An empty path (an unset variable) is refused, not read as the current folder; Real-ESRGAN's
    --tile 0 means whole images; an --outscale under 0.001 is refused (1e-9 asked for 90 GB);
    hidden files in a folder (macOS's ._name.jpg) are left out; gray + alpha goes into WebP."""
    src = tmp_path / "in"
    src.mkdir()
    _png(src, "a.png")
    (src / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    la = Image.fromarray(np.dstack([rgb()[..., 0], rgb()[..., 1]]), "LA")
    la.save(src / "la.png")
    out = tmp_path / "out"
    for args in (["image", "", "-o", str(out)], ["image", str(src), "-o", ""]):
        with pytest.raises(SystemExit) as stop:  # argparse's refusal: one line, exit 2
            cli.main(args)
        assert stop.value.code == 2 and "an empty path" in capsys.readouterr().err
    assert not out.exists()
    line = assert_refused(cli.main(["image", str(src), "-o", str(out), "--model", "bicubic", "--outscale", "1e-9"]),
                          capsys, out)
    assert "--outscale 1e-09 is under the 0.001" in line
    assert cli.main(["image", str(src), "-o", str(out), "--model", "bicubic", "--scale", "2", "--tile", "0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.png", "la_x2.png"]
    assert cli.main(["image", str(src / "la.png"), "-o", str(tmp_path / "la.webp"), "--model", "bicubic"]) == 0
    assert Image.open(tmp_path / "la.webp").mode == "RGBA"


def test_a_multi_page_tiff_says_which_page_and_an_unreadable_file_says_why(tmp_path, capsys):
    pages = [Image.fromarray(rgb()), Image.fromarray(rgb()[::-1].copy())]
    pages[0].save(tmp_path / "scan.tif", save_all=True, append_images=pages[1:])
    assert cli.main(["image", str(tmp_path / "scan.tif"), "-o", str(tmp_path / "o"), "--model", "bicubic"]) == 0
    assert "holds 2 pages; the first is upscaled" in capsys.readouterr().err
    if os.geteuid() != 0:  # root reads any file
        locked = _png(tmp_path, "locked.png")
        locked.chmod(0)
        rc = cli.main(["image", str(locked), "-o", str(tmp_path / "o2"), "--model", "bicubic"])
        assert rc != 0 and "permission denied" in capsys.readouterr().err


def test_folders_of_links_are_read_and_unreadable_ones_refused(tmp_path, capsys, monkeypatch):
    """A dataset made of linked folders is read (pathlib's rglob skipped them), a link back up
    the tree is read once, a broken link is named as such, and a folder that cannot be read is
    one error instead of a silent gap in the data."""
    real = tmp_path / "real"
    real.mkdir()
    _png(real, "r.png")
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    _png(src / "sub", "s.png")
    (src / "linked").symlink_to(real, target_is_directory=True)
    (src / "sub" / "up").symlink_to(src, target_is_directory=True)  # a loop
    (src / "gone.png").symlink_to(tmp_path / "nowhere.png")
    images, skipped = imageio.list_images(src)
    assert [p.relative_to(src).as_posix() for p in images] == ["linked/r.png", "sub/s.png"]
    assert skipped == [src / "gone.png"] and imageio.skip_reason(skipped[0]) == "a broken link"
    from upsample.data.prepare import source_files
    assert source_files(src) == images  # `data prepare` reads the linked folder too
    out = tmp_path / "out"
    assert cli.main(["image", str(src), "-o", str(out), "--model", "bicubic", "--scale", "2"]) == 0
    assert "gone.png (a broken link)" in capsys.readouterr().err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["linked/r_x2.png", "sub/s_x2.png"]
    real_iterdir = Path.iterdir

    def locked(self):
        if self.name == "sub":
            raise PermissionError(13, "Permission denied")
        return real_iterdir(self)
    monkeypatch.setattr(Path, "iterdir", locked)
    line = assert_refused(cli.main(["image", str(src), "-o", str(tmp_path / "out2"), "--model", "bicubic"]),
                          capsys, tmp_path / "out2")
    assert "cannot read the folder" in line and "sub (Permission denied)" in line


def test_a_file_name_with_a_newline_stays_one_error_line(tmp_path, capsys):
    """A name holding a line break is written escaped, so the error is still the one line that
    scripts grep for."""
    missing = tmp_path / "two\nlines.png"
    line = assert_refused(cli.main(["image", str(missing), "-o", str(tmp_path / "o.png")]), capsys)
    assert "two\\nlines.png" in line
    # per file in a batch too: a broken file and a broken link in a folder named with a line break
    folder = tmp_path / "nl\ndir"
    folder.mkdir()
    _png(folder, "ok.png")
    (folder / "j.png").write_text("junk")
    (folder / "br\nk").symlink_to(tmp_path / "nowhere")
    cli.main(["image", str(folder), "-o", str(tmp_path / "out"), "--model", "bicubic", "--scale", "2"])
    err = capsys.readouterr().err
    assert "nl\\ndir/j.png" in err and "br\\nk (a broken link)" in err
    assert all(line.startswith(("upsample image:", "note:", "1 written", "bicubic")) for line in err.splitlines()), err

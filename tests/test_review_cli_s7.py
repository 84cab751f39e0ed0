"""Every CLI command under bad or unusual input (review s7): an output location that cannot be
written is one line before any work; file names that stdout's encoding cannot hold; `upsample
image ... | head`; a negative --tile-pad before the model loads; typos of a choice."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_checks import one_error_line as _one_error_line
from upsample import cli


def _png(path: Path, side: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side, 3), 90, np.uint8)).save(path)
    return path


@pytest.fixture
def blocker(tmp_path) -> Path:
    """A file where a folder would have to be: no output can go under it, even as root."""
    p = tmp_path / "blocker.txt"
    p.write_text("a file, not a folder")
    return p


def _env(**extra) -> dict:
    """The environment of a command run as a user runs it (`--backend auto` then takes the
    torch-free bicubic engine: a start in a fraction of a second)."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    return env


# ------------------------------------------------------------------ 1: unwritable outputs, early

@pytest.mark.parametrize("argv", [
    ["prune", "espcn-x2", "--sparsity", "0.3", "-o", "{b}/p.safetensors"],
    ["interpolate", "espcn-x2", "espcn-x2", "--alpha", "0.5", "-o", "{b}/i.safetensors"],
    ["quantize", "espcn-x2", "--backend", "onnxruntime", "--calib", "{t}", "-o", "{b}/q.onnx"],
    ["video", "{t}/in.mkv", "-o", "{b}/v.mkv", "--model", "bicubic"],
    ["eval", "--data", "{t}/hr", "--scale", "2", "--save", "{b}/saved"],
    ["data", "prepare", "{t}/hr", "-o", "{b}/crops"],
    ["data", "clean", "{t}/hr", "--quarantine", "{b}/q"],
    ["data", "split", "{t}/hr", "-o", "{b}/lists"],
    ["train", "{t}/recipe.toml", "--run-dir", "{b}/run"],
])
def test_output_under_a_file_is_one_line_before_any_work(argv, tmp_path, blocker, capsys):
    """Before: the OSError of the first file written (`File exists (blocker.txt)`, or `No such
    file or directory (/proc/.m.onnx.x1y2.part)`: a temporary name), exit 1, after the model was
    loaded or the work done; now one line naming the option and the file in the way, exit 2."""
    _png(tmp_path / "hr" / "a.png", 16)
    (tmp_path / "in.mkv").write_bytes(b"not read: the output is refused first")
    args = [a.format(b=blocker, t=tmp_path) for a in argv]
    assert cli.main(args) == 2
    _one_error_line(capsys, "blocker.txt is a file, so no folder can be made under it")
    assert blocker.read_text() == "a file, not a folder"


# ------------------------------------------------------------------ 2: names stdout cannot encode

def test_stdout_writes_non_utf8_and_unencodable_names():
    """A strict stdout (a UTF-8 locale other than C.UTF-8, PYTHONIOENCODING, a cp1252 log file)
    gets the names as the file system's bytes, else escaped, instead of a UnicodeEncodeError."""
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii", errors="strict")
    cli._tolerate_file_names(out)
    out.write("wrote bad\udcffname.png, \u00fcn\u00ef.png\n")
    out.flush()
    assert raw.getvalue() == b"wrote bad\xffname.png, \\xfcn\\xef.png\n"


def test_image_folder_with_a_non_utf8_name_under_a_strict_stdout(tmp_path):
    """Before: `wrote out/bad?name_x2.png` raised UnicodeEncodeError (a traceback, exit 1) after
    that image, and the rest of the folder was never upscaled."""
    src = tmp_path / "in"
    _png(src / "a.png")
    name = os.fsdecode(b"bad\xffname.png")
    _png(src / name)
    _png(src / "z.png")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "upsample", "image", str(src), "-o", str(out), "--model", "bicubic",
                        "--backend", "auto"], capture_output=True, env=_env(PYTHONIOENCODING="utf-8"), timeout=60)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert b"Traceback" not in r.stderr
    assert sorted(os.listdir(os.fsencode(out))) == [b"a_x2.png", b"bad\xffname_x2.png", b"z_x2.png"]
    assert b"wrote " + os.fsencode(out) + b"/bad\xffname_x2.png" in r.stdout


# ------------------------------------------------------------------ 3: stdout closed by its reader

def test_image_batch_goes_on_when_stdout_reader_leaves(tmp_path):
    """`upsample image DIR -o OUT | head -1`: before, the first `wrote` line's BrokenPipeError
    ended the batch with exit 0 and most images never written; now all are written."""
    src = tmp_path / "in"
    for i in range(4):
        _png(src / f"p{i}.png")
    out = tmp_path / "out"
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone before the first line
    try:
        r = subprocess.run([sys.executable, "-m", "upsample", "image", str(src), "-o", str(out),
                            "--model", "bicubic", "--backend", "auto"], stdout=write_end, stderr=subprocess.PIPE,
                           env=_env(), timeout=60)
    finally:
        os.close(write_end)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert b"Traceback" not in r.stderr and b"Exception ignored" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"p{i}_x2.png" for i in range(4)]


# ------------------------------------------------------------------ 4: options refused at parse time

def test_negative_tile_pad_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """Before: refused by the tiler only after the model loaded and auto's quality gate ran (tens
    of seconds the first time)."""
    from upsample.inference import batch

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(batch, "Engines", no_model)
    assert cli.main(["image", str(_png(tmp_path / "a.png")), "-o", str(tmp_path / "o"), "--model", "espcn-x2",
                     "--tile-pad", "-3"]) == 2
    _one_error_line(capsys, "--tile-pad must be >= 0", "-3")


def test_codec_study_help_does_not_promise_a_run_without_codecs(capsys):
    """The help said `--codecs` defaults to none ("only the pipelines' own points"), which the
    study refuses: `--codecs: name at least one codec`."""
    with pytest.raises(SystemExit):
        cli.main(["codec-study", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "only the pipelines' own points" not in text
    assert "a study needs at least one" in text


# ------------------------------------------------------------------ 5: typos of a choice

@pytest.mark.parametrize("argv, wanted", [
    (["imgae", "x.png"], "did you mean 'image'?"),
    (["data", "chek", "dir"], "did you mean 'check'?"),
    (["image", "x.png", "-o", "out", "--backend", "openvno"], "did you mean 'openvino'?"),
    (["image", "x.png", "-o", "out", "--ext", "jpeg"], "did you mean 'jpg'?"),
])
def test_a_mistyped_choice_suggests_the_close_one(argv, wanted, capsys):
    """Before: only the list of choices (15 commands), as for model names it already did."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    _one_error_line(capsys, "invalid choice", wanted)


def test_a_choice_far_from_all_suggests_none(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bogus"])
    assert "did you mean" not in _one_error_line(capsys, "invalid choice: 'bogus'")


# ------------------------------------------------------------------ 6: a folder and an -o file name

def test_folder_of_one_image_with_a_file_output_says_why(tmp_path, capsys):
    """Before: "-o one.png names one image file, but 1 images need a folder"."""
    _png(tmp_path / "one" / "a.png")
    assert cli.main(["image", str(tmp_path / "one"), "-o", str(tmp_path / "one.png")]) == 2
    err = _one_error_line(capsys, "is a folder: name an output folder")
    assert "1 images" not in err


# ------------------------------------------------------------------ 7: inputs that are no file

def test_an_input_that_is_neither_file_nor_folder_says_what_it_is(tmp_path, capsys):
    """Before: "input not found: x.png" for a FIFO that is there, a broken link and "-"."""
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    link = tmp_path / "link.png"
    link.symlink_to(tmp_path / "gone.png")
    for name, words in ((fifo, "is not a regular file or a folder"), (link, "is a broken link"),
                        ("-", "standard input is not read"), (tmp_path / "nope.png", "input not found")):
        assert cli.main(["image", str(name), "-o", str(tmp_path / "out"), "--model", "bicubic"]) == 2
        _one_error_line(capsys, words)
    assert not (tmp_path / "out").exists()


def test_an_empty_folder_is_one_error_line(tmp_path, capsys):
    """Before: "note: no images in empty" and then "error: no input images": two lines."""
    (tmp_path / "empty").mkdir()
    assert cli.main(["image", str(tmp_path / "empty"), "-o", str(tmp_path / "out")]) == 2
    _one_error_line(capsys, "error: no images in", "empty")


# ------------------------------------------------------------------ 8: cache info

def test_cache_info_names_a_part_once_and_says_when_the_cache_is_a_file(tmp_path, capsys, monkeypatch):
    """Before: `cache info export export` listed export twice, and a file as UPSAMPLE_CACHE
    showed empty parts with no word that nothing is ever cached there."""
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))
    assert cli.main(["cache", "info", "export", "export"]) == 0
    assert capsys.readouterr().out.count("export:") == 1
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "file"))
    assert cli.main(["cache", "info"]) == 0
    assert "is a file, not a folder" in capsys.readouterr().out
    assert (tmp_path / "file").read_text() == "not a folder"


# ------------------------------------------------------------------ 9: a file name with a leading dash

def test_a_file_named_like_an_option_gets_a_hint(tmp_path, capsys, monkeypatch):
    """Before: "the following arguments are required: IN", with -1.png right there."""
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "-1.png")
    with pytest.raises(SystemExit) as exc:
        cli.main(["image", "-1.png", "-o", "out"])
    assert exc.value.code == 2
    _one_error_line(capsys, "-1.png is read as an option", "./-1.png")
    assert cli.main(["image", "-o", "out", "--model", "bicubic", "--", "-1.png"]) == 0
    assert (tmp_path / "out" / "-1_x2.png").is_file()


def test_ext_same_says_which_formats_are_written_as_png(tmp_path, capsys):
    """A .tif or .bmp under --ext same became PNG without a word, where other fallbacks say so."""
    from PIL import Image
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.tif", "b.bmp", "c.jpg"):
        Image.new("RGB", (8, 6), (90, 40, 200)).save(src / name)
    assert cli.main(["image", str(src), "-o", str(tmp_path / "out"), "--model", "bicubic", "--scale", "2",
                     "--ext", "same"]) == 0
    err = capsys.readouterr().err
    assert "--ext same: .bmp, .tif files are not written here; their outputs are PNG" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x2.png", "b_x2.png", "c_x2.jpg"]


def test_a_value_that_starts_with_a_dash_says_how_to_pass_it(capsys):
    """`--max-memory -1GB` got argparse's bare "expected one argument"."""
    for argv, opt in ((["image", "x.png", "-o", "y", "--max-memory", "-1GB"], "--max-memory=-1GB"),
                      (["bench", "--model", "espcn-x2", "--size", "-5x10"], "--size=-5x10")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
        _one_error_line(capsys, "expected one argument", f"is written {opt}")

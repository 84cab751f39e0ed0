"""`upsample image` on folders as a photographer or dataset builder runs it (review s8): reruns
into an output folder inside the input, or into the input itself, do not upscale earlier outputs;
a file named twice is one job; long names, `-o -`, a quoted glob, a full disk and Ctrl-C."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from upsample import cli
from upsample.media import imageio


def _png(folder: Path, name: str, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (8, 10, 3), dtype=np.uint8)).save(folder / name)
    return folder / name


def _image(*args: str) -> int:
    return cli.main(["image", *map(str, args), "--model", "bicubic"])


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_second_run_into_another_sub_folder_skips_the_first_runs_outputs(tmp_path, capsys):
    """`image photos -o photos/x4`, then `-o photos/x2`: photos/x4's pictures are not upscaled
    again (x2/x4/a_x4_x2.png); named as the input, they are."""
    photos = tmp_path / "photos"
    _png(photos, "a.jpg"), _png(photos / "sub", "c.png", 1)
    assert _image(photos, "-o", photos / "x4", "--scale", "4") == 0
    assert _image(photos, "-o", photos / "x2", "--scale", "2") == 0
    assert _tree(photos / "x2") == ["a_x2.png", "sub/c_x2.png"]
    err = capsys.readouterr().err
    assert "2 image(s) in" in err and "not read as an input" in err
    assert _image(photos / "x4", "-o", tmp_path / "x8") == 0  # named: read
    assert _tree(tmp_path / "x8") == ["a_x4_x2.png", "sub/c_x4_x2.png"]


def test_a_second_run_into_the_input_folder_skips_and_keeps_the_first_runs_outputs(tmp_path, capsys):
    folder = tmp_path / "same"
    _png(folder, "x.png")
    assert _image(folder, "-o", folder, "--scale", "2") == 0
    first = (folder / "x_x2.png").read_bytes()
    assert _image(folder, "-o", folder, "--scale", "4") == 0
    assert sorted(p.name for p in folder.iterdir()) == ["x.png", "x_x2.png", "x_x4.png"]
    # --overwrite replaces this run's outputs, never an earlier output found in the input folder
    assert _image(folder, "-o", folder, "--scale", "4", "--suffix", "_x2", "--overwrite") == 1
    assert (folder / "x_x2.png").read_bytes() == first
    assert "would replace an input" in capsys.readouterr().err


def test_a_custom_suffix_of_the_run_marks_earlier_outputs_but_an_empty_one_does_not(tmp_path):
    photos = tmp_path / "p"
    _png(photos, "a.png"), _png(photos / "2019", "a.png", 1)
    assert _image(photos, "-o", photos / "sr", "--suffix", "_sr") == 0
    assert _image(photos, "-o", photos / "sr2", "--suffix", "_sr") == 0
    assert _tree(photos / "sr2") == ["2019/a_sr.png", "a_sr.png"]
    # an empty suffix: 2019/a.png is a picture of its own, not the output of a.png
    assert _image(photos, "-o", tmp_path / "plain", "--suffix", "") == 0
    assert "2019/a.png" in _tree(tmp_path / "plain")


def test_a_file_named_twice_is_upscaled_once(tmp_path, capsys):
    a = _png(tmp_path / "in", "a.png")
    assert _image(a, f"{tmp_path}/in/../in/a.png", tmp_path / "in", "-o", tmp_path / "out") == 0
    assert _tree(tmp_path / "out") == ["a_x2.png"]


def test_two_formats_of_one_name_point_to_ext_same(tmp_path, capsys):
    _png(tmp_path / "in", "a.png"), _png(tmp_path / "in", "a.jpg", 1)
    assert _image(tmp_path / "in", "-o", tmp_path / "out") == 2
    assert "--ext same" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert _image(tmp_path / "in", "-o", tmp_path / "out", "--ext", "same") == 0
    assert _tree(tmp_path / "out") == ["a_x2.jpg", "a_x2.png"]


def test_long_names_get_a_valid_temporary_name_and_too_long_outputs_one_line(tmp_path, capsys):
    folder = tmp_path / "in"
    fits, over = _png(folder, "n" * 245 + ".png"), _png(folder, "m" * 250 + ".png", 1)
    assert _image(folder, "-o", tmp_path / "out") == 1
    assert _tree(tmp_path / "out") == ["n" * 245 + "_x2.png"]
    err = capsys.readouterr().err
    assert "257 bytes" in err and "Traceback" not in err and fits.exists() and over.exists()


def test_the_temporary_name_of_a_long_name_stays_within_255_bytes(tmp_path):
    name = "é" * 125 + ".png"  # 254 bytes
    with imageio.atomic_output(tmp_path / name, suffix=".png.part") as tmp:
        assert len(os.fsencode(tmp.name)) <= 255
        tmp.write_bytes(b"x")
    assert os.listdir(tmp_path) == [name]


@pytest.mark.parametrize("args, words", [
    (["-o", "-"], "standard output is not written"),
    (["in/*.png", "-o", "out"], "expanded by the shell"),
])
def test_dash_output_and_a_quoted_glob_are_one_line(tmp_path, capsys, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "in", "a.png")
    try:  # -o -: argparse's type check (SystemExit 2), as every -o
        rc = _image(*(["in/a.png"] if args[0] == "-o" else []), *args)
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2 and words in err and "Traceback" not in err
    assert not (tmp_path / "-").exists() and not (tmp_path / "out").exists()


def test_a_full_disk_stops_the_batch_with_one_line(tmp_path, capsys, monkeypatch):
    for i in range(4):
        _png(tmp_path / "in", f"p{i}.png", i)
    real, calls = imageio.atomic_save, []

    def full_after_one(img, path, **kw):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(img, path, **kw)
    monkeypatch.setattr(imageio, "atomic_save", full_after_one)
    assert _image(tmp_path / "in", "-o", tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert len(calls) == 2 and _tree(tmp_path / "out") == ["p0_x2.png"]
    assert err.count("error:") == 1 and "No space left" in err and "2 not started" in err


def test_an_interrupt_says_what_was_written_and_the_rerun_does_the_rest(tmp_path, capsys, monkeypatch):
    for i in range(3):
        _png(tmp_path / "in", f"p{i}.png", i)
    real, calls = imageio.atomic_save, []

    def interrupt_second(img, path, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(img, path, **kw)
    monkeypatch.setattr(imageio, "atomic_save", interrupt_second)
    assert _image(tmp_path / "in", "-o", tmp_path / "out") == 130
    assert "1 written before the stop" in capsys.readouterr().err
    assert _tree(tmp_path / "out") == ["p0_x2.png"]  # no half file, no temporary one
    assert _image(tmp_path / "in", "-o", tmp_path / "out") == 0
    assert _tree(tmp_path / "out") == ["p0_x2.png", "p1_x2.png", "p2_x2.png"]


def test_a_line_break_in_a_name_stays_one_line_on_stdout(tmp_path, capsys):
    _png(tmp_path / "in", "new\nline.png")
    assert _image(tmp_path / "in", "-o", tmp_path / "out") == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {tmp_path}/out/new\\nline_x2.png"]


def test_names_one_file_on_a_case_blind_disk_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """cam1/IMG.png and cam2/img.png into one -o on macOS or an exFAT card: IMG_x2.png and
    img_x2.png are one file there, and the second would replace the first."""
    from upsample.inference import batch
    _png(tmp_path / "cam1", "IMG.png"), _png(tmp_path / "cam2", "img.png", 1)
    assert batch._case_blind(tmp_path) is False  # this file system tells the names apart
    monkeypatch.setattr(batch, "_case_blind", lambda folder: True)
    assert _image(tmp_path / "cam1", tmp_path / "cam2", "-o", tmp_path / "out") == 2
    assert "would both be written" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_another_name_of_an_input_is_never_replaced(tmp_path, capsys):
    """Inputs b.png and a.jpg, -o their folder, --suffix '' --overwrite: a.jpg's output a.png is
    b.png under another name (a hard link here; X.PNG for x.png on macOS or Windows): refused,
    where a comparison of names missed it."""
    folder = tmp_path / "in"
    b, a = _png(folder, "b.png"), _png(folder, "a.jpg", 1)
    os.link(b, folder / "a.png")
    rc = _image(b, a, "-o", folder, "--suffix", "", "--overwrite")
    assert rc == 1 and "a.png would replace an input" in capsys.readouterr().err
    assert os.path.samefile(folder / "a.png", b)  # not replaced by a new file


def test_an_output_folder_reached_through_a_linked_folder_is_not_read(tmp_path):
    """lk/out -> ../out and -o out: the earlier outputs seen through the link are not upscaled
    into out/out/..."""
    _png(tmp_path / "lk", "b.png")
    assert _image(tmp_path / "lk", "-o", tmp_path / "out", "--suffix", "_big") == 0
    (tmp_path / "lk" / "out").symlink_to(tmp_path / "out")
    assert _image(tmp_path / "lk", "-o", tmp_path / "out") == 0
    assert _tree(tmp_path / "out") == ["b_big.png", "b_x2.png"]


def test_a_tiled_image_shows_progress_lines_in_a_log(tmp_path, capsys, monkeypatch):
    """stderr no terminal (a log, a CI job): a large image's tiles are still counted, in lines
    (before, the tile bar was off there and one image of minutes printed nothing)."""
    from upsample.media import progress
    monkeypatch.setattr(progress, "LINE_INTERVAL", 0.0)
    src = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(src)
    assert cli.main(["image", str(src), "-o", str(tmp_path / "out"), "--model", "espcn-x2",
                     "--tile", "16", "--backend", "torch"]) == 0
    err = capsys.readouterr().err
    assert "tiles" in err and "px" in err, err

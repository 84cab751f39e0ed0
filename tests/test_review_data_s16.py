"""A messy photo folder through `data prepare|check|clean|split`: names with line breaks and
tabs stay one line (output, manifest, QUARANTINE.tsv), a video with no frame that decodes is
named, a video too small for --size counts once, links that lead to themselves give one line,
crops of an earlier `prepare` inside the folder are not cut again, animations stay out of lists."""

import os
from pathlib import Path

import av
import numpy as np
from PIL import Image

from upsample import cli
from upsample.data import prepare as prep


def _img(path, size=40, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def _clip(path, w=32, h=32, frames=3):
    with av.open(str(path), "w") as out:
        s = out.add_stream("ffv1", rate=5)
        s.width, s.height, s.pix_fmt = w, h, "bgr0"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), 40 * i, np.uint8), format="rgb24")
            for p in s.encode(frame):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def test_prepare_rerun_skips_a_file_whose_name_holds_a_line_break(tmp_path, capsys):
    src = tmp_path / "photos"
    _img(src / "a.png", 32, 1)
    _img(src / "new\nline\u2028x.png", 32, 2)  # the manifest's key was cut in two lines: never "done"
    out = tmp_path / "crops"
    prep.prepare([str(src)], str(out), size=16, progress=False)
    again = prep.prepare([str(src)], str(out), size=16, progress=False)
    assert again["skipped_done"] == 2 and again["written"] == 0 and again["crops"] == 8


def test_prepare_names_a_video_with_no_frame_and_counts_a_small_video_once(tmp_path, capsys):
    src = tmp_path / "v"
    src.mkdir()
    _img(src / "a.png", 32)
    (src / "empty.mkv").write_bytes(_clip(tmp_path / "c.mkv").read_bytes()[:300])  # cut short: no frame
    _clip(src / "small.mkv", 16, 16, frames=3)
    out = tmp_path / "crops"
    first = prep.prepare([str(src)], str(out), size=32, progress=False)
    err = capsys.readouterr().err
    assert "empty.mkv" in err and first["unreadable"] == 1
    assert first["too_small"] == 1  # one video, not one per frame (3)
    again = prep.prepare([str(src)], str(out), size=32, progress=False)
    assert again["too_small"] == 1 and again["unreadable"] == 1  # not then "smaller than --size"


def test_check_and_clean_print_and_log_one_line_per_file(tmp_path, capsys):
    root = tmp_path / "photos"
    _img(root / "ok.png", 40)
    (root / "ze\nro.png").write_bytes(b"")
    (root / "ta\tb.png").write_bytes(b"")
    assert cli.main(["data", "check", str(root), "--min-size", "8"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and any("ze\\nro.png: unreadable" in line for line in lines)
    assert cli.main(["data", "clean", str(root), "--quarantine", str(tmp_path / "q"), "--min-size", "8"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 3 and "moved 2 files" in out
    log = (tmp_path / "q" / "QUARANTINE.tsv").read_text().splitlines()
    assert len(log) == 2 and all(len(line.split("\t")) == 3 for line in log)
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["QUARANTINE.tsv", "ta\tb.png", "ze\nro.png"]


def test_links_that_lead_to_themselves_give_one_line(tmp_path, capsys):
    root = tmp_path / "photos"
    _img(root / "a.png", 40)
    loop = tmp_path / "loop"
    os.symlink("loop", loop)
    cases = [["data", "prepare", str(loop), "-o", str(tmp_path / "o")],
             ["data", "prepare", str(root), "-o", str(loop)],
             ["data", "clean", str(loop), "--quarantine", str(tmp_path / "q")],
             ["data", "clean", str(root), "--quarantine", str(loop)],
             ["data", "split", str(root), "-o", str(loop)]]
    for argv in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and "loop" in err, argv
    assert (root / "a.png").is_file()


def test_prepare_does_not_cut_crops_of_an_earlier_prepare_inside_the_folder(tmp_path, capsys):
    src = tmp_path / "photos"
    _img(src / "a.png", 32)
    prep.prepare([str(src)], str(src / "crops"), size=16, progress=False)
    c = prep.prepare([str(src)], str(tmp_path / "other"), size=16, progress=False)
    assert c["sources"] == 1 and c["crops"] == 4
    assert "crops an earlier `data prepare` made" in capsys.readouterr().err
    c = prep.prepare([str(src / "crops")], str(tmp_path / "smaller"), size=8, progress=False)
    assert c["sources"] == 4  # the crops folder named itself is cut


def test_split_leaves_animations_out_of_the_lists(tmp_path, capsys):
    root = tmp_path / "photos"
    for i in range(4):
        _img(root / f"p{i}.png", 40, i)
    frames = [Image.new("RGB", (40, 40), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    tr, val, out = prep.split(str(root), 0.25, 0, str(tmp_path / "lists"))
    assert tr + val == 4
    listed = (out / "train.txt").read_text() + (out / "val.txt").read_text()
    assert "anim.gif" not in listed
    assert "anim.gif (an animation)" in capsys.readouterr().err


def test_prepare_again_recuts_a_picture_replaced_under_the_same_name(tmp_path, capsys):
    src = tmp_path / "photos"
    _img(src / "a.png", 32, 1)
    _img(src / "a_s001.png", 32, 3)  # its crops a_s001_s000.png ... are not a.png's
    out = tmp_path / "crops"
    prep.prepare([str(src)], str(out), size=16, progress=False)
    _img(src / "a.png", 16, 2)  # another picture, smaller: one crop instead of four
    os.utime(src / "a.png", ns=(1, 1))
    c = prep.prepare([str(src)], str(out), size=16, progress=False)
    assert c["written"] == 1 and c["crops"] == 5
    new = np.asarray(Image.open(src / "a.png"))
    assert np.array_equal(np.asarray(Image.open(out / "photos__a_s000.png")), new)
    assert sorted(p.name for p in out.glob("photos__a_s*.png")) == ["photos__a_s000.png"] + [
        f"photos__a_s001_s{i:03d}.png" for i in range(4)]


def _png_header_only(path, width, height):
    """A PNG that declares width x height and holds no pixels: a decompression bomb's header."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_split_leaves_out_a_picture_over_the_pixel_limit(tmp_path, capsys, monkeypatch):
    """A 900-Mpx PNG went into val.txt; training then refused it. --max-pixels 0 takes it."""
    from upsample.cli import main

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # process-wide: restored after

    for i in range(4):
        Image.new("RGB", (64, 64), (i * 40, 0, 0)).save(tmp_path / f"p{i}.png")
    _png_header_only(tmp_path / "bomb.png", 30000, 30000)
    assert main(["data", "split", str(tmp_path), "--val", "0.5", "-o", str(tmp_path / "a")]) == 0
    lists = (tmp_path / "a" / "train.txt").read_text() + (tmp_path / "a" / "val.txt").read_text()
    assert "bomb.png" not in lists and "p0.png" in lists
    assert "bomb.png (30000x30000, over the 179 Mpx that --max-pixels allows)" in capsys.readouterr().err
    assert main(["data", "split", str(tmp_path), "--val", "0.5", "-o", str(tmp_path / "b"),
                 "--max-pixels", "0"]) == 0
    lists = (tmp_path / "b" / "train.txt").read_text() + (tmp_path / "b" / "val.txt").read_text()
    assert "bomb.png" in lists

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

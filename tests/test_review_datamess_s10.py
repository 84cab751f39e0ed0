"""Messy real-world training folders (links, copies, lists from other tools): `data check`
counts one file reached by two names once, `clean` never moves a file out of a folder it was not
given nor leaves a link leading to nothing, `split` keeps copies of a picture on one side, and
data.train lists take the videos `data prepare` takes."""

import io
import os
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from upsample import cli
from upsample.data import pairs, prepare as prep, sources
from upsample.errors import UserError

T91 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "train" / "T91"


def _img(path, size=40, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def test_check_counts_a_linked_file_once_and_never_as_its_own_duplicate(tmp_path):
    root = tmp_path / "photos"
    _img(root / "b.png", seed=1)
    _img(root / "sub" / "c.png", seed=2)
    os.symlink("b.png", root / "a_link.png")         # sorts first: was "b.png: duplicate of a_link.png"
    os.symlink("sub", root / "a_dir")                # a linked folder inside the folder: c.png once
    images, problems = prep.scan(str(root), 8, progress=False)
    assert sorted(p.relative_to(root).as_posix() for p in images) == ["b.png", "sub/c.png"]
    assert problems == []


def test_clean_never_moves_files_out_of_a_folder_a_link_leads_to(tmp_path, capsys):
    other = tmp_path / "DIV2K"
    small = _img(other / "0001.png", size=20)
    root = tmp_path / "train"
    _img(root / "own.png", size=20, seed=3)
    os.symlink(other, root / "div2k")  # a training folder made of links to the datasets
    assert cli.main(["data", "clean", str(root), "--quarantine", str(tmp_path / "q"), "--min-size", "32"]) == 1
    out = capsys.readouterr().out
    assert small.is_file()  # was moved into the quarantine: DIV2K lost a file
    assert not (root / "own.png").exists() and (tmp_path / "q" / "own.png").is_file()
    assert f"left {root / 'div2k' / '0001.png'} where it is" in out and "outside" in out


def test_clean_moves_the_links_to_a_file_with_it(tmp_path):
    root = tmp_path / "photos"
    _img(root / "big.png", size=40)
    _img(root / "small.png", size=20, seed=1)
    os.symlink("small.png", root / "alias.png")
    _, _, moved, left = prep.clean(str(root), str(tmp_path / "q"), min_size=32, keep=[], progress=False)
    assert {p.name for p, _ in moved} == {"small.png", "alias.png"} and left == []
    assert not any(p.is_symlink() and not p.exists() for p in root.iterdir())  # no link to nothing
    log = (tmp_path / "q" / "QUARANTINE.tsv").read_text()
    assert "a link to" in log and "too-small" in log


def test_clean_of_a_folder_without_images_says_so(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert cli.main(["data", "clean", str(tmp_path / "empty"), "--quarantine", str(tmp_path / "q")]) == 2
    assert "no images in" in capsys.readouterr().err


def test_split_keeps_copies_of_a_picture_on_one_side_and_each_file_once(tmp_path):
    root = tmp_path / "photos"
    for i in range(12):
        _img(root / f"p{i:02d}.png", seed=i)
    (root / "copies").mkdir()
    for i in range(0, 12, 2):
        shutil.copy(root / f"p{i:02d}.png", root / "copies" / f"p{i:02d} copy.png")
    os.symlink("p01.png", root / "link.png")
    for seed in range(6):
        n_tr, n_val, out = prep.split(str(root), 0.3, seed, str(tmp_path / f"s{seed}"))
        tr = (out / "train.txt").read_text().splitlines()
        val = (out / "val.txt").read_text().splitlines()
        assert len(tr) + len(val) == 18 == n_tr + n_val and len(set(tr + val)) == 18  # the link: once
        for i in range(0, 12, 2):
            sides = {any(f"p{i:02d}" in line for line in side) for side in (tr, val)}
            assert sides == {True, False}, (seed, i, tr, val)  # both copies on one side
        again = prep.split(str(root), 0.3, seed, str(tmp_path / f"s{seed}"))  # same lists: no refusal
        assert again[:2] == (n_tr, n_val)


def test_split_is_the_same_whichever_name_a_linked_folder_is_walked_by(tmp_path):
    root = tmp_path / "photos"
    for i in range(10):
        _img(root / "sub" / f"p{i}.png", seed=i)
    prep.split(str(root), 0.3, 0, str(tmp_path / "plain"))
    os.symlink("sub", root / "a_first")  # walked first or last: the file system's order
    prep.split(str(root), 0.3, 0, str(tmp_path / "linked"))
    for name in ("train.txt", "val.txt"):
        assert (tmp_path / "plain" / name).read_text() == (tmp_path / "linked" / name).read_text()
    walked = [root / "a_first" / "p0.png", root / "sub" / "p0.png"]  # either order: one name, the file's own
    for order in (walked, walked[::-1]):
        assert pairs.one_name_each(root, order) == [root / "sub" / "p0.png"]


def test_training_split_keeps_copies_together(tmp_path):
    root = tmp_path / "photos"
    for i in range(10):
        _img(root / f"p{i}.png", seed=i)
        shutil.copy(root / f"p{i}.png", root / f"p{i}_copy.png")
    for seed in range(4):
        tr, val = sources.training_images([str(root)], val_fraction=0.2, seed=seed)
        held = {p.name.replace("_copy", "") for p in val}
        assert held and not held & {p.name.replace("_copy", "") for p in tr}


def _video(path, frames=3):
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        for i in range(frames):
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * i, np.uint8),
                                                           format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)


def test_a_training_list_takes_its_videos_as_data_prepare_does(tmp_path, capsys):
    media = tmp_path / "media"
    _img(media / "a.png")
    _video(media / "clip.mp4")
    (media / "notes.doc").write_text("x")
    listing = tmp_path / "lists" / "train.txt"
    listing.parent.mkdir()
    listing.write_bytes(b"# from another tool\r\n../media/a.png\r\n\r\n../media/clip.mp4\r\n../media/notes.doc\r\n")
    items = sources.collect_sources([str(listing)], frames=tmp_path / "frames", progress=True)
    assert [k for _, k in items] == ["train/a.png"] + [f"train/clip.mp4/f{n:06d}.png" for n in range(3)]
    assert "notes.doc" in capsys.readouterr().err


def test_missing_list_entries_are_named_with_where_they_were_looked_for(tmp_path):
    _img(tmp_path / "a.png")
    listing = tmp_path / "train.txt"
    listing.write_bytes(b"a.png\r\n# a comment\r\nb.png\r\na.png  # trailing note\r\n")
    for call in (lambda: sources.collect_sources([str(listing)]),
                 lambda: prep.prepare([str(listing)], str(tmp_path / "crops"), progress=False)):
        with pytest.raises(UserError) as exc:
            call()
        msg = str(exc.value)
        assert "2 files in" in msg and "b.png" in msg and "a.png  # trailing note" in msg
        assert f"relative to the list's folder, {tmp_path}" in msg and "starts with #" in msg


@pytest.mark.skipif(not T91.is_dir(), reason="needs the T91 training images")
def test_check_notes_a_picture_saved_again_as_jpeg(tmp_path, capsys):
    root = tmp_path / "photos"
    root.mkdir()
    shutil.copy(T91 / "t1.png", root / "t1.png")
    shutil.copy(T91 / "t2.png", root / "t2.png")
    buf = io.BytesIO()
    Image.open(T91 / "t1.png").convert("RGB").save(buf, "JPEG", quality=90)
    (root / "t1 from phone.jpg").write_bytes(buf.getvalue())
    images, problems = prep.scan(str(root), 8, progress=False)
    err = capsys.readouterr().err
    assert problems == [] and len(images) == 3  # a note, not a problem that clean would move
    assert "t1 from phone.jpg" in err and "t1.png look like one picture saved twice" in err
    assert "t2.png" not in err
    assert pairs.copy_of([root / "t1.png", root / "t2.png", root / "t1.png"]) == [0, 1, 0]


def test_a_list_saved_by_notepad_with_a_bom_reads_its_first_line(tmp_path):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png", seed=1)
    listing = tmp_path / "train.txt"
    listing.write_bytes("# photos\r\na.png\r\n".encode("utf-8-sig"))  # was a missing file "\ufeff# photos"
    assert pairs.read_file_list(listing) == [tmp_path / "a.png"]
    listing.write_bytes("b.png\r\na.png\r\n".encode("utf-8-sig"))
    assert pairs.read_file_list(listing) == [tmp_path / "b.png", tmp_path / "a.png"]


def test_prepare_names_the_images_too_small_to_cut(tmp_path, capsys):
    _img(tmp_path / "src" / "big.png", size=40)
    _img(tmp_path / "src" / "tiny.png", size=20, seed=1)
    counts = prep.prepare([str(tmp_path / "src")], str(tmp_path / "crops"), size=32, progress=False)
    assert counts["too_small"] == 1 and counts["crops"] == 4  # big.png: 2x2 crops
    assert f"{tmp_path / 'src' / 'tiny.png'} is 20x20, smaller than --size 32" in capsys.readouterr().err


def test_a_validation_list_naming_a_video_is_refused_before_any_decoding(tmp_path):
    _img(tmp_path / "a.png")
    _video(tmp_path / "clip.mp4")
    (tmp_path / "val.txt").write_text("a.png\nclip.mp4\n")
    with pytest.raises(UserError, match=r"^data.val_list: 1 entries of .*val.txt are not pictures, e.g. .*clip.mp4"):
        sources.check_val_list(tmp_path / "val.txt")
    (tmp_path / "val.txt").write_text("a.png\n")
    sources.check_val_list(tmp_path / "val.txt")


def test_of_two_copies_the_one_named_as_a_copy_is_the_duplicate(tmp_path):
    root = tmp_path / "photos"
    _img(root / "zebra.png", seed=5)
    (root / "a").mkdir()
    shutil.copy(root / "zebra.png", root / "a" / "zebra copy.png")  # sorts first: zebra.png was moved
    shutil.copy(root / "zebra.png", root / "a" / "zebra (1).png")
    _, problems = prep.scan(str(root), 8, progress=False)
    assert sorted(p.path.name for p in problems if p.kind == "duplicate") == ["zebra (1).png", "zebra copy.png"]
    assert all("same pixels as" in p.detail and p.detail.endswith("zebra.png") for p in problems)

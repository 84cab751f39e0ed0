"""Regressions found reviewing 98da8b2..7b661b9: `data prepare` re-cutting a replaced source."""

import os
import shutil

import numpy as np
from PIL import Image

from upsample.data import prepare


def _picture(path, seed, side=64):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)


def _crops(out, stem):
    return sorted(p.name for p in out.glob(f"{stem}_s*.png"))


def test_recutting_a_replaced_picture_keeps_the_crops_of_a_neighbour_named_like_its_frames(tmp_path):
    """shot.png replaced: its old crops go, but not those of shot_f000001.png (another source,
    whose crop names match the regex of shot's video frames): they were deleted while the
    manifest still counted them, and no later run made them again."""
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    _picture(src / "shot.png", 0)
    _picture(src / "shot_f000001.png", 1)
    prepare.prepare([str(src)], str(out), size=32, progress=False)
    neighbour = _crops(out, "src__shot_f000001")
    assert len(neighbour) == 4
    _picture(src / "shot.png", 2)  # replaced: other content, other time
    os.utime(src / "shot.png", ns=(1, 1))
    prepare.prepare([str(src)], str(out), size=32, progress=False)
    assert _crops(out, "src__shot_f000001") == neighbour
    c = prepare.prepare([str(src)], str(out), size=32, progress=False)
    assert c["crops"] == len(list(out.glob("*.png")))  # what it counts is there


def test_a_picture_restored_after_a_replacement_is_cut_again(tmp_path):
    """A cut, replaced by B (re-cut: B's crops), then A restored from a backup with its time
    (cp -p, rsync -t): A's key is still in the manifest, so it was called done and B's crops
    stayed as A's."""
    src, out, bak = tmp_path / "src", tmp_path / "out", tmp_path / "bak"
    src.mkdir()
    bak.mkdir()
    _picture(src / "p.png", 0)
    shutil.copy2(src / "p.png", bak / "p.png")
    prepare.prepare([str(src)], str(out), size=32, progress=False)
    first = (out / "src__p_s000.png").read_bytes()
    _picture(src / "p.png", 1)
    os.utime(src / "p.png", ns=(5, 5))
    prepare.prepare([str(src)], str(out), size=32, progress=False)
    assert (out / "src__p_s000.png").read_bytes() != first
    shutil.copy2(bak / "p.png", src / "p.png")  # the original back, with its time
    prepare.prepare([str(src)], str(out), size=32, progress=False)
    assert (out / "src__p_s000.png").read_bytes() == first

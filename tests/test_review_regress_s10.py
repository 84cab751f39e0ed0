"""Regression review s10: what this session's own changes broke, found by a review of its diff."""

import fcntl
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from upsample.cli import image as image_cli
from upsample.cli import options
from upsample.data import pairs, prepare, sources
from upsample.errors import UserError
from upsample.media import cache
from upsample.runtime import export


def test_a_listed_link_keeps_its_name_and_a_hidden_object_is_never_used(tmp_path):
    """git-annex / DataLad: visible links into .git/annex/objects. The links are the files as
    listed; the objects under .git are never named (clean moved them out of the annex)."""
    objects = tmp_path / "ds" / ".git" / "annex" / "objects"
    objects.mkdir(parents=True)
    listed = []
    for i in range(3):
        obj = objects / f"SHA{i}.png"
        Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(obj)
        link = tmp_path / "ds" / f"img{i}.png"
        link.symlink_to(obj)
        listed.append(link)
    assert pairs.one_name_each(tmp_path / "ds", listed[::-1]) == listed


def test_of_a_file_and_a_link_to_it_the_files_own_name_is_kept(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "z-link.png").symlink_to(tmp_path / "a.png")
    (tmp_path / "0-link.png").symlink_to(tmp_path / "a.png")
    got = pairs.one_name_each(tmp_path, [tmp_path / "z-link.png", tmp_path / "0-link.png", tmp_path / "a.png"])
    assert got == [tmp_path / "a.png"]


def test_sixteen_bit_pictures_of_one_size_are_not_all_near_copies():
    rng = np.random.default_rng(0)
    thumbs = [(f"g{i}", (64, 64), prepare.thumbnail(Image.fromarray(rng.integers(0, 65535, (64, 64), dtype=np.uint16))))
              for i in range(4)]
    assert prepare.near_copies(thumbs) == []
    assert thumbs[0][2].max() > 200  # the range is used, not clipped at 255 of 65535


def test_a_validation_list_takes_pictures_by_their_header(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jfif", "JPEG")
    Image.new("RGB", (8, 8)).save(tmp_path / "b", "PNG")
    (tmp_path / "notes.txt").write_text("hello")
    listing = tmp_path / "val.txt"
    listing.write_text("a.jfif\nb\n")
    sources.check_val_list(listing)
    listing.write_text("a.jfif\nnotes.txt\n")
    with pytest.raises(UserError, match="not pictures"):
        sources.check_val_list(listing)


def test_without_file_locks_no_temporaries_are_removed(tmp_path, monkeypatch):
    """Lustre without flock: a live run's temporaries look like a dead one's; they stay."""
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))
    folder = export.cache_dir()
    folder.mkdir(parents=True)
    part = folder / ".K.onnx.x1y2.part"
    part.write_bytes(b"half")

    def no_locks(fd, op):
        raise OSError(38, "Function not implemented")
    real_flock = fcntl.flock
    monkeypatch.setattr(cache.fcntl, "flock", no_locks)
    with export.building("K"):
        pass
    assert part.exists()
    monkeypatch.setattr(cache.fcntl, "flock", real_flock)
    with export.building("K"):
        pass
    assert not part.exists()  # with locks: a killed writer's, removed


def test_a_link_to_an_input_is_an_input_of_its_own(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(tmp_path / "a.png")
    a, link = str(tmp_path / "a.png"), str(tmp_path / "link.png")
    assert image_cli._distinct([a, link, a]) == [a, link]


@pytest.mark.parametrize("precision", ["bf16", "fp16", "auto"])
def test_half_with_a_half_precision_is_allowed(precision):
    options.check_half(SimpleNamespace(half=True, precision=precision))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_half_against_full_or_int8_precision_is_refused(precision):
    with pytest.raises(UserError, match="two precisions"):
        options.check_half(SimpleNamespace(half=True, precision=precision))


def test_an_output_the_tool_cannot_write_is_not_blamed_on_ext(tmp_path):
    image_cli._check_ext("png", tmp_path / "v.tif", True)  # left to the output check's own line


def test_train_init_empty_means_none():
    from upsample.cli import build_parser
    args = build_parser().parse_args(["train", "x.toml", "--init", ""])
    assert args.init == ""


def test_a_stopped_study_is_not_called_written_because_its_folder_changed(tmp_path, capsys):
    """The staging folder made inside -o changes the folder: only summary.md, put in place last,
    says the study was written."""
    out = tmp_path / "study"
    out.mkdir()
    with pytest.raises(options.Stopped):
        with options.said_stopped("codec-study", out, last=out / "summary.md"):
            (out / ".codec-study.x.part").mkdir()
            raise KeyboardInterrupt
    assert "nothing written to" in capsys.readouterr().err
    with pytest.raises(options.Stopped):
        with options.said_stopped("codec-study", out, last=out / "summary.md"):
            (out / "summary.md").write_text("done")
            raise KeyboardInterrupt
    assert "was written whole" in capsys.readouterr().err

"""`codec-study` and `make-clip` on bad inputs and outputs: one line each, checked before any
work, never an input or an earlier study replaced unasked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import av
import pytest
from PIL import Image

from upsample import cli
from upsample.studies import clips, codec, codec_study

JPEG = ["--codecs", "jpeg", "--ladder", "jpeg=30,60"]


def picture(path: Path, h: int = 48, w: int = 64, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255.0 / w, y * 255.0 / h, 128 + 60 * np.sin(x / 3.0)], -1) + rng.normal(0, 10, (h, w, 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


def refused(capsys, args: list[str], message: str) -> str:
    """Run the command; it must exit 2 with one line on stderr that holds `message`."""
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and message in err, err
    return err


def study(folder: Path, out: Path, *more: str) -> None:
    assert cli.main(["codec-study", str(folder), "-o", str(out), *JPEG, *more]) == 0


def make_clip(capsys, tmp_path: Path, size: str, seconds: str, name: str = "c.mkv") -> Path:
    clip = tmp_path / name
    assert cli.main(["make-clip", str(picture(tmp_path / "big.png", 120, 160)), "-o", str(clip),
                     "--size", size, "--seconds", seconds]) == 0
    capsys.readouterr()
    return clip


def no_models(monkeypatch) -> None:
    """A check that must come before any model loads fails the test if one is loaded."""
    def fail(*a, **k):
        raise AssertionError("pipelines loaded before the check")
    monkeypatch.setattr(codec_study, "load_pipelines", fail)


def test_merge_never_replaces_its_input_study_json(tmp_path, capsys):
    picture(tmp_path / "a" / "0.png")
    picture(tmp_path / "b" / "1.png", seed=1)
    study(tmp_path / "a", tmp_path / "A")
    study(tmp_path / "b", tmp_path / "B")
    before = (tmp_path / "A" / "study.json").read_text()
    for extra in ([], ["--overwrite"]):  # an input is never replaced, not even with --overwrite
        refused(capsys, ["codec-study", "--merge", str(tmp_path / "A" / "study.json"), str(tmp_path / "B"),
                         "-o", str(tmp_path / "A"), *extra], "holds the input")
    assert (tmp_path / "A" / "study.json").read_text() == before


@pytest.mark.parametrize("sizes,message", [
    ([(1, 1), (3, 7)], "every image is smaller than 16x16"),
    ([(4, 256)], "a.png (256x4)"),
    ([(1, 1)], "a.png (1x1)"),
])
def test_too_small_images_are_one_line(tmp_path, capsys, sizes, message):
    for name, (h, w) in zip("ab", sizes):
        picture(tmp_path / "imgs" / f"{name}.png", h, w)
    refused(capsys, ["codec-study", str(tmp_path / "imgs"), "-o", str(tmp_path / "o"), *JPEG], message)


def test_too_small_images_beside_others_are_skipped_with_a_note(tmp_path, capsys):
    picture(tmp_path / "imgs" / "a.png", 1, 1)
    picture(tmp_path / "imgs" / "b.png")
    study(tmp_path / "imgs", tmp_path / "o")
    assert "skipped 1 image(s) smaller than 16x16" in capsys.readouterr().err
    points = json.loads((tmp_path / "o" / "study.json").read_text())["points"]
    assert {p["item"] for p in points} == {"b.png"}


def test_tiny_clip_frames_are_one_line(tmp_path, capsys):
    clip = make_clip(capsys, tmp_path, "2x2", "0.2")
    refused(capsys, ["codec-study", str(clip), "--codecs", "x264", "-o", str(tmp_path / "o")],
            "its frame is 2x2, smaller than 16x16")


@pytest.mark.parametrize("content", ["{}", "[1, 2]", '{"pipelines": 3}'])
def test_merge_of_a_file_that_is_no_study_is_one_line(tmp_path, capsys, content):
    (tmp_path / "bad.json").write_text(content)
    refused(capsys, ["codec-study", "--merge", str(tmp_path / "bad.json"), "-o", str(tmp_path / "o")],
            "is not a codec-study study.json")


def test_an_earlier_study_is_replaced_only_with_overwrite(tmp_path, capsys, monkeypatch):
    picture(tmp_path / "imgs" / "a.png")
    study(tmp_path / "imgs", tmp_path / "o")
    stamp = (tmp_path / "o" / "summary.md").stat().st_mtime_ns
    with monkeypatch.context() as m:
        no_models(m)
        refused(capsys, ["codec-study", str(tmp_path / "imgs"), "-o", str(tmp_path / "o"), *JPEG],
                "pass --overwrite")
    assert (tmp_path / "o" / "summary.md").stat().st_mtime_ns == stamp
    study(tmp_path / "imgs", tmp_path / "o", "--overwrite")


def test_unwritable_outputs_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    picture(tmp_path / "imgs" / "a.png")
    (tmp_path / "file").write_text("x")
    no_models(monkeypatch)
    base = ["codec-study", str(tmp_path / "imgs"), *JPEG, "-o"]
    refused(capsys, base + [str(tmp_path / "file")], "is an existing file")
    refused(capsys, base + [str(tmp_path / "file" / "sub")], "is a file, so no folder")

    def no_frames(*a, **k):
        raise AssertionError("frames made before the output was checked")
    monkeypatch.setattr(clips, "clip_frames", no_frames)
    refused(capsys, ["make-clip", str(picture(tmp_path / "big.png", 120, 160)), "-o",
                     str(tmp_path / "file" / "c.mkv"), "--size", "64x48"], "is a file, so no folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_read_only_output_folder_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    picture(tmp_path / "imgs" / "a.png")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    no_models(monkeypatch)
    try:
        refused(capsys, ["codec-study", str(tmp_path / "imgs"), *JPEG, "-o", str(tmp_path / "ro")],
                "cannot write in")
        refused(capsys, ["make-clip", str(picture(tmp_path / "big.png", 120, 160)), "-o",
                         str(tmp_path / "ro" / "c.mkv"), "--size", "64x48"], "cannot write in")
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_cut_clip_gets_a_note_and_a_picture_named_mkv_is_refused(tmp_path, capsys):
    clip = make_clip(capsys, tmp_path, "64x48", "0.2")
    big = tmp_path / "big.png"
    data = clip.read_bytes()
    (tmp_path / "trunc.mkv").write_bytes(data[:len(data) // 2])
    frames, _ = codec.read_frames(tmp_path / "trunc.mkv")
    assert 0 < len(frames) < 5
    assert "of the 5 frames its header announces" in capsys.readouterr().err
    frames, _ = codec.read_frames(clip, 3)  # stopped by max_frames: nothing to note
    assert len(frames) == 3 and "note" not in capsys.readouterr().err
    (tmp_path / "fake.mkv").write_bytes(big.read_bytes())
    refused(capsys, ["codec-study", str(tmp_path / "fake.mkv"), "--codecs", "x264", "-o",
                     str(tmp_path / "o")], "is a still image, not a video clip")


def test_untrained_downscaler_is_refused_as_an_untrained_upscaler(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("UPSAMPLE_ALLOW_UNTRAINED", raising=False)
    picture(tmp_path / "imgs" / "a.png")
    refused(capsys, ["codec-study", str(tmp_path / "imgs"), *JPEG, "-o", str(tmp_path / "o"),
                     "--pipeline", "joint-x2:bicubic"], "joint-x2 has no trained weights")
    refused(capsys, ["codec-study", str(tmp_path / "imgs"), *JPEG, "-o", str(tmp_path / "o"),
                     "--pipeline", "vdsr:bicubic"], "vdsr has no learned downscaler")
    study(tmp_path / "imgs", tmp_path / "o", "--pipeline", "joint-x2:bicubic", "--allow-untrained")


def test_make_clip_streams_its_frames_with_progress(tmp_path, capsys, monkeypatch):
    import upsample.media.progress as progress
    monkeypatch.setattr(progress, "LINE_INTERVAL", 0.0)  # a line at once, not after 5 s
    img = np.zeros((120, 160, 3), np.uint8)
    assert not isinstance(clips.clip_frames(img, (64, 48), 10, "pan"), list)  # made as encoded
    clip = tmp_path / "c.mkv"
    assert cli.main(["make-clip", str(picture(tmp_path / "big.png", 120, 160)), "-o", str(clip),
                     "--size", "64x48", "--seconds", "0.4"]) == 0
    err = capsys.readouterr().err
    assert "c.mkv 10/10" in err, err
    assert len(codec.read_frames(clip)[0]) == 10


def test_a_clip_larger_than_the_free_memory_is_one_line(tmp_path, capsys, monkeypatch):
    import upsample.inference.memory as memory
    clip = make_clip(capsys, tmp_path, "32x32", "0.4")
    frame = 32 * 32 * 3 * (3 + 2 / 4)  # the frames, their LR, decoded and upscaled copies
    monkeypatch.setattr(memory, "free_memory", lambda device: int(4.5 * frame))
    no_models(monkeypatch)
    refused(capsys, ["codec-study", str(clip), "--codecs", "x264", "-o", str(tmp_path / "o")],
            "pass --max-frames 4")
    monkeypatch.undo()
    monkeypatch.setattr(memory, "free_memory", lambda device: int(4.5 * frame))
    assert cli.main(["codec-study", str(clip), "--codecs", "x264", "--ladder", "x264=30",
                     "--max-frames", "4", "-o", str(tmp_path / "o")]) == 0


def test_small_option_and_input_mistakes_are_one_line(tmp_path, capsys, monkeypatch):
    picture(tmp_path / "imgs" / "a.png")
    base = ["codec-study", str(tmp_path / "imgs"), "-o", str(tmp_path / "o"), "--codecs", "jpeg"]
    refused(capsys, base + ["--ladder", "jpeg="], "an empty ladder")
    with pytest.raises(SystemExit) as stop:  # argparse: one line, exit 2
        cli.main(base + ["--backend", "foo"])
    assert stop.value.code == 2 and "invalid choice: 'foo'" in capsys.readouterr().err
    refused(capsys, ["make-clip", str(tmp_path / "imgs"), "-o", str(tmp_path / "c.mkv")],
            "is a folder: give one large image file")
    clip = tmp_path / "unread.mkv"
    clip.write_bytes(b"\0" * 64)

    def denied(path, *a, **k):
        raise av.error.PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(av, "open", denied)  # root reads every file
    refused(capsys, ["codec-study", str(clip), "--codecs", "x264", "-o", str(tmp_path / "o")],
            "cannot read " + str(clip) + ": permission denied")

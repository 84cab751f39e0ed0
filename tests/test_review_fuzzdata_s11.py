"""Training inputs as other tools leave them: video frames decoded as `upsample video` decodes
them, cut-short videos, `data prepare` that made nothing, images too small for the patch, names a
file list cannot hold, transparent training images."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from upsample.data import pairs, prepare, sources
from upsample.errors import UserError


def _video(path: Path, frames: int = 10, w: int = 64, h: int = 48, noise: int = 0) -> Path:
    """Colour bars with sharp colour edges (where chroma upsampling shows), yuv420p; `noise`
    levels of noise make every frame take its share of the file."""
    bars = np.array([(10, 250, 128), (200, 30, 90), (30, 60, 230), (250, 250, 20)], np.uint8)
    img = np.ascontiguousarray(np.repeat(bars, w // 4, axis=0)[None].repeat(h, axis=0))
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            frame = np.roll(img, 3 * i, axis=1) + np.random.default_rng(i).integers(0, noise + 1, img.shape, np.uint8)
            for packet in v.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(packet)
        for packet in v.encode():
            c.mux(packet)
    return path


def test_training_frames_are_decoded_as_upsample_video_decodes_them(tmp_path):
    from upsample.media.video import EXACT_SWS
    video = _video(tmp_path / "bars.mp4", frames=2)
    trained = next(prepare.video_frames(video, 1))[1]
    with av.open(str(video)) as c:
        f = next(c.decode(video=0))
        fed = f.reformat(format="rgb24", src_color_range=f.color_range or None, interpolation=EXACT_SWS).to_ndarray()
    # to_ndarray's bilinear chroma was up to 134 levels off at the bars' edges
    np.testing.assert_array_equal(trained, fed)


def test_a_video_cut_short_is_noted(tmp_path, capsys):
    whole = _video(tmp_path / "whole.mkv", frames=25, noise=40)
    cut = tmp_path / "cut.mkv"
    data = whole.read_bytes()
    cut.write_bytes(data[:len(data) // 2])  # an interrupted copy: FFmpeg decodes up to the cut
    sources.video_frame_files(whole, 1, tmp_path / "frames", progress=True)
    assert "cut short" not in capsys.readouterr().err
    files = sources.video_frame_files(cut, 1, tmp_path / "frames", progress=True)
    err = capsys.readouterr().err
    assert 0 < len(files) < 23 and f"{cut} decoded to {len(files)} frames of the 25" in err and "cut short" in err


def test_prepare_that_makes_no_crop_fails_and_says_what_to_do(tmp_path):
    src = tmp_path / "small"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 24 + i, 3), 40 * i, np.uint8)).save(src / f"s{i}.png")
    with pytest.raises(UserError, match=r"3 pictures are smaller than --size 32; lower --size to at most 20"):
        prepare.prepare([str(src)], str(tmp_path / "crops"), size=32, progress=False)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(src / "big.png")  # one crop: a result
    assert prepare.prepare([str(src)], str(tmp_path / "crops"), size=32, progress=False)["crops"] >= 1


def _spec(patch=32, scales=(2,), pre=False):
    return pairs.PairSpec(patch=patch, scales=list(scales), y_channel=True, pre_upsample=pre)


def test_no_image_fits_the_patch_names_the_largest_and_a_patch_that_fits(tmp_path):
    files = []
    for i, (w, h) in enumerate([(20, 30), (27, 25)]):
        files.append(tmp_path / f"i{i}.png")
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(files[-1])
    with pytest.raises(UserError, match=r"largest is 25 px on its shorter side: set data.patch_size = 24 or less"):
        pairs.PairDataset(files, _spec(), seed=0)
    assert "= 18 or less" in str(pairs.no_image_fits(_spec(scales=(2, 3)), [23, 20]))  # 6 | 18
    assert "= 24 or less" in str(pairs.no_image_fits(_spec(41, (2, 3, 4), pre=True), [26]))
    assert "add images of at least 32x32 px" in str(pairs.no_image_fits(_spec(), [1]))


def test_split_lists_hold_names_that_look_like_comments_or_spaces(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    names = ["#1.png", " lead.png", "ok.png", "tab\tin.png"]
    for i, n in enumerate(names):
        Image.fromarray(np.full((8, 8, 3), 30 * i, np.uint8)).save(root / n)
    prepare.split(str(root), 0.5, 0, str(root))
    listed = pairs.read_file_list(root / "train.txt") + pairs.read_file_list(root / "val.txt")
    assert sorted(p.name for p in listed) == sorted(names) and all(p.is_file() for p in listed)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "two\nlines.png")
    with pytest.raises(UserError, match=r"two\\nlines.png.* holds a line break; rename the file"):
        prepare.split(str(root), 0.5, 0, str(tmp_path / "lists"))


def test_transparent_training_images_are_found(tmp_path, capsys):
    opaque, clear, rgb = tmp_path / "opaque.png", tmp_path / "clear.png", tmp_path / "rgb.png"
    a = np.full((16, 16, 4), 255, np.uint8)
    Image.fromarray(a, "RGBA").save(opaque)  # an alpha channel, every pixel opaque: no note
    a[:, :8] = 0
    Image.fromarray(a, "RGBA").save(clear)
    Image.fromarray(a[..., :3]).save(rgb)
    assert prepare.transparent_images([rgb, opaque]) == (1, None)
    assert prepare.transparent_images([rgb, opaque, clear]) == (2, clear)
    prepare.prepare([str(tmp_path)], str(tmp_path / "crops"), size=8, progress=True)  # crops lose the alpha
    assert f"data prepare: 2 images have an alpha channel, e.g. {clear}" in capsys.readouterr().err


def test_training_notes_transparent_images(tmp_path, monkeypatch, capsys):
    import json

    from upsample import cli
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "sprites"
    folder.mkdir()
    for i in range(3):
        a = np.dstack([np.random.default_rng(i).integers(0, 255, (48, 48, 3), np.uint8), np.full((48, 48), 255, np.uint8)])
        a[:, :20] = 0  # transparent black, as sprite sheets store it
        Image.fromarray(a, "RGBA").save(folder / f"s{i}.png")
    sets = [f"data.train=[{json.dumps(str(folder))}]", "data.val_fraction=0", "data.max_images=0",
            "data.batch_size=2", "train.steps=1", "val.every=0"]
    tiny = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.toml")
    args = ["train", tiny, "--run-dir", str(tmp_path / "run"), "--device", "cpu"]
    assert cli.main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    assert "data.train: 3 images have an alpha channel, e.g. " in capsys.readouterr().err


def test_a_folder_of_hidden_files_only_says_they_were_left_out(tmp_path):
    folder = tmp_path / "copied"
    folder.mkdir()
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "._a.png").write_bytes(b"\0\5\x16\7")  # a macOS copy's shadow of a.png
    with pytest.raises(UserError, match=r"no images or videos in .*copied \(2 hidden files, .* e.g. ._a.png"):
        sources.collect_sources([str(folder)])
    with pytest.raises(UserError, match=r"no images in .*copied \(2 hidden files"):
        prepare.split(str(folder), 0.5, 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no images or videos in \S*empty$"):
        sources.collect_sources([str(tmp_path / "empty")])


def test_a_colour_key_counts_as_alpha_as_upsample_image_reads_it(tmp_path):
    """PNG tRNS on RGB, gray and 16-bit gray: `upsample image` reads an alpha from each
    (imageio.planes_from_pil), so `data check` and the training note see it too."""
    rgb, gray, deep, keyless = (tmp_path / f"{n}.png" for n in ("rgb", "gray", "deep", "keyless"))
    a = np.zeros((8, 8, 3), np.uint8)
    a[0, 0] = (10, 20, 30)
    Image.fromarray(a).save(rgb, transparency=(10, 20, 30))
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(gray, transparency=7)
    Image.fromarray(np.full((8, 8), 700, np.uint16)).save(deep, transparency=700)
    Image.fromarray(a).save(keyless)
    for path in (rgb, gray, deep):
        with Image.open(path) as img:
            assert prepare.has_transparent_pixel(img), path
        problems, _, _ = prepare.inspect_image(path, min_size=1)
        assert [p.kind for p in problems if p.kind == "alpha"] == ["alpha"], path
    with Image.open(keyless) as img:
        assert not prepare.has_alpha_channel(img)
    assert prepare.transparent_images([keyless, rgb, deep]) == (2, rgb)

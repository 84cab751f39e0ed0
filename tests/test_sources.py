"""data.train with video files (frames decoded once into a cache) and the seeded data.max_images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from upsample import cli
from upsample.data import prepare, sources
from upsample.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.toml")


def _video(path: Path, frames: int = 12, side: int = 64) -> Path:
    """A short clip whose frames differ (a moving ramp), made with PyAV."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=24)
        v.width = v.height = side
        v.pix_fmt = "yuv420p"
        ramp = np.linspace(0, 255, side)[None, :, None] * np.array([1.0, 0.5, 0.2])
        for i in range(frames):
            img = np.roll(np.broadcast_to(ramp, (side, side, 3)), 5 * i, axis=1).astype(np.uint8)
            for packet in v.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                c.mux(packet)
        for packet in v.encode():
            c.mux(packet)
    return path


def test_video_frames_are_decoded_once_into_the_cache(tmp_path, monkeypatch):
    video = _video(tmp_path / "clip.mp4")
    cache = tmp_path / "cache"
    items = sources.collect_sources([str(video)], video_every=3, frames=cache)
    files = [f for f, _ in items]
    assert len(files) == 4 and all(f.parent.parent == cache for f in files)
    assert [k for _, k in items] == [f"clip.mp4/f{n:06d}.png" for n in (0, 3, 6, 9)]
    decoded = [arr for _, arr in prepare.video_frames(video, 3)]  # the PNGs hold exactly these
    for f, arr in zip(files, decoded):
        np.testing.assert_array_equal(np.asarray(Image.open(f)), arr)

    def no_decoding(*args):
        raise AssertionError("decoded again")
    with monkeypatch.context() as m:  # a second listing reads the cache
        m.setattr(sources, "video_frames", no_decoding)
        assert [f for f, _ in sources.collect_sources([str(video)], video_every=3, frames=cache)] == files
    # another K, or a changed video, is another cache folder; an unfinished one is redone
    assert len(sources.collect_sources([str(video)], video_every=5, frames=cache)) == 3
    (files[0].parent / sources.FRAME_LIST).unlink()
    assert [f for f, _ in sources.collect_sources([str(video)], video_every=3, frames=cache)] == files
    os.utime(video, ns=(1, 1))
    again = sources.collect_sources([str(video)], video_every=3, frames=cache)
    assert again[0][0].parent != files[0].parent and len(again) == 4


def test_a_folder_gives_its_images_and_its_videos_frames(tmp_path):
    """As `data prepare` takes it: a folder of videos (and images) in data.train ("no images in"
    a folder of videos before)."""
    clips = tmp_path / "clips"
    (clips / "more").mkdir(parents=True)
    _video(clips / "a.mp4", frames=4)
    _video(clips / "more" / "b.mkv", frames=4)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(clips / "still.png")
    items = sources.collect_sources([str(clips)], video_every=2, frames=tmp_path / "cache")
    assert [k for _, k in items] == ["clips/still.png", "clips/a.mp4/f000000.png", "clips/a.mp4/f000002.png",
                                     "clips/more/b.mkv/f000000.png", "clips/more/b.mkv/f000002.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images or videos in"):
        sources.collect_sources([str(tmp_path / "empty")], frames=tmp_path / "cache")


def test_bad_video_sources_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="video not found"):
        sources.collect_sources([str(tmp_path / "missing.mp4")], frames=tmp_path)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(2000))
    # random bytes: FFmpeg mostly finds no format, now and then one without a video stream
    with pytest.raises(UserError, match="cannot decode video|no video stream"):
        sources.collect_sources([str(bad)], frames=tmp_path / "cache")
    with pytest.raises(UserError, match="data.video_every must be >= 1"):
        sources.collect_sources([str(bad)], video_every=0, frames=tmp_path)


def test_training_on_a_video_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))
    video = _video(tmp_path / "clip.mp4")
    run = tmp_path / "run"
    sets = [f"data.train=[{json.dumps(str(video))}]", "data.video_every=2", "data.max_images=0",
            "data.batch_size=4", "train.steps=3", "val.every=0", "val.crop=0"]
    args = ["train", TINY, "--run-dir", str(run), "--device", "cpu"]
    assert cli.main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    err = capsys.readouterr().err
    assert "on 5 images (1 for validation)" in err  # 6 frames: one held out by the hash split
    assert (run / "last.safetensors").is_file()
    assert len(list((tmp_path / "cache" / "video-frames").glob("clip-*/f*.png"))) == 6


def _folder(path: Path, n: int) -> Path:
    path.mkdir()
    for i in range(n):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(path / f"{i:02d}.png")
    return path


def test_max_images_is_a_seeded_sample_not_the_first_n(tmp_path):
    folder = str(_folder(tmp_path / "imgs", 30))

    def pick(seed, n=6, **kw):
        return sources.training_images([folder], val_fraction=0.1, seed=seed, max_images=n, **kw)
    everything, val = pick(0, n=0)
    assert len(everything) == 27 and len(val) == 3
    first = pick(0)[0]
    assert len(first) == 6 and set(first) <= set(everything)
    assert first != everything[:6]
    assert first == sorted(first)          # kept in listing order
    assert pick(0)[0] == first             # the same seed, the same sample
    assert pick(1)[0] != first             # another seed, another sample
    assert pick(0)[1] == val               # validation is not sampled
    assert pick(0, n=100)[0] == everything
    # the split follows train.seed unless data.split_seed fixes it (a seed sweep's one validation set)
    assert pick(1, n=0)[1] != val and pick(1, n=0, split_seed=0)[1] == val
    from upsample.training import config
    cfg = config.load_config(TINY, [f"data.split_seed={7}"])
    assert config.split_seed(cfg) == 7 and config.split_seed(config.load_config(TINY)) == 0


def test_recipe_slips_a_basicsr_user_makes(tmp_path):
    """A folder named twice counts its images once; a folder for data.val_list says what a list
    is; a cosine's eta_min above the lr is refused (the lr climbed); hidden files are not cut."""
    from upsample.data.pairs import read_file_list
    from upsample.training import config as config_mod
    d = tmp_path / "d"
    d.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), i, np.uint8)).save(d / f"{i}.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(d / "._0.png")  # a macOS resource fork's name
    assert len(sources.collect_sources([str(d), str(d) + "/"])) == 3
    with pytest.raises(UserError, match="is a folder: a file list is a .txt"):
        read_file_list(d)
    with pytest.raises(UserError, match="sched.eta_min"):
        config_mod.load_config(Path(__file__).parents[1] / "configs" / "tiny.toml",
                               ["sched.name=cosine", "optim.lr=1e-3", "sched.eta_min=1"])
    assert [p.name for p in prepare.source_files(d)] == ["0.png", "1.png", "2.png"]

"""Runs sharing one cache folder, and runs killed or interrupted: the training store
(`data/store.py`) and the video-frame cache (`data/sources.py`)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from upsample.data import sources, store
from upsample.errors import UserError
from upsample.media import cache as media_cache


def _images(folder: Path, n: int = 3, ext: str = "ppm") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(folder / f"{i}.{ext}")
    return sorted(folder.glob(f"*.{ext}"))


def _video(path: Path, frames: int = 6, side: int = 32) -> Path:
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=24)
        v.width = v.height = side
        v.pix_fmt = "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(frames):
            img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            for packet in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in v.encode():
            c.mux(packet)
    return path


def test_an_image_replaced_keeping_size_and_mtime_rebuilds_the_store(tmp_path):
    """`cp -p` / `rsync -a` of another image of the same size (any uncompressed format): the size
    and mtime match the index, the pixels do not."""
    files = _images(tmp_path / "d")
    first, _ = store.open_store(files, tmp_path / "s")
    st = files[0].stat()
    shutil.copyfile(files[1], tmp_path / "new")
    os.replace(tmp_path / "new", files[0])
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert files[0].stat().st_size == st.st_size
    again, built = store.open_store(files, tmp_path / "s")
    assert built
    np.testing.assert_array_equal(again.image(0), np.asarray(Image.open(files[1])))


def _damage_index(index: dict, how: str):
    if how == "no files":
        return {k: v for k, v in index.items() if k != "files"}
    if how == "one offset":
        return {**index, "offsets": index["offsets"][:1], "shapes": index["shapes"][:1]}
    if how == "huge shape":
        return {**index, "shapes": [[9999, 9999]] * len(index["shapes"])}
    if how == "offsets shifted":
        return {**index, "offsets": [o + 3 for o in index["offsets"]]}
    return [1, 2, 3]


@pytest.mark.parametrize("how", ["no files", "one offset", "huge shape", "offsets shifted", "a list"])
def test_an_index_that_does_not_describe_its_pixels_is_rebuilt(tmp_path, how):
    files = _images(tmp_path / "d")
    good, _ = store.open_store(files, tmp_path / "s")
    want = [good.image(i).copy() for i in range(len(good))]
    index_path = tmp_path / "s" / f"{store.store_name(files)}.json"
    index_path.write_text(json.dumps(_damage_index(json.loads(index_path.read_text()), how)))
    again, built = store.open_store(files, tmp_path / "s")
    assert built and len(again) == len(files)
    for i, arr in enumerate(want):
        np.testing.assert_array_equal(again.image(i), arr)


def test_a_killed_builds_pixels_are_removed_and_a_live_ones_kept(tmp_path):
    """SIGKILL or the OOM killer during a build leaves its temporary pixels (a store's size)."""
    files = _images(tmp_path / "d")
    folder = tmp_path / "s"
    folder.mkdir()
    name = store.store_name(files)
    dead = folder / f".{name}.u8.dead1234.part"
    dead.write_bytes(b"\0" * 1000)
    old = time.time() - store.DEAD_AFTER_S - 60
    os.utime(dead, (old, old))
    live = folder / f".{name}.u8.live5678.part"
    live.write_bytes(b"\0" * 1000)
    quiet = folder / f".{name}.u8.other-host.part"  # unlocked (a lock another machine holds) but written to now
    quiet.write_bytes(b"\0" * 1000)
    os.utime(live, (old, old))
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        store.open_store(files, folder)
        assert not dead.exists() and live.exists() and quiet.exists()


def test_a_run_waits_for_another_building_the_same_store(tmp_path):
    """A sweep of runs on one data set decodes it once: the others wait for the store."""
    files = _images(tmp_path / "d")
    folder = tmp_path / "s"
    folder.mkdir()
    name = store.store_name(files)
    result = {}
    lock = os.open(folder / f".{name}.lock", os.O_RDWR | os.O_CREAT)  # another run is building
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        thread = threading.Thread(target=lambda: result.update(zip(("store", "built"),
                                                                   store.open_store(files, folder))))
        thread.start()
        store.build_store(files, store.file_stamps(files), folder / f"{name}.json", folder / f"{name}.u8",
                          progress=False)[1].close()
    finally:
        os.close(lock)
    thread.join(60)
    assert result["built"] is False and len(result["store"]) == len(files)


def test_the_store_is_read_from_the_file_found_whole(tmp_path, monkeypatch):
    """`upsample cache clear all` right after the store was found whole: the run maps the file it
    checked, not whatever the name holds (or does not) a moment later."""
    files = _images(tmp_path / "d")
    store.open_store(files, tmp_path / "s")
    current = store._current

    def then_cleared(*args):
        found = current(*args)
        shutil.rmtree(tmp_path / "s")
        return found
    monkeypatch.setattr(store, "_current", then_cleared)
    again, built = store.open_store(files, tmp_path / "s")
    assert not built
    np.testing.assert_array_equal(again.image(2), np.asarray(Image.open(files[2])))


def test_an_unwritable_cache_builds_the_store_in_a_temporary_folder(tmp_path, monkeypatch):
    files = _images(tmp_path / "d")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("UPSAMPLE_CACHE", str(blocked))
    monkeypatch.setattr(media_cache, "_OWN_DIRS", {})
    s, built = store.open_store(files)
    assert built and blocked not in s.path.parents and s.path.is_file()
    np.testing.assert_array_equal(s.image(1), np.asarray(Image.open(files[1])))
    with pytest.raises(UserError, match="data.store_dir"):  # named by the recipe: the user's to fix
        store.open_store(files, blocked / "store")


def test_frames_removed_while_decoded_are_decoded_again(tmp_path, monkeypatch):
    """`upsample cache clear all` during a decode: the frames written before it are gone; the
    list must not name them."""
    video = _video(tmp_path / "clip.mp4")
    cache = tmp_path / "frames"
    save, calls = sources.atomic_save, []

    def clear_once(img, path, **kw):
        save(img, path, **kw)
        calls.append(path)
        if len(calls) == 3:
            shutil.rmtree(cache)
    monkeypatch.setattr(sources, "atomic_save", clear_once)
    files = sources.video_frame_files(video, 1, cache)
    assert len(files) == 6 and all(f.is_file() for f in files)


def test_an_unwritable_cache_decodes_video_frames_in_a_temporary_folder(tmp_path, monkeypatch):
    video = _video(tmp_path / "clip.mp4")
    blocked = tmp_path / "blocked"
    blocked.write_text("junk")
    monkeypatch.setattr(media_cache, "_OWN_DIRS", {})
    files = sources.video_frame_files(video, 2, blocked / "video-frames")
    assert len(files) == 3 and all(f.is_file() and blocked not in f.parents for f in files)


def test_a_run_waits_for_another_decoding_the_same_video(tmp_path, monkeypatch):
    """Two runs decoding one video at once replaced each other's frames (new inodes), so each
    run's store saw other files than the last one written: the store was decoded again."""
    video = _video(tmp_path / "clip.mp4")
    cache = tmp_path / "frames"
    folder = sources.frame_folder(video, 1, cache)
    folder.mkdir(parents=True)
    decodes = []
    frames = sources.video_frames
    monkeypatch.setattr(sources, "video_frames", lambda *a: decodes.append(1) or frames(*a))
    result = []
    lock = os.open(folder.parent / f".{folder.name}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        thread = threading.Thread(target=lambda: result.append(sources.video_frame_files(video, 1, cache)))
        thread.start()
        mine = sources._decode_frames(video, 1, folder, False)
    finally:
        os.close(lock)
    thread.join(60)
    assert result == [mine] and len(decodes) == 1


def test_a_video_replaced_keeping_size_and_mtime_is_decoded_again(tmp_path):
    """`cp -p` of another clip of the same size over a training video: the frame cache was keyed
    by path, size and mtime only, so the old clip's frames were trained on."""
    video, other = _video(tmp_path / "clip.mp4"), _video(tmp_path / "other.mp4", frames=7)
    with open(other, "r+b") as f:  # same size: x264's output size depends on the content
        f.truncate(video.stat().st_size)
    st = video.stat()
    first = sources.video_frame_files(video, 1, tmp_path / "frames")
    os.replace(other, video)
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert video.stat().st_size == st.st_size
    assert sources.frame_folder(video, 1, tmp_path / "frames") != first[0].parent

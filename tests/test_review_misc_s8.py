"""Session-8 fixes outside the reviewers' files: the frame cache of a training video is sized
before it is decoded."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest

from upsample.data import sources
from upsample.errors import UserError

av = pytest.importorskip("av")


def _clip(path, frames=12, w=48, h=32):
    with av.open(str(path), "w") as c:
        st = c.add_stream("mpeg4", rate=10)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(frames):
            arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            for pkt in st.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    return path


def test_frames_bytes_estimates_from_the_header(tmp_path):
    count, size = sources.frames_bytes(_clip(tmp_path / "c.mp4"), 3)
    assert count == 4 and size == int(4 * 48 * 32 * 3 * sources.PNG_SHARE)
    assert sources.frames_bytes(tmp_path / "c.mp4", 1)[0] == 12


def test_frames_that_would_not_fit_the_cache_are_refused_before_decoding(tmp_path, monkeypatch):
    video = _clip(tmp_path / "long.mp4")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(sources.shutil, "disk_usage", lambda _: usage(10_000, 9_000, 1_000))
    with pytest.raises(UserError, match=r"data.video_every = \d+ .* or UPSAMPLE_CACHE to a larger disk"):
        sources.video_frame_files(video, 1, tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.png"))  # nothing decoded
    monkeypatch.setattr(sources.shutil, "disk_usage", lambda _: usage(10**12, 0, 10**12))
    assert len(sources.video_frame_files(video, 1, tmp_path / "cache")) == 12


@pytest.mark.parametrize("words", [["data.batch_size", "=", "4"], ["data.batch_size=", "4"],
                                   ["data.batch_size", "=4"]])
def test_a_set_split_by_spaces_says_how_to_write_it(words, capsys):
    from upsample import cli
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "configs/tiny.toml", "--set", *words])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "without spaces: --set data.batch_size=4" in err[0], err
    assert err[0].startswith("upsample train: error:") and "`upsample train --help`" in err[0]


@pytest.mark.parametrize("argv", [["--local_rank=1", "train"], ["--local_rank", "1", "train"],
                                  ["--local-rank=1", "train"], ["--local-rank", "1", "train"], ["train"]])
def test_the_launchers_local_rank_is_taken_off(argv):
    """deepspeed puts --local_rank=N first, `python -m torch.distributed.launch` --local-rank=N."""
    from upsample.cli import without_launcher_rank
    assert without_launcher_rank(argv) == ["train"]


def test_a_name_over_255_bytes_is_written_where_the_file_system_takes_it(tmp_path, monkeypatch, capsys):
    """NTFS/exFAT take 255 UTF-16 units (100 Japanese characters: 300 bytes): the name is tried,
    not refused by its byte count. Simulated: this disk takes 255 bytes, so the probe is faked."""
    from upsample.inference import batch
    from PIL import Image
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    long_dst = tmp_path / ("写" * 100 + ".png")
    assert batch._name_too_long(src, long_dst)  # here: ext4 refuses it
    assert "over the 255" in capsys.readouterr().err
    monkeypatch.setattr(batch, "_name_fits", lambda dst: True)
    assert not batch._name_too_long(src, long_dst)
    assert not batch._name_too_long(src, tmp_path / "short.png")


class _Procs:
    """Two ranks' view of `from_master`: rank 0's values reach both (as broadcast does)."""

    def __init__(self, master, box):
        self.master, self.box = master, box

    def from_master(self, *values):
        if self.master:
            self.box[:] = values
        return list(self.box)


def test_a_rank_zero_error_stops_the_other_ranks_with_it_said_once(capsys):
    """Before: rank 0 alone refused (a validation image, the run dir's lock) and the other ranks
    died in the next collective with a gloo traceback."""
    from upsample.errors import RankZeroError
    from upsample.training.loop import on_master

    def refuse():
        raise UserError("validation image x is too small")
    box = []
    with pytest.raises(UserError) as first:
        on_master(_Procs(True, box), refuse)
    with pytest.raises(RankZeroError, match="too small"):
        on_master(_Procs(False, box), refuse)
    assert not isinstance(first.value, RankZeroError)
    assert on_master(_Procs(True, []), lambda: 5) == 5 and on_master(_Procs(False, [None, None]), lambda: 5) is None


def test_the_cli_leaves_a_rank_zero_error_to_rank_zero(monkeypatch, capsys):
    from upsample import cli
    from upsample.errors import RankZeroError
    import upsample.cli.models as models_cli

    def fail(args):
        raise RankZeroError("said by rank 0")
    monkeypatch.setattr(models_cli, "run", fail)
    parser_run = cli.main(["models"])
    assert parser_run == 2 and "said by rank 0" not in capsys.readouterr().err


def test_an_absolute_path_not_found_gets_no_relative_path_hint(tmp_path):
    from upsample.data.pairs import collect_images
    with pytest.raises(UserError) as exc:
        collect_images([str(tmp_path / "nonexist")], "data.train")
    assert "folder not found" in str(exc.value) and "relative to" not in str(exc.value)
    with pytest.raises(UserError, match="relative to"):
        collect_images(["nonexist-here"], "data.train")


def test_patience_without_validation_images_is_noted(tmp_path, capsys):
    from upsample import cli
    assert cli.main(["train", "configs/tiny.toml", "--run-dir", str(tmp_path / "r"), "--set", "val.patience=3",
                     "--set", "data.val_fraction=0", "--set", "train.steps=1", "--set", "train.threads=1"]) == 0
    assert "val.patience 3 does nothing without validation images" in capsys.readouterr().err


def test_progress_lines_in_a_log_are_not_forced_by_tqdms_monitor():
    """tqdm's monitor thread refreshes a bar 10 s (its maxinterval) after the last line once
    updates are slow: a training log got lines at 30, 50, 60 s for a 30 s interval."""
    import io
    from upsample.media import progress

    class Log(io.StringIO):
        def isatty(self):
            return False
    bar = progress.progress_bar(100, True, desc="train", unit="step", stream=Log(), interval=30)
    try:
        assert bar.mininterval == 30 and bar.maxinterval >= 30
    finally:
        bar.close()

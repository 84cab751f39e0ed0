"""`upsample cache info|clear [PART ...]`: every folder of the cache is reported and emptied,
the training store and the video frames as well as the runtimes' exports."""

from upsample import cli
from upsample.data.store import default_root
from upsample.data.sources import frames_root
from upsample.runtime.cache import cache_dir


def test_info_and_clear_cover_every_part(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))
    for folder, size in ((cache_dir() / "openvino", 10), (default_root(), 2000), (frames_root() / "clip", 30)):
        folder.mkdir(parents=True)
        (folder / "f").write_bytes(b"x" * size)
    assert cli.main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert "export: 1 files" in out and "train-store: 1 files" in out and "video-frames: 1 files" in out
    assert cli.main(["cache", "clear", "train-store"]) == 0
    assert not default_root().exists() and cache_dir().exists() and frames_root().exists()
    assert "1 files" in capsys.readouterr().out
    assert cli.main(["cache", "clear"]) == 0  # alone: the exports only (a run may read the rest)
    assert not cache_dir().exists() and frames_root().exists()
    assert cli.main(["cache", "clear", "all"]) == 0
    assert not frames_root().exists()
    assert cli.main(["cache", "clear", "exports"]) == 2
    assert "the parts are export, train-store, video-frames" in capsys.readouterr().err

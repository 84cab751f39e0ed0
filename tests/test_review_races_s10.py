"""Races and late signals (review s10): several `upsample image` runs writing one output at once
(the first one put in place is kept, the others skip it; a folder run skips an image whose output
appeared meanwhile), a Ctrl-C or SIGTERM that comes after the command finished, a forked helper
ended by SIGTERM, and Ctrl-C during `export`. Real signals go only to processes started here."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isolation import reaped, wait_for
from upsample import cli
from upsample.inference import batch
from upsample.media import imageio
from upsample.media.imageio import OutputTaken, atomic_output


def _png(path: Path, seed: int = 0, size=(12, 10)) -> Path:
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith("."))


# ----------------------------------------------------------------- the final placement

def test_an_output_written_meanwhile_is_kept_without_replace(tmp_path):
    out = tmp_path / "out.png"
    with pytest.raises(OutputTaken):
        with atomic_output(out, replace=False) as tmp:
            tmp.write_bytes(b"mine")
            out.write_bytes(b"theirs")  # another run put its file in place first
    assert out.read_bytes() == b"theirs"
    assert _temporaries(tmp_path) == []
    with atomic_output(out) as tmp:  # replace (--overwrite): as before, the new file replaces it
        tmp.write_bytes(b"mine")
    assert out.read_bytes() == b"mine" and _temporaries(tmp_path) == []


def test_a_free_name_is_claimed_whole_without_replace(tmp_path):
    out = tmp_path / "sub" / "out.png"
    with atomic_output(out, replace=False) as tmp:
        tmp.write_bytes(b"mine")
    assert out.read_bytes() == b"mine" and _temporaries(tmp_path) == []
    assert out.stat().st_nlink == 1  # the temporary name is gone, not left as a second link


@pytest.mark.parametrize("code", [errno.EPERM, errno.EXDEV, errno.EOPNOTSUPP], ids=["EPERM", "EXDEV", "EOPNOTSUPP"])
def test_without_hard_links_the_name_is_claimed_by_a_rename(tmp_path, monkeypatch, code):
    """FAT/exFAT cards and some network mounts make no hard links: checked, then renamed."""
    def no_links(src, dst):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(imageio.os, "link", no_links)
    out = tmp_path / "out.png"
    with atomic_output(out, replace=False) as tmp:
        tmp.write_bytes(b"mine")
    assert out.read_bytes() == b"mine"
    with pytest.raises(OutputTaken):
        with atomic_output(out, replace=False) as tmp:
            tmp.write_bytes(b"second")
    assert out.read_bytes() == b"mine" and _temporaries(tmp_path) == []


# ----------------------------------------------------------------- upsample image, in-process

def test_a_single_output_written_meanwhile_by_another_run_is_kept(tmp_path, monkeypatch, capsys):
    """`upsample image in.png -o out.png` run three times at once: each saw no out.png when it
    planned, each wrote, the last one won without a word."""
    src = _png(tmp_path / "in.png")
    out = tmp_path / "same" / "out.png"
    real_read = batch.read_planes

    def read_while_another_run_finishes(path):
        out.parent.mkdir(exist_ok=True)
        _png(out, seed=7, size=(24, 20))
        return real_read(path)
    monkeypatch.setattr(batch, "read_planes", read_while_another_run_finishes)
    assert cli.main(["image", str(src), "-o", str(out), "--model", "bicubic", "--scale", "2"]) == 0
    theirs = np.asarray(Image.open(out))
    assert np.array_equal(theirs, np.random.default_rng(7).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    cap = capsys.readouterr()
    assert "wrote" not in cap.out, cap.out
    assert f"{out} exists, skipped" in cap.err and "1 skipped" in cap.err and "Traceback" not in cap.err
    assert _temporaries(tmp_path) == []


def test_overwrite_still_replaces_an_output_written_meanwhile(tmp_path, monkeypatch, capsys):
    src = _png(tmp_path / "in.png")
    out = tmp_path / "out.png"
    real_read = batch.read_planes

    def read_while_another_run_finishes(path):
        _png(out, seed=7, size=(5, 5))
        return real_read(path)
    monkeypatch.setattr(batch, "read_planes", read_while_another_run_finishes)
    assert cli.main(["image", str(src), "-o", str(out), "--model", "bicubic", "--scale", "2",
                     "--overwrite"]) == 0
    assert Image.open(out).size == (24, 20)
    assert "wrote" in capsys.readouterr().out


def test_a_folder_run_skips_an_image_whose_output_appeared_meanwhile(tmp_path, monkeypatch, capsys):
    """`upsample image DIR -o OUT` twice at once: each did every image; an image whose output
    another run wrote since the plan is skipped before its work."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for i, name in enumerate(("a.png", "b.png", "c.png")):
        _png(folder / name, seed=i)
    real_read, read = batch.read_planes, []

    def read_and_let_the_other_run_write_b(path):
        read.append(Path(path).name)
        if len(read) == 1:
            out.mkdir(exist_ok=True)
            _png(out / "b_x2.png", seed=9, size=(24, 20))
        return real_read(path)
    monkeypatch.setattr(batch, "read_planes", read_and_let_the_other_run_write_b)
    assert cli.main(["image", str(folder), "-o", str(out), "--model", "bicubic", "--scale", "2"]) == 0
    assert read == ["a.png", "c.png"]  # b's work not done a second time
    assert np.array_equal(np.asarray(Image.open(out / "b_x2.png")),
                          np.random.default_rng(9).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    cap = capsys.readouterr()
    assert "2 written, 1 skipped, 0 failed" in cap.err, cap.err
    assert cap.out.count("wrote") == 2


def test_concurrent_runs_of_one_output_write_it_once(tmp_path):
    """Real processes, started together: one says it wrote, the others that it exists."""
    src = _png(tmp_path / "in.png", size=(40, 32))
    out = tmp_path / "same" / "out.png"
    env = dict(os.environ, UPSAMPLE_CACHE=str(tmp_path / "cache"))
    args = [sys.executable, "-m", "upsample", "image", str(src), "-o", str(out), "--model", "bicubic",
            "--scale", "2"]
    logs = [tmp_path / f"run{i}.txt" for i in range(3)]
    files = [open(log, "w") for log in logs]
    try:
        runs = [subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp_path) for f in files]
        codes = [r.wait(120) for r in runs]
    finally:
        for f in files:
            f.close()
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0, 0], texts
    assert sum(t.count("wrote") for t in texts) == 1, texts
    assert Image.open(out).size == (80, 64)
    assert _temporaries(tmp_path / "same") == []


# ----------------------------------------------------------------- signals (child processes only)

# `upsample ARGS` as the console command runs it; after main() returned, a slow shutdown (a
# library's exit handlers) that waits for a "go" file, while the test sends its signals.
AFTER_MAIN = textwrap.dedent("""
    import os, signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also where the parent ignores it
    marker, go = sys.argv[1:3]
    sys.argv = ["upsample"] + sys.argv[3:]
    from upsample.cli import main
    rc = main()
    open(marker, "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.02)
    sys.exit(rc)
""")


def test_a_signal_after_the_command_finished_does_not_fail_it(tmp_path):
    src = _png(tmp_path / "in.png")
    out, marker, go, log = tmp_path / "out.png", tmp_path / "done", tmp_path / "go", tmp_path / "log.txt"
    env = dict(os.environ, UPSAMPLE_CACHE=str(tmp_path / "cache"))
    with open(log, "w") as f:
        with reaped(subprocess.Popen([sys.executable, "-c", AFTER_MAIN, str(marker), str(go), "image", str(src),
                                      "-o", str(out), "--model", "bicubic", "--scale", "2"],
                                     stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                     start_new_session=True)) as child:
            wait_for(marker, child, log)
            child.send_signal(signal.SIGINT)
            child.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            go.touch()
            rc = child.wait(30)
    text = log.read_text()
    assert rc == 0, text
    assert "Traceback" not in text and "interrupted" not in text and "terminated" not in text, text
    assert Image.open(out).size == (24, 20)


# The console command whose work forks a helper (as OpenVINO's telemetry sender is), which the
# test ends with SIGTERM; the command says how the helper ended.
FORKS_HELPER = textwrap.dedent("""
    import multiprocessing, os, signal, sys, time
    import upsample.cli.models as models
    marker = sys.argv[1]
    def helper():
        with open(marker + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(marker + ".tmp", marker)
        time.sleep(30)
    def run(args):
        p = multiprocessing.get_context("fork").Process(target=helper)
        p.start()
        p.join(60)
        print("helper exit", p.exitcode, file=sys.stderr)
        return 0
    models.run = run
    sys.argv = ["upsample", "models"]
    from upsample.cli import main
    sys.exit(main())
""")


def test_a_forked_helper_ended_by_sigterm_exits_quietly(tmp_path):
    marker, log = tmp_path / "helper.pid", tmp_path / "log.txt"
    with open(log, "w") as f:
        child = subprocess.Popen([sys.executable, "-c", FORKS_HELPER, str(marker)], stdout=f,
                                 stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
        try:
            wait_for(marker, child, log)
            os.kill(int(marker.read_text()), signal.SIGTERM)  # the helper this test's child forked
            rc = child.wait(30)
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    text = log.read_text()
    assert rc == 0, text
    assert "helper exit 143" in text and "Traceback" not in text and "terminated" not in text, text


# `upsample ARGS` with runtime.export.export_model blocked where the export would run.
EXPORT_BLOCKED = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also where the parent ignores it
    from upsample.runtime import export
    marker = sys.argv[1]
    def blocking(*args, **kwargs):
        open(marker, "w").close()
        time.sleep(60)
    export.export_model = blocking
    sys.argv = ["upsample"] + sys.argv[2:]
    from upsample.cli import main
    sys.exit(main())
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_during_export_says_what_was_kept(tmp_path, sig):
    out, marker, log = tmp_path / "m.onnx", tmp_path / "blocked", tmp_path / "log.txt"
    out.write_bytes(b"an earlier export")
    env = dict(os.environ, UPSAMPLE_CACHE=str(tmp_path / "cache"), UPSAMPLE_ALLOW_UNTRAINED="1")
    with open(log, "w") as f:
        with reaped(subprocess.Popen([sys.executable, "-c", EXPORT_BLOCKED, str(marker), "export", "espcn-x3",
                                      "-o", str(out), "--overwrite"], stdout=f, stderr=subprocess.STDOUT,
                                     env=env, cwd=tmp_path, start_new_session=True)) as child:
            wait_for(marker, child, log)
            child.send_signal(sig)
            rc = child.wait(30)
    text = log.read_text()
    word = "interrupted" if sig == signal.SIGINT else "terminated"
    assert rc == (130 if sig == signal.SIGINT else 143), text
    last = text.strip().splitlines()[-1]
    assert last.startswith(f"upsample export: {word}, nothing written to {out}"), text
    assert "run the same command again" in last and "Traceback" not in text
    assert out.read_bytes() == b"an earlier export"

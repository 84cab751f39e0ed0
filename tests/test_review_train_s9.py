"""Review s9: training's interruption and resume as a user meets it (Ctrl-C while the step modes
are timed, a DDP rank that dies, errors said once under a launcher, a full disk at a checkpoint,
--max-minutes counted from the start of the process)."""

import errno
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image

from isolation import in_child_process
from upsample import cli
from upsample.errors import UserError
from upsample.training import loop, procs, speed

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"


@pytest.fixture
def default_sigint():
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@in_child_process
def test_a_ctrl_c_swallowed_during_the_step_timing_is_raised_again(default_sigint):
    # torch's compiler runs Python in weakref callbacks, where a KeyboardInterrupt is printed and
    # ignored: the Ctrl-C was lost and the run trained on; now it comes again until it ends the timing
    hook, swallowed = sys.unraisablehook, []
    with pytest.raises(KeyboardInterrupt):
        with speed.interrupt_promptly():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt:
                swallowed.append(True)  # as "Exception ignored in ..." does
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                time.sleep(0.01)
            pytest.fail("the interrupt was not raised again")
    assert swallowed
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert sys.unraisablehook is hook


def test_the_step_timing_without_a_signal_leaves_the_handlers_as_they_were(default_sigint):
    term = signal.getsignal(signal.SIGTERM)
    with speed.interrupt_promptly():
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is term


@pytest.fixture
def one_rank_group(tmp_path):
    """A process group of this process alone: what a survivor of a DDP run is in."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    term = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, term)
    if dist.is_initialized():  # the trainer tears it down, but not after a peer died
        dist.destroy_process_group()


def test_a_rank_whose_peer_died_ends_in_one_line_naming_resume(tmp_path, monkeypatch, capsys, one_rank_group):
    def peer_killed(*args, **kwargs):  # what gloo raises in the survivor of a kill -9
        raise RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
                           "[127.0.0.1]:27039: Connection reset by peer. This is typically caused by a "
                           "remote worker hanging or bugs in the application.")
    monkeypatch.setattr(loop, "train", peer_killed)
    run = tmp_path / "run"
    run.mkdir()
    (run / "last_state.pt").write_bytes(b"x")
    assert cli.main(["train", str(TINY), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "another process of this run ended" in err and "--resume" in err
    assert dist.is_initialized()  # not torn down: that would wait for the dead rank


def test_another_runtime_error_is_not_called_a_dead_rank(tmp_path, monkeypatch, one_rank_group):
    def bug(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    monkeypatch.setattr(loop, "train", bug)
    with pytest.raises(RuntimeError, match="shapes"):
        loop.train_from_args(config=str(TINY), overrides=[], run_dir=str(tmp_path / "r"), resume=False,
                             reset=False, device="cpu", init=None, max_minutes=None)


def _launched(monkeypatch, rank: str) -> None:
    """This process as torchrun starts rank `rank` of 2."""
    for name, value in (("RANK", rank), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", "29500")):
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_recipe_error_under_a_launcher_is_said_once_by_rank_zero(tmp_path, monkeypatch, capsys, rank):
    _launched(monkeypatch, rank)
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\ntrain = "/x"\n')
    assert cli.main(["train", str(bad), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert ("data.train" in err) == (rank == "0")


def test_a_rank_set_by_hand_is_not_silenced(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")  # no launcher: no rank 0 would say it
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\ntrain = "/x"\n')
    assert cli.main(["train", str(bad), "--run-dir", str(tmp_path / "run")]) == 2
    assert "data.train" in capsys.readouterr().err


@pytest.mark.parametrize("rank", ["0", "1"])
def test_ctrl_c_under_a_launcher_is_said_once_by_rank_zero(tmp_path, monkeypatch, capsys, rank):
    def interrupted(**kwargs):
        raise KeyboardInterrupt
    _launched(monkeypatch, rank)
    monkeypatch.setattr(loop, "train_from_args", interrupted)
    assert cli.main(["train", str(TINY), "--run-dir", str(tmp_path / "run")]) == 130
    assert ("interrupted" in capsys.readouterr().err) == (rank == "0")


def _photos(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_a_full_disk_at_a_checkpoint_keeps_the_one_before_whole(tmp_path, monkeypatch, capsys):
    photos = _photos(tmp_path / "photos")
    run = tmp_path / "run"
    args = ["train", str(TINY), "--run-dir", str(run), "--device", "cpu", "--set", f'data.train=["{photos}"]',
            "--set", "train.steps=6", "--set", "train.ckpt_every=2", "--set", "data.batch_size=2",
            "--set", "data.val_fraction=0"]
    real_save, calls = torch.save, []

    def disk_fills(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 1:
            return real_save(obj, f, *a, **k)
        f.write(b"half a state")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", disk_fills)
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "cannot save the checkpoint of step 4" in err and "No space left" in err and "--resume" in err
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(run / "last_state.pt", weights_only=False)["step"] == 2
    assert not [p.name for p in run.iterdir() if p.name.endswith(".part")]
    assert cli.main(args + ["--resume"]) == 0
    assert torch.load(run / "last_state.pt", weights_only=False)["step"] == 6


def test_max_minutes_counts_from_the_start_of_the_process():
    # importing torch and decoding the images are part of a job's time limit too
    started = procs.process_start_time()
    assert started < time.time() - 0.5  # this process imported torch before


@in_child_process
def test_a_signal_during_a_long_step_is_answered_at_once(monkeypatch, capfd):
    # the first step may compile for half a minute: a Ctrl-C then was a silent half minute
    monkeypatch.setattr(procs, "STILL_STEPPING_S", 0.05)
    stop = procs.Stop(deadline=float("inf"))
    stop.catch_signals(say=True)
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the step runs on
    finally:
        stop.restore_signals()
    assert stop.signum == signal.SIGINT
    assert "SIGINT: stopping once the step in progress" in capfd.readouterr().err


@in_child_process
def test_a_step_that_ends_soon_after_a_signal_adds_no_line(capfd):
    stop = procs.Stop(deadline=float("inf"))
    stop.catch_signals(say=True)
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
    finally:
        stop.restore_signals()  # the run stops and says so in its own last line
    time.sleep(procs.STILL_STEPPING_S + 0.2)
    assert "stopping once" not in capfd.readouterr().err


def test_a_run_whose_images_moved_says_where_to_point_it_and_then_resumes(tmp_path, capsys):
    # a run dir copied to another machine: its config.toml holds the paths of the first one
    photos = _photos(tmp_path / "old" / "photos")
    run = tmp_path / "run"
    args = ["train", str(TINY), "--run-dir", str(run), "--device", "cpu", "--set", f'data.train=["{photos}"]',
            "--set", "train.steps=2", "--set", "data.batch_size=2", "--set", "data.val_fraction=0"]
    assert cli.main(args) == 0
    moved = tmp_path / "new" / "photos"
    moved.parent.mkdir()
    photos.rename(moved)
    resume = ["train", str(TINY), "--run-dir", str(run), "--resume", "--set", "train.steps=4"]
    capsys.readouterr()
    assert cli.main(resume) == 2
    assert "edit them there" in capsys.readouterr().err
    config = run / "config.toml"
    config.write_text(config.read_text().replace(str(photos), str(moved)))
    assert cli.main(resume) == 0
    assert torch.load(run / "last_state.pt", weights_only=False)["step"] == 4


@in_child_process
def test_the_step_timing_under_a_handler_that_only_notes_the_signal_raises_nothing():
    # not raised again and again: Stop's handler would take the repeats for a second Ctrl-C
    seen = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with speed.interrupt_promptly():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(speed.REPEAT_INTERRUPT_S * 3)
    finally:
        signal.signal(signal.SIGINT, old)
    assert seen == [signal.SIGINT]

"""Several `upsample` processes sharing one cache (a job array, GNU parallel): a model is exported
and gated once while the others wait, a killed writer's temporary files are cleared, forked
helper processes end without tracebacks, and a live run dir is said to be in use first."""

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from upsample.errors import UserError
from upsample.models.registry import create_model
from upsample.runtime import export
from upsample.training.rundir import check_run_dir, hold_run_dir

FORK = multiprocessing.get_context("fork")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))


def _hold(key: str, log: str, seconds: float) -> None:
    """In a forked process: hold `export.building(key)` for `seconds`, logging when."""
    with export.building(key):
        start = time.monotonic()
        time.sleep(seconds)
        with open(log, "a") as f:
            f.write(f"{start} {time.monotonic()}\n")


def test_runs_started_together_build_one_entry_at_a_time(tmp_path):
    """Three processes wanting the same entry hold its lock one after another (each found it
    made by the first, instead of all exporting and gating it at once)."""
    log = tmp_path / "log"
    procs = [FORK.Process(target=_hold, args=("espcn-abc", str(log), 0.3)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    spans = sorted(tuple(map(float, line.split())) for line in log.read_text().splitlines())
    assert len(spans) == 3
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end  # no two held it at once


def test_building_is_reentrant_and_leaves_other_keys_free(tmp_path):
    with export.building("k1"):
        with export.building("k1"):  # cached_ir -> cached_onnx of the same key: no self-deadlock
            pass
        other = FORK.Process(target=_hold, args=("k2", str(tmp_path / "log"), 0.0))
        other.start()
        other.join(30)
        assert other.exitcode == 0  # another key is not held up


def test_a_killed_writers_temporaries_are_removed_and_the_entry_made(tmp_path):
    """kill -9 while an export was written leaves `.KEY.onnx.XXXX.part` and an IR's `.KEY.XXXX`
    folder: the next run that makes the entry removes them, and makes it whole."""
    torch.manual_seed(0)
    net = create_model("espcn-x2")
    key = export.model_key(net)
    folder = export.cache_dir()
    folder.mkdir(parents=True)
    dead_dir = folder / f".{key}.k9x2ab1c"
    dead_dir.mkdir()
    (dead_dir / "model.bin").write_bytes(b"\0" * 1000)
    dead_part = folder / f".{key}.onnx.q1w2e3r4.part"
    dead_part.write_bytes(b"half an onnx")
    other = folder / f".{key}-phases1.zz.part"  # another entry's: not this one's to remove
    other.write_bytes(b"x")
    xml = export.cached_ir(net)
    assert xml == folder / f"{key}.xml" and export.readable_ir(xml)
    assert not dead_dir.exists() and not dead_part.exists() and other.exists()
    assert (folder / f".{key}.lock").exists()  # the lock stays: removing it would split the next waiters


def _sleeps():
    time.sleep(30)


def _raise_terminated(signum, frame):  # as the CLI's SIGTERM handler
    raise KeyboardInterrupt


def test_a_forked_helper_ended_by_sigterm_prints_no_traceback(capfd):
    """OpenVINO's converter forks a telemetry sender and ends it with SIGTERM when the network is
    slow or absent; with the CLI's handler inherited the child printed a traceback per export."""
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        with export.forks_end_quietly():
            child = FORK.Process(target=_sleeps)
            child.start()
            time.sleep(0.5)
            child.terminate()
            child.join(10)
        assert signal.getsignal(signal.SIGTERM) is _raise_terminated  # the handler is back after
    finally:
        signal.signal(signal.SIGTERM, old)
    assert child.exitcode is not None and child.exitcode != 0
    assert "Traceback" not in capfd.readouterr().err


def test_a_run_dir_in_use_is_said_before_what_its_files_say(tmp_path):
    """A live run that has not checkpointed yet (config.toml, metrics.jsonl, no last_state.pt):
    a second `train` heard "stopped before its first checkpoint: --reset to start it over"."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("")
    (run / "metrics.jsonl").write_text("")
    held = hold_run_dir(run)  # as the live run holds it
    try:
        for resume, reset in [(False, False), (True, False), (False, True)]:
            with pytest.raises(UserError, match="in use by another `upsample train`"):
                check_run_dir(run, resume, reset)
    finally:
        held.release()
    with pytest.raises(UserError, match="stopped before its first checkpoint"):  # free: its files speak
        check_run_dir(run, False, False)
    assert check_run_dir(run, False, True) is False


def test_a_lock_is_free_when_released_though_a_forked_child_lives_on():
    """A child forked while the lock was held (OpenVINO's telemetry sender, stuck up to seconds in
    a DNS lookup) had a copy of it: the next run waited for the child, not for the export."""
    import fcntl
    with export.building("k"):
        child = FORK.Process(target=_sleeps)
        child.start()
        time.sleep(0.5)  # (the child closes its copy just after the fork)
    try:
        fd = os.open(export.cache_dir() / ".k.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raised BlockingIOError
        finally:
            os.close(fd)
    finally:
        child.terminate()
        child.join(10)


def test_a_holder_killed_mid_export_frees_the_lock(tmp_path):
    """kill -9 of the run making an entry: the system drops its lock, the waiting run goes on."""
    holder = FORK.Process(target=_hold, args=("k", str(tmp_path / "log"), 30))
    holder.start()
    time.sleep(1)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    with export.building("k"):  # blocked for 30 s, had the lock outlived its holder
        pass
    assert not (tmp_path / "log").exists()


def test_cache_clears_met_while_preparing_are_built_again_then_said(monkeypatch):
    """A run waiting on others' exports met two `upsample cache clear`s and ended in a traceback."""
    from upsample.runtime import auto
    calls = []

    def vanishing(model, **options):
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError('ir: Could not open the file: "x.xml"')
        return "runner"
    monkeypatch.setattr(auto, "_cpu_runner", vanishing)
    assert auto.cpu_runner(None, name="m", scale=2) == "runner" and len(calls) == 3
    monkeypatch.setattr(auto, "_cpu_runner", lambda model, **o: (_ for _ in ()).throw(FileNotFoundError("x")))
    with pytest.raises(UserError, match="removed 3 times while this run made them"):
        auto.cpu_runner(None, name="m", scale=2)
    monkeypatch.setattr(auto, "_cpu_runner", lambda model, **o: (_ for _ in ()).throw(RuntimeError("bad graph")))
    with pytest.raises(RuntimeError, match="bad graph"):  # a real error: at once
        auto.cpu_runner(None, name="m", scale=2)

"""Several processes as a user with a multi-GPU box starts them, tried here on the CPU (gloo):
the Ctrl-C a launcher forwards to processes that already got it, --max-minutes when the ranks
sync every log_every steps, ranks set by hand in the environment, a taken MASTER_PORT, a resume
on another number of processes, which rank decodes a new image store, and DeepSpeed JSON
settings the trainer does not run."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from upsample import cli
from upsample.data import pairs as data
from upsample.errors import UserError
from upsample.training import procs as procs_mod
from upsample.training.config import DeepSpeedConfig
from upsample.training.engines import read_deepspeed_json
from upsample.training.state import Sampling

ROOT = Path(__file__).resolve().parents[1]
T91 = ROOT.parent / "shared" / "datasets" / "train" / "T91"
TINY = str(ROOT / "configs" / "tiny.toml")
BASE = [f"data.train=[{json.dumps(str(T91))}]", "data.max_images=4", "data.batch_size=4",
        "val.max_images=1", "val.crop=48", "val.every=2", "train.ckpt_every=2"]
needs_t91 = pytest.mark.skipif(not T91.is_dir(), reason="needs ../shared/datasets/train/T91")


def test_the_signal_a_launcher_forwards_is_not_a_second_ctrl_c(monkeypatch):
    """A terminal's Ctrl-C reaches torchrun and its ranks; torchrun then sends SIGINT to the ranks
    again. That copy, milliseconds later, ended a rank at once without saving (a second signal
    ends the process); a signal a second or more later still does."""
    clock, kills = [100.0], []
    monkeypatch.setattr(procs_mod.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(procs_mod.os, "kill", lambda pid, sig: kills.append(sig))
    stop = procs_mod.Stop(deadline=math.inf)
    stop.catch_signals()
    try:
        handler = signal.getsignal(signal.SIGINT)
        stop._on_signal(signal.SIGINT, None)
        clock[0] += 0.05
        stop._on_signal(signal.SIGINT, None)   # torchrun's copy
        stop._on_signal(signal.SIGTERM, None)  # or its SIGTERM after a scheduler's
        assert stop.signum == signal.SIGINT and not kills
        assert signal.getsignal(signal.SIGINT) is handler  # still ours: the step is saved
        clock[0] += 2.0
        stop._on_signal(signal.SIGINT, None)   # the user presses Ctrl-C again: now
        assert kills == [signal.SIGINT] and signal.getsignal(signal.SIGINT) is signal.SIG_DFL
    finally:
        stop.restore_signals()


def test_real_signals_forwarded_twice_leave_the_process_running():
    script = (
        "import math, os, signal, time\n"
        "from upsample.training.procs import Stop\n"
        "stop = Stop(deadline=math.inf); stop.catch_signals()\n"
        "os.kill(os.getpid(), signal.SIGINT); time.sleep(0.05)\n"
        "os.kill(os.getpid(), signal.SIGINT); time.sleep(0.05)\n"
        "print('alive', stop.signum)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.split() == ["alive", str(int(signal.SIGINT))], proc.stderr


def test_max_minutes_under_ddp_counts_the_steps_a_flag_waits_for_the_next_sync(monkeypatch):
    """On a GPU the ranks share their stop flags every train.log_every steps: a rank whose
    deadline check fired just after a sync stopped up to log_every steps past the deadline
    (its margin is two steps, a validation and a save). The deadline the loop checks is now
    brought forward by the steps between two syncs; one process checks every step as before."""
    clock = [1000.0]
    monkeypatch.setattr(procs_mod.time, "time", lambda: clock[0])
    monkeypatch.setattr(procs_mod.dist, "all_reduce", lambda t, op=None: None)
    two = procs_mod.Procs(rank=0, world=2, dev=torch.device("cpu"))
    stop = procs_mod.Stop(deadline=2000.0)
    for step in range(1, 31):
        clock[0] += 0.5  # half a second a step
        assert not stop.requested(two, step, sync_every=10)
    assert stop.deadline == pytest.approx(2000.0 - 9 * 0.5)
    one, alone = procs_mod.Procs(rank=0, world=1, dev=torch.device("cpu")), procs_mod.Stop(deadline=2000.0)
    for step in range(1, 31):
        clock[0] += 0.5
        alone.requested(one, step, sync_every=1)
    assert alone.deadline == 2000.0
    cpu = procs_mod.Stop(deadline=2000.0)  # DDP on the CPU syncs every step: nothing to wait for
    for step in range(1, 31):
        clock[0] += 0.5
        cpu.requested(two, step, sync_every=1)
    assert cpu.deadline == 2000.0


@pytest.mark.parametrize("env, err", [
    ({"RANK": "0", "WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but MASTER_ADDR and MASTER_PORT are not"),
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}, "but MASTER_PORT is not"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a process count"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 with WORLD_SIZE=2"),
])
def test_ranks_set_by_hand_wrongly_are_one_line(tmp_path, monkeypatch, capsys, env, err):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["train", TINY, "--run-dir", str(tmp_path / "r"), "--device", "cpu"]) == 2
    out = capsys.readouterr().err
    assert err in out and "torchrun --nproc-per-node" in out and "Traceback" not in out
    assert not (tmp_path / "r").exists()


def test_a_master_port_in_use_is_one_line(tmp_path, monkeypatch, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for name, value in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                            "MASTER_PORT": str(port)}.items():
            monkeypatch.setenv(name, value)
        assert cli.main(["train", TINY, "--run-dir", str(tmp_path / "r"), "--device", "cpu"]) == 2
    out = capsys.readouterr().err
    assert f"127.0.0.1:{port} (address already in use)" in out and "pick a free port" in out
    assert not (tmp_path / "r").exists()


def _drawn(sampling, start, stop):
    """The sample indices `sampling` draws in steps start..stop-1."""
    return [k for _, batch in zip(range(start, stop), sampling.batch_sampler(start)) for k, _ in batch]


def test_a_resume_on_fewer_processes_draws_new_samples_and_says_so():
    """2 ranks drew samples 0..63 in steps 0-3; one process resumed at step 4 drew 32..63 again
    (its sample k of step s is s x 1 x 8 + k). It now goes on at 64, says so, and a later resume
    on the same world keeps that offset, so it stays exact."""
    two = [Sampling(steps=10, batch_size=8, scales=[2], seed=0, rank=r, world=2, n_images=8) for r in (0, 1)]
    before = {k for s in two for k in _drawn(s, 0, 4)}
    assert before == set(range(64))
    one = Sampling(steps=8, batch_size=8, scales=[2], seed=0, rank=0, world=1, n_images=8)
    saved = {"world": 2, "batch": 8}
    now, note = one.resumed(saved, 4)
    assert "trained on 2 processes with 1" in note and "8x1 patches (it was 8x2" in note
    after = _drawn(now, 4, 8)
    assert after == list(range(64, 96)) and now.epoch(4) == 8 and now.epoch(8) == 12
    again, note = one.resumed({"world": 1, "batch": 8, "shift": now.shift}, 6)  # same world: exact
    assert note is None and _drawn(again, 6, 8) == _drawn(now, 6, 8)
    same, note = two[1].resumed({"world": 2, "batch": 8}, 4)  # no change: the sampler of old
    assert note is None and same.shift == 0 and type(same.batch_sampler(4)) is data.StepBatchSampler
    grown = [s.resumed({"world": 1, "batch": 8, "shift": now.shift}, 8)[0] for s in two]
    assert sorted(k for s in grown for k in _drawn(s, 8, 10)) == list(range(96, 128))


@needs_t91
def test_torchrun_run_resumed_by_one_process_notes_the_world_change(tmp_path, capsys):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "upsample", "train", TINY, "--run-dir", str(run), "--device", "cpu"]
    for s in [*BASE, "train.steps=2"]:
        cmd += ["--set", s]
    env = {**os.environ, "UPSAMPLE_CACHE": str(tmp_path / "cache")}  # a new store: rank 0 decodes it
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "decoded 4 training images" in proc.stderr and "another run is decoding" not in proc.stderr
    args = ["train", TINY, "--run-dir", str(run), "--device", "cpu", "--resume", "--set", "train.steps=4"]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "resuming a run trained on 2 processes with 1" in err
    state = torch.load(run / "last_state.pt", weights_only=False)
    assert state["world"] == 1 and state["sampler"]["shift"] == 2 * 4 * 2 - 2 * 4
    assert state["epoch"] == (2 * 4 * 2 + 2 * 4) // 4


def test_the_other_ranks_leave_a_new_store_to_rank_0(tmp_path, monkeypatch):
    """Under torchrun the rank to arrive first decoded the training images, silently, and rank 0
    said "another run is decoding training images; waiting for it". Now a rank other than the
    machine's first waits until that one holds the store's lock."""
    from upsample.media.cache import entry_lock
    from upsample.data import store
    from upsample.training import batches
    files = sorted(T91.glob("*.png"))[:2] if T91.is_dir() else [tmp_path / "a.png"]
    name = store.store_name(files)
    monkeypatch.setattr(batches, "MASTER_HEAD_START_S", 60.0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    held, release = threading.Event(), threading.Event()

    def rank0():
        time.sleep(0.2)
        with entry_lock(tmp_path / f".{name}.lock"):
            held.set()
            release.wait(30)
    thread = threading.Thread(target=rank0)
    thread.start()
    try:
        batches.wait_for_master_to_build(files, str(tmp_path))
        assert held.is_set()  # it returned once rank 0 held the lock, not before
    finally:
        release.set()
        thread.join()
    monkeypatch.setenv("LOCAL_RANK", "0")  # the machine's first rank, or one process: no wait
    monkeypatch.setattr(batches, "MASTER_HEAD_START_S", 0.0)
    monkeypatch.setattr(batches.time, "sleep", lambda s: pytest.fail("waited"))
    batches.wait_for_master_to_build(files, str(tmp_path))
    monkeypatch.delenv("LOCAL_RANK")
    batches.wait_for_master_to_build(files, str(tmp_path))


def test_every_rank_refuses_a_batch_that_one_rank_has_no_memory_for(monkeypatch):
    """A GPU that another program fills: its rank alone refused the batch, and the other ranks
    waited for it in DDP's first broadcast, then ended in a gloo/NCCL traceback. The least free
    memory over the ranks decides now, on every rank."""
    from upsample.models import registry
    from upsample.training import fits
    net = registry.create_model("vdsr", num_layers=3)
    per_patch = fits.saved_bytes_per_patch(net, (1, 10, 10))
    monkeypatch.setattr(fits, "free_memory", lambda device: per_patch * 1000)  # plenty here
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(fits.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(fits.dist, "get_world_size", lambda: 2)

    def all_reduce(box, op):  # the other rank has room for 5 patches
        assert op == fits.dist.ReduceOp.MIN
        box.copy_(torch.minimum(box, torch.tensor([per_patch * 5])))
    monkeypatch.setattr(fits.dist, "all_reduce", all_reduce)
    fits.check_batch_fits([(net, (1, 10, 10))], 4, 1, torch.device("cpu"), half=False)
    with pytest.raises(UserError, match="data.batch_size = 8 keeps"):
        fits.check_batch_fits([(net, (1, 10, 10))], 8, 1, torch.device("cpu"), half=False)


@pytest.mark.parametrize("table, err", [
    ({"zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}}},
     "zero_optimization.offload_optimizer (ZeRO-Offload) is not supported"),
    ({"amp": {"enabled": True, "opt_level": "O1"}}, "'amp' is not supported"),
    ({"torch_autocast": {"enabled": True, "dtype": "bfloat16"}}, "the trainer's setting for it is train.amp"),
])
def test_deepspeed_json_settings_the_trainer_does_not_run_are_one_line(tmp_path, table, err):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(table))
    with pytest.raises(UserError, match="remove it"):
        try:
            read_deepspeed_json(DeepSpeedConfig(config=str(path)))
        except UserError as exc:
            assert err in str(exc)
            raise


@pytest.mark.parametrize("table", [
    {"zero_optimization": {"stage": 1, "offload_optimizer": {"device": "none"}}},
    {"torch_autocast": {"enabled": False}},
    {"zero_optimization": {"stage": 1}, "bf16": {"enabled": True}, "communication_data_type": "fp32"},
])
def test_deepspeed_json_settings_that_are_off_pass(tmp_path, table):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(table))
    assert read_deepspeed_json(DeepSpeedConfig(config=str(path))) == table

"""Launchers beside torchrun (training/engines.py): `accelerate launch` with 2 CPU processes trains
the tiny recipe in the same run dir layout, resumes, logs on rank 0 only, and matches torchrun's
DDP run step for step. Skipped where the optional `distributed` extra (accelerate) is absent."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from upsample import cli

ROOT = Path(__file__).resolve().parents[1]
T91 = ROOT.parent / "shared" / "datasets" / "train" / "T91"
TINY = str(ROOT / "configs" / "tiny.toml")
pytestmark = [pytest.mark.skipif(not T91.is_dir(), reason="needs ../shared/datasets/train/T91")]
SETS = [f"data.train=[{json.dumps(str(T91))}]", "data.max_images=4", "data.batch_size=4",
        "val.max_images=1", "val.crop=48", "val.every=2", "train.ckpt_every=2",
        "sched.name=step", "sched.step_size=3", "sched.gamma=0.5"]  # lr independent of train.steps
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _launch(launcher, run, *extra, steps):
    cmd = [*launcher, "-m", "upsample", "train", TINY, "--run-dir", str(run), "--device", "cpu", *extra]
    for s in [*SETS, f"train.steps={steps}"]:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_accelerate_two_cpu_processes_train_resume_and_match_torchrun(tmp_path):
    pytest.importorskip("accelerate", reason="the optional `distributed` extra is not installed")
    run = tmp_path / "acc"
    first = _launch(ACCELERATE, run, steps=4)
    assert first.stdout.count("steps: step 4/4") == 1  # one summary: only rank 0 prints/writes
    assert "4x2 patches" in first.stderr and first.stderr.count("validation baseline") == 1
    assert sorted(p.name for p in run.iterdir() if p.is_file()) == [  # .lock: the run dir's (rundir.py)
        ".lock", "best.safetensors", "config.toml", "last.safetensors", "last_state.pt", "metrics.jsonl"]
    state = torch.load(run / "last_state.pt", weights_only=False)
    assert state["world"] == 2 and len(state["rng"]) == 2 and state["step"] == 4
    second = _launch(ACCELERATE, run, "--resume", steps=6)
    assert "resuming at step 4" in second.stderr and second.stdout.count("steps: step 6/6") == 1

    ddp = tmp_path / "ddp"
    _launch(TORCHRUN, ddp, steps=6)  # the same run, uninterrupted, under torch's own DDP
    assert _losses(run) == _losses(ddp) and [s for s, _ in _losses(run)] == list(range(1, 7))
    a = torch.load(run / "last_state.pt", weights_only=False)["model"]
    b = torch.load(ddp / "last_state.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_accelerate_precision_flags_are_refused_in_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("accelerate", reason="the optional `distributed` extra is not installed")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    args = ["train", TINY, "--run-dir", str(tmp_path / "r"), "--device", "cpu"]
    assert cli.main(args) == 2
    assert "launch with --mixed_precision no" in capsys.readouterr().err
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")
    assert cli.main(args) == 2
    assert "train.compile" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()

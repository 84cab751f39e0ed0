"""DeepSpeed as a launcher (training/engines.py): `deepspeed --module upsample train` with 2 CPU
processes trains in the same run dir layout (plus its checkpoint under deepspeed/), logs on rank
0 only, resumes bit for bit, and its fp32 ZeRO-0 run follows torchrun's DDP; its settings and
the resumes it cannot do are one line each. Skipped where the optional `distributed` extra
(deepspeed) is absent. The first launch on a machine JIT-compiles DeepSpeed's shared-memory
collective op (about a minute on 2 cores; cached under ~/.cache/torch_extensions)."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
T91 = ROOT.parent / "shared" / "datasets" / "train" / "T91"
TINY = str(ROOT / "configs" / "tiny.toml")
pytestmark = [pytest.mark.skipif(not T91.is_dir(), reason="needs ../shared/datasets/train/T91"),
              pytest.mark.skipif(shutil.which("g++") is None, reason="DeepSpeed's CPU op needs g++")]
SETS = [f"data.train=[{json.dumps(str(T91))}]", "data.max_images=4", "data.batch_size=4",
        "val.max_images=1", "val.crop=48", "val.every=2", "train.ckpt_every=2",
        "sched.name=step", "sched.step_size=3", "sched.gamma=0.5"]  # lr independent of train.steps
BF16_ZERO1 = ["deepspeed.zero_stage=1", 'deepspeed.precision="bf16"', "train.ema=0.9"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "upsample"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _deepspeed(n: int, *, local_rank_arg: bool = False, port: int | None = None) -> list:
    """The deepspeed launcher; with `local_rank_arg` it passes `--local_rank=N` before the command."""
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(n),
            "--master_port", str(port or _free_port()), *["--no_local_rank"] * (not local_rank_arg),
            "--module", "upsample"]


def _train(launcher, run, *sets, steps, ok=True):
    cmd = [*launcher, "train", TINY, "--run-dir", str(run), "--device", "cpu"]
    for s in [*SETS, *sets, f"train.steps={steps}"]:
        cmd += ["--set", s]
    if (run / "last_state.pt").exists():
        cmd.append("--resume")
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert (proc.returncode == 0) == ok, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _weights(run):
    return torch.load(run / "last_state.pt", weights_only=False)


@pytest.fixture(autouse=True)
def _needs_deepspeed():
    pytest.importorskip("deepspeed", reason="the optional `distributed` extra is not installed")


def test_zero1_bf16_two_cpu_processes_train_resume_exactly(tmp_path):
    run, whole, port = tmp_path / "chunks", tmp_path / "whole", _free_port()
    first = _train(_deepspeed(2, port=port), run, *BF16_ZERO1, steps=4)
    # DeepSpeed's CPU all-reduce buffers (67 MB of RAM each) are not left in /dev/shm
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))
    assert "deepspeed ZeRO-1 bf16" in first.stderr and "4x2 patches" in first.stderr
    assert first.stdout.count("steps: step 4/4") == 1 and first.stderr.count("validation baseline") == 1
    second = _train(_deepspeed(2), run, *BF16_ZERO1, steps=6)
    assert "resuming at step 4" in second.stderr and second.stdout.count("steps: step 6/6") == 1
    _train(_deepspeed(2), whole, *BF16_ZERO1, steps=6)

    state = _weights(run)
    assert state["deepspeed"] == {"tag": "step6", "zero_stage": 1, "precision": "bf16", "world": 2}
    assert state["optimizer"] is None and state["world"] == 2 and len(state["rng"]) == 2
    shards = sorted(p.name for p in (run / "deepspeed" / "step6").iterdir())
    assert [p.name for p in (run / "deepspeed").glob("step*")] == ["step6"]  # older tags dropped
    assert sum("optim_states" in name for name in shards) == 2  # one optimizer shard per rank
    # the fp32 master weights (not the bf16 network) in last_state.pt and the EMA copy
    assert all(t.dtype == torch.float32 for t in [*state["model"].values(), *state["ema"].values()])
    assert any((t.to(torch.bfloat16).float() != t).any() for t in state["model"].values())
    assert _losses(run) == _losses(whole) and [s for s, _ in _losses(run)] == list(range(1, 7))
    other = _weights(whole)
    for key in ("model", "ema"):
        assert all(torch.equal(state[key][k], other[key][k]) for k in state[key])


def test_zero0_fp32_follows_torchrun_ddp(tmp_path):
    ds, ddp = tmp_path / "ds", tmp_path / "ddp"
    _train(_deepspeed(2, local_rank_arg=True), ds, steps=4)
    _train(TORCHRUN, ddp, steps=4)
    a, b = _losses(ds), _losses(ddp)
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4]
    # the same samples, gradients averaged over 2 ranks
    assert [v for _, v in a] == pytest.approx([v for _, v in b], rel=1e-5)
    wa, wb = _weights(ds)["model"], _weights(ddp)["model"]
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)

    refused = _train(TORCHRUN, ds, steps=6, ok=False)  # a DeepSpeed run resumed by torchrun
    assert "was trained under deepspeed; resume it with the deepspeed launcher" in refused.stderr
    refused = _train(_deepspeed(2), ddp, steps=6, ok=False)
    assert "was not trained under deepspeed" in refused.stderr


@pytest.fixture
def deepspeed_env(monkeypatch):
    """This process as the deepspeed launcher starts rank 0 of 1 (in-process: fast)."""
    for key, value in {"CROSS_RANK": "0", "CROSS_SIZE": "1", "LOCAL_SIZE": "1", "RANK": "0",
                       "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(_free_port()), "DS_ACCELERATOR": "cpu"}.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize("sets, message", [
    (['deepspeed.zero_stage=1', 'deepspeed.precision="bf16"', 'train.amp="bf16"'],
     'the network is already bf16 under DeepSpeed; set train.amp = "none"'),
    (['deepspeed.precision="fp16"'], "deepspeed fp16 needs CUDA; on the CPU use"),
    (["optim.clip=1.0", 'optim.clip_type="value"'], 'set optim.clip_type = "norm"'),
    (["train.compile=true"], "train.compile = true under deepspeed: not supported"),
    (['gan.discriminator="esrgan-discriminator"', "loss.adversarial_weight=0.005"],
     "launch it with torchrun"),
    (['deepspeed.config="{json}"', "deepspeed.zero_stage=1"], "not also deepspeed.zero_stage"),
    (['deepspeed.config="{json}"'], "its 'optimizer' is the recipe's [optim] here; remove it"),
    (['deepspeed.config="{missing}"'], "cannot read it as JSON"),
    (['deepspeed.precision="bf16"'], "deepspeed bf16 with ZeRO stage 0 is not supported here"),
])
def test_settings_it_cannot_run_are_one_line(sets, message, tmp_path, deepspeed_env, capsys):
    from upsample import cli
    ds_json = tmp_path / "ds.json"  # as another trainer's DeepSpeed config would have it
    ds_json.write_text(json.dumps({"optimizer": {"type": "AdamW", "params": {"lr": 8e-4}},
                                   "fp16": {"enabled": True}, "gradient_clipping": 5}))
    args = ["train", TINY, "--run-dir", str(tmp_path / "r"), "--device", "cpu"]
    for s in [*SETS, *sets]:
        args += ["--set", s.format(json=ds_json, missing=tmp_path / "none.json")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "error:" in err[-1] and "Traceback" not in "".join(err)


@pytest.mark.parametrize("table, message", [
    ({"bf16": {"enabled": "auto"}}, 'bf16 must be an object whose "enabled" is true or false'),
    ({"bf16": True}, 'bf16 must be an object whose "enabled" is true or false'),
    ({"zero_optimization": {"stage": "one"}}, 'zero_optimization must be an object with an integer "stage"'),
    ({"zero_optimization": 1}, 'zero_optimization must be an object with an integer "stage"'),
    ({"zero_optimization": {"stage": 1}, "bf16": {"enabled": True}, "fp16": {"enabled": True}},
     "enables both bf16 and fp16"),
    ({"zero_optimization": {"stage": 0}, "fp16": {"enabled": True}}, "fp16 needs CUDA"),
])
def test_malformed_json_settings_are_one_line(table, message, tmp_path, deepspeed_env, capsys):
    from upsample import cli
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps(table))
    args = ["train", TINY, "--run-dir", str(tmp_path / "r"), "--device", "cpu",
            "--set", f"deepspeed.config={json.dumps(str(ds_json))}"]
    for s in SETS:
        args += ["--set", s]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "error:" in err[-1] and "Traceback" not in "".join(err)


def test_reset_removes_the_deepspeed_checkpoints(tmp_path):
    from upsample.training import rundir
    (tmp_path / "deepspeed" / "step4").mkdir(parents=True)
    (tmp_path / "last_state.pt").write_bytes(b"x")
    rundir.reset_run_dir(tmp_path)
    assert not (tmp_path / "deepspeed").exists() and not (tmp_path / "last_state.pt").exists()


def test_json_settings_are_read_and_batch_keys_must_agree(tmp_path, deepspeed_env, capsys):
    from upsample import cli
    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps({"zero_optimization": {"stage": 1}, "bf16": {"enabled": True},
                                   "train_micro_batch_size_per_gpu": 16}))
    args = ["train", TINY, "--run-dir", str(tmp_path / "r"), "--device", "cpu",
            "--set", f"deepspeed.config={json.dumps(str(ds_json))}"]
    for s in SETS:
        args += ["--set", s]
    assert cli.main(args) == 2
    assert "train_micro_batch_size_per_gpu = 16 but the recipe makes it 4" in capsys.readouterr().err
    ds_json.write_text(json.dumps({"zero_optimization": {"stage": 1}, "bf16": {"enabled": True}}))
    assert cli.main([*args, "--set", "train.steps=2"]) == 0
    assert "deepspeed ZeRO-1 bf16" in capsys.readouterr().err
    assert torch.load(tmp_path / "r" / "last_state.pt", weights_only=False)["deepspeed"]["tag"] == "step2"


def test_config_values_are_read_as_deepspeed_reads_them():
    from upsample.training.engines import precision_of, zero_stage_of
    assert [zero_stage_of(t) for t in ({}, {"zero_optimization": {}}, {"zero_optimization": {"stage": "1"}},
                                       {"zero_optimization": {"stage": 1.0}})] == [0, 0, 1, 1]
    assert precision_of({"fp16": {"enabled": 1}}) == "fp16"
    assert precision_of({"bf16": {"enabled": True, "immediate_grad_update": False}}) == "bf16"
    # "bfloat16" counts only where "bf16" is absent, as in DeepSpeed
    assert precision_of({"bf16": {"enabled": False}, "bfloat16": {"enabled": True}}) == "fp32"
    assert precision_of({"bfloat16": {"enabled": True}, "fp16": {"enabled": False, "loss_scale": 0}}) == "bf16"

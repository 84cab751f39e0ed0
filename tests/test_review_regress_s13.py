"""Review of 514548e (numpy bicubic on the CPU) and c46d553 (training modes per machine):
reproducers of the regressions found. Each test states what it expects; they fail until fixed."""

import json
from pathlib import Path

import pytest
import torch

from upsample import cli
from upsample.training import bench as train_bench, speed
from photos import smooth_photos

ROOT = Path(__file__).resolve().parents[1]
SET5 = ROOT.parent / "shared" / "datasets" / "benchmark" / "Set5"
TINY = ROOT / "configs" / "tiny.toml"


@pytest.mark.skipif(not SET5.is_dir(), reason="needs ../shared/datasets/benchmark/Set5")
def test_eval_model_bicubic_is_its_own_bicubic_baseline(tmp_path):
    """README (evaluation, step 5): the baseline is "the pixels of `--model bicubic`". Since
    514548e `--model bicubic` runs numpy's taps (BicubicUpscaler) while the baseline
    (`evaluate.bicubic_up`) runs torch's imresize: 31 of 1.7 M values differ on Set5 x2, and
    psnr 33.68184542746887 != bicubic_psnr 33.681850399046745 (8a7e166: equal)."""
    out = tmp_path / "r.json"
    assert cli.main(["eval", "--model", "bicubic", "--scale", "2", "--data", str(SET5), "--json", str(out)]) == 0
    d = json.loads(out.read_text())["datasets"]["Set5"]
    assert (d["psnr"], d["ssim"]) == (d["bicubic_psnr"], d["bicubic_ssim"])


def test_resume_of_a_run_by_name_notes_no_machine_settings_as_differing(tmp_path, monkeypatch, capsys):
    """c46d553: `upsample train NAME` records train.amp/channels_last/compile = auto, threads = 0
    (MACHINE_SETTINGS), but `recipe_differs` compares the run with the packaged recipe without
    them: every --resume says the recipe differs in those four and invites `--set` of the
    recipe's bf16 / one thread (emulated bf16 on this CPU)."""
    monkeypatch.chdir(tmp_path)
    smooth_photos(tmp_path / "photos")
    base = ["train", "espcn-x3", "--set", 'data.train=["photos"]', "--set", "val.every=0",
            "--set", "data.batch_size=2"]
    assert cli.main(base + ["--set", "train.steps=1"]) == 0
    capsys.readouterr()
    assert cli.main(base + ["--set", "train.steps=2", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "train.amp" not in err and "train.threads" not in err, err


def test_resume_with_amp_auto_times_again_instead_of_keeping_explicit_bf16(tmp_path, monkeypatch):
    """A run started with explicit train.amp = "bf16" (the campaign's recipes before c46d553) and
    resumed with `--set train.amp=auto`, as the new note advises ("train.amp = "auto" times both
    and takes the faster"): `resumed_modes` takes the saved bf16 as the run's own "auto" choice,
    so on a CPU without bf16 units the run keeps emulated bf16 (no timing, no note), while
    config.toml now says auto. Expected: fp32, the only candidate there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: False)
    smooth_photos(tmp_path / "photos")
    base = ["train", str(TINY), "--run-dir", "run", "--set", 'data.train=["photos"]', "--set", "val.every=0",
            "--set", "data.batch_size=2", "--set", "data.max_images=0"]
    assert cli.main(base + ["--set", "train.steps=1", "--set", "train.amp=bf16"]) == 0
    assert cli.main(base + ["--set", "train.steps=2", "--set", "train.amp=auto", "--resume"]) == 0
    state = torch.load(tmp_path / "run" / "last_state.pt", map_location="cpu", weights_only=False)
    assert state["modes"]["amp"] == "none"


def test_bench_train_name_times_the_settings_train_name_uses(tmp_path, monkeypatch):
    """`bench --train NAME` says it takes the recipe "as `upsample train NAME` takes it", but
    since c46d553 train NAME adds MACHINE_SETTINGS (compile auto, threads 0) and bench does not:
    it times the packaged recipe's one thread (1101 patches/s reported) where train runs torch's
    count (215-379 patches/s on this shared 2-core CPU); in a checkout it even reads
    configs/NAME.toml, not the packaged recipe train NAME reads."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_bench, "CONFIGS", None)  # an installed package: the packaged recipe
    smooth_photos(tmp_path / "photos")
    seen = {}

    class Stop(Exception):
        pass

    def capture(cfg, *a, **k):
        seen["cfg"] = cfg
        raise Stop

    monkeypatch.setattr(train_bench, "time_ours", capture)
    monkeypatch.setattr(train_bench, "measure_peaks", lambda *a, **k: {"fp32": 1.0})
    threads = torch.get_num_threads()
    try:
        with pytest.raises(Stop):
            train_bench.bench_train("espcn-x3", seconds=0.1, overrides=['data.train=["photos"]'])
    finally:
        torch.set_num_threads(threads)
    t = seen["cfg"].train
    assert (t.amp, t.channels_last, t.compile, t.threads) == ("auto", "auto", "auto", 1)  # the recipe's one thread

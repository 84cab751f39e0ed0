"""Review of compression as a user runs it: prune's extreme ratios, tune's Ctrl-C and storage."""

import json
from pathlib import Path

import pytest
import torch

from upsample import cli
from upsample.errors import UserError
from upsample.models import checkpoint, registry
from upsample.training.prune import max_filter_ratio, prune_model

ROOT = Path(__file__).resolve().parents[1]
T91 = ROOT.parent / "shared" / "datasets" / "train" / "T91"


def _espcn(path: Path) -> Path:
    torch.manual_seed(0)
    checkpoint.save_checkpoint(registry.create_model("espcn-x2"), path)
    return path


def test_a_filter_ratio_that_would_empty_a_layer_is_refused():
    """0.98 left ESPCN's 32-filter layer whole (torch-pruning skips a layer it would empty) and
    0.99 pruned nothing; the largest ratio that keeps a filter everywhere shrinks every layer."""
    model = registry.create_model("espcn-x2").eval()
    assert max_filter_ratio(model) == 0.968  # 1 - 1/32, to 3 decimals
    with pytest.raises(UserError, match="the most it allows is 0.968"):
        prune_model(model, None, filter_ratio=0.98)
    prune_model(model, None, filter_ratio=0.968)
    assert model.upsample_spec.kwargs["mid_feat"] == 1 and model.upsample_spec.kwargs["num_feat"] == 2


def test_a_grouped_conv_limits_the_ratio_by_its_groups_width():
    """vapsr-s's conv_body has 2 groups of 16 filters: at 0.95 torch-pruning left num_feat at 32
    while d_atten shrank (not one ratio); its limit is 1 - 1/16."""
    model = registry.create_model("vapsr-s-x2").eval()
    assert max_filter_ratio(model) == 0.937
    with pytest.raises(UserError, match="the most it allows is 0.937"):
        prune_model(model, None, filter_ratio=0.95)


def test_layers_the_forward_does_not_run_do_not_limit_the_ratio():
    """joint-x2's training-only downscaler (a 1-filter output conv) is not pruned."""
    model = registry.create_model("joint-x2").eval()
    assert max_filter_ratio(model) == 0.968
    prune_model(model, None, filter_ratio=0.9)
    assert model.upsample_spec.kwargs["mid_feat"] < 32


def test_prune_cli_names_the_option_given(tmp_path, capsys):
    src = _espcn(tmp_path / "a.safetensors")
    out = tmp_path / "p.safetensors"
    assert cli.main(["prune", str(src), "--filter-ratio", "0.99", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--filter-ratio 0.99" in err and "sparsity" not in err and len(err.splitlines()) == 1
    assert not out.exists()


SETS = [f"data.train=[{json.dumps(str(T91))}]", "data.max_images=4", "data.batch_size=4",
        "val.max_images=1", "val.crop=48", "train.steps=6", "val.every=3", "tune.trial_steps=4"]


def _tune(tmp_path, trials, storage=None):
    args = ["tune", str(ROOT / "configs" / "tiny.toml"), "--trials", str(trials), "--device", "cpu",
            "--storage", storage or f"sqlite:///{tmp_path / 'study.db'}", "--run-dir", str(tmp_path / "runs")]
    for s in SETS:
        args += ["--set", s]
    return cli.main(args)


@pytest.mark.skipif(not T91.is_dir(), reason="needs ../shared/datasets/train/T91")
def test_ctrl_c_before_the_loop_handles_it_reruns_the_trial(tmp_path, capsys, monkeypatch):
    """Ctrl-C while a trial decodes its images (before the loop's signal handler) is a
    KeyboardInterrupt: the trial must run again with its values, as the message says."""
    import optuna
    from upsample.training import loop
    calls = []

    def fake_train(cfg, run_dir, **kw):
        calls.append(cfg.optim.lr)
        if len(calls) == 1:
            raise KeyboardInterrupt
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 3, "val_psnr": 20.0}) + "\n")
        return 0
    monkeypatch.setattr(loop, "train", fake_train)
    assert _tune(tmp_path, 1) == 130
    assert "runs again from its start" in capsys.readouterr().err
    assert _tune(tmp_path, 1) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]
    assert calls[0] == calls[1]


@pytest.mark.parametrize("storage", ["sqlite:///", "sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_storage_is_refused(tmp_path, capsys, storage):
    """`sqlite:///` (no file: a typo) is an in-memory database: nothing to resume from."""
    assert _tune(tmp_path, 1, storage) == 2
    err = capsys.readouterr().err.strip()
    assert "in-memory database" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_an_int8_file_of_untrained_weights_is_refused_like_its_model(tmp_path, capsys, monkeypatch):
    """`quantize vapsr-s-x2 --allow-untrained` made a file that `image` then ran silently."""
    import numpy as np
    from PIL import Image
    from upsample.runtime import int8
    from upsample.runtime.kinds import Backend
    monkeypatch.delenv("UPSAMPLE_ALLOW_UNTRAINED", raising=False)
    (tmp_path / "calib").mkdir()
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)).save(
        tmp_path / "calib" / "a.png")
    out = tmp_path / "q.onnx"
    assert cli.main(["quantize", "espcn-rgb-x2", "--allow-untrained", "--backend", "onnxruntime",
                     "--calib", str(tmp_path / "calib"), "--samples", "1", "--size", "16", "-o", str(out)]) == 0
    assert int8.read_meta(out)[1]["untrained"] is True
    with pytest.raises(UserError, match="untrained"):
        int8.load_runner(out, Backend.ONNXRUNTIME, torch.device("cpu"))
    assert cli.main(["image", str(tmp_path / "calib" / "a.png"), "--model", str(out),
                     "-o", str(tmp_path / "o.png")]) == 2
    assert "untrained (random) weights" in capsys.readouterr().err and not (tmp_path / "o.png").exists()
    monkeypatch.setenv("UPSAMPLE_ALLOW_UNTRAINED", "1")  # timing runs still may
    int8.load_runner(out, Backend.ONNXRUNTIME, torch.device("cpu"))
    monkeypatch.delenv("UPSAMPLE_ALLOW_UNTRAINED")
    capsys.readouterr()
    # --allow-untrained reaches the int8 file, and its own runtime takes --precision int8
    assert cli.main(["image", str(tmp_path / "calib" / "a.png"), "--model", str(out), "--allow-untrained",
                     "--backend", "onnxruntime", "--precision", "int8", "-o", str(tmp_path / "o.png")]) == 0
    assert Image.open(tmp_path / "o.png").size == (80, 80)


def test_a_pruned_model_of_untrained_weights_is_refused_like_its_model(tmp_path, capsys, monkeypatch):
    """`prune vapsr-s-x2 --allow-untrained -o P` wrote a checkpoint that `image --model P` then
    ran silently: its output is noise, as its parent's."""
    import numpy as np
    from PIL import Image
    monkeypatch.delenv("UPSAMPLE_ALLOW_UNTRAINED", raising=False)
    pruned = tmp_path / "p.safetensors"
    assert cli.main(["prune", "espcn-rgb-x2", "--allow-untrained", "--sparsity", "0.3", "-o", str(pruned)]) == 0
    src = tmp_path / "a.png"
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(src)
    capsys.readouterr()
    assert cli.main(["image", str(src), "--model", str(pruned), "-o", str(tmp_path / "o.png")]) == 2
    assert "made from untrained (random) weights" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
    assert cli.main(["image", str(src), "--model", str(pruned), "--allow-untrained", "-o", str(tmp_path / "o.png")]) == 0
    shipped = tmp_path / "s.safetensors"  # a trained parent's pruned file runs as before
    assert cli.main(["prune", "espcn-x2", "--sparsity", "0.3", "-o", str(shipped)]) == 0
    assert cli.main(["image", str(src), "--model", str(shipped), "-o", str(tmp_path / "o2.png")]) == 0

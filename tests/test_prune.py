"""`upsample prune`: structured pruning gives a normal smaller model; `train --init` fine-tunes it."""

import json
from pathlib import Path

import pytest
import torch

from upsample.models import checkpoint, registry
from upsample import cli
from upsample.training.prune import prune_model

ROOT = Path(__file__).resolve().parents[1]
T91 = ROOT.parent / "shared" / "datasets" / "train" / "T91"


def _trained_like(name: str, path: Path) -> Path:
    """A checkpoint of `name` with random weights (what prune reads from disk)."""
    torch.manual_seed(0)
    checkpoint.save_checkpoint(registry.create_model(name), path)
    return path


@pytest.mark.parametrize("name", ["espcn-x2", "espcn-rgb-x3", "vdsr", "vapsr-s-x2"])
def test_pruned_model_is_a_smaller_model_of_the_same_architecture(name):
    model = registry.create_model(name).eval()
    before = registry.count_params(model)
    x = torch.rand(1, model.upsample_spec.channels, 20, 20)
    prune_model(model, 0.5)  # half the parameters
    after = registry.count_params(model)
    assert 1.8 <= before / after <= 2.2
    spec = model.upsample_spec
    assert spec.arch == registry.get_spec(name).arch and spec.scale == registry.get_spec(name).scale
    rebuilt = registry.build(spec.arch, spec.kwargs)  # constructor keywords alone give the shape
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert rebuilt.eval()(x).shape == model(x).shape
        assert torch.allclose(rebuilt(x), model(x), atol=1e-6)


def test_sparsity_is_the_fraction_of_parameters_removed(tmp_path, capsys):
    src = _trained_like("vdsr", tmp_path / "a.safetensors")
    out = tmp_path / "p.safetensors"
    assert cli.main(["prune", str(src), "--sparsity", "0.5", "-o", str(out)]) == 0
    assert "params 665,921 -> 329,716 (2.02x fewer)" in capsys.readouterr().out
    model, meta = checkpoint.load_checkpoint(out)
    assert meta["kwargs"]["num_feat"] == 45 and meta["extra"]["sparsity"] == 0.5
    assert abs(meta["extra"]["params_removed"] - 0.5) < 0.01


def test_l1_keeps_the_filters_with_the_largest_norms():
    model = registry.create_model("vdsr", num_layers=3).eval()
    w = model.conv_first.weight.detach().clone()
    norms = w.abs().sum(dim=(1, 2, 3))
    kept = set(torch.argsort(norms, descending=True)[:32].tolist())
    prune_model(model, method="l1", filter_ratio=0.5)
    got = {int(i) for i in range(64) if any(torch.equal(w[i], k) for k in model.conv_first.weight)}
    assert got == kept


def test_prune_cli_writes_a_loadable_checkpoint_and_refuses_to_overwrite(tmp_path, capsys):
    src = _trained_like("espcn-x3", tmp_path / "a.safetensors")
    out = tmp_path / "p.safetensors"
    assert cli.main(["prune", str(src), "--filter-ratio", "0.5", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "params 22,729 -> 6,761 (3.36x fewer)" in text and "MACs" in text
    model, meta = checkpoint.load_checkpoint(out)
    assert meta["kwargs"]["num_feat"] == 32 and meta["extra"]["filter_ratio"] == 0.5
    assert model(torch.rand(1, 1, 8, 8)).shape == (1, 1, 24, 24)
    assert cli.main(["prune", str(src), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "1.5"], "between 0 and 1"),
    (["--sparsity", "0"], "between 0 and 1"),
    (["--filter-ratio", "1"], "between 0 and 1"),
])
def test_prune_bad_input_is_one_line(tmp_path, capsys, args, message):
    src = _trained_like("espcn-x2", tmp_path / "a.safetensors")
    assert cli.main(["prune", str(src), *args, "-o", str(tmp_path / "p.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p.safetensors").exists()


def test_prune_says_when_an_architecture_cannot_be_pruned(tmp_path, capsys, monkeypatch):
    import torch_pruning as tp

    def untraceable(*args, **kwargs):  # as torch-pruning fails on RRDBNet's 23 dense blocks
        raise TypeError("unsupported operand type(s) for +: 'int' and 'NoneType'")
    monkeypatch.setattr(tp.pruner, "MetaPruner", untraceable)
    src = _trained_like("espcn-x2", tmp_path / "a.safetensors")
    assert cli.main(["prune", str(src), "-o", str(tmp_path / "p.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot prune" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "p.safetensors").exists()


@pytest.mark.skipif(not T91.is_dir(), reason="needs ../shared/datasets/train/T91")
def test_train_init_from_a_pruned_checkpoint_trains_the_pruned_shape(tmp_path, capsys):
    src = _trained_like("espcn-x2", tmp_path / "a.safetensors")
    pruned = tmp_path / "p.safetensors"
    assert cli.main(["prune", str(src), "--filter-ratio", "0.5", "-o", str(pruned)]) == 0
    sets = [f"data.train=[{json.dumps(str(T91))}]", "data.max_images=4", "data.batch_size=4",
            "val.max_images=1", "val.crop=48", "train.steps=2"]
    args = ["train", str(ROOT / "configs" / "tiny.toml"), "--run-dir", str(tmp_path / "run"),
            "--device", "cpu", "--init", str(pruned)]
    for s in sets:
        args += ["--set", s]
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "training that shape" in err and "initialised 6/6 tensors" in err
    model, meta = checkpoint.load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert meta["kwargs"]["num_feat"] == 32
    import tomllib
    saved = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert saved["model"]["kwargs"] == {"num_feat": 32, "mid_feat": 16}
    # the resolved config says where the run started, so the run can be repeated from it alone
    assert saved["train"]["init"] == str(pruned)


def test_rrdbnet_is_refused_at_once(tmp_path, capsys):
    """torch-pruning ran 75 s on RRDBNet's dense blocks and then failed with a TypeError."""
    out = tmp_path / "p.safetensors"
    assert cli.main(["prune", "rrdbnet-x4", "--allow-untrained", "--filter-ratio", "0.25", "-o", str(out)]) == 2
    assert "dense blocks" in capsys.readouterr().err and not out.exists()


def test_joint_model_prunes_its_upscaler_by_the_sparsity_and_keeps_its_downscaler(tmp_path, capsys):
    joint, espcn = _trained_like("joint-x2", tmp_path / "j.safetensors"), _trained_like("espcn-x2", tmp_path / "e.safetensors")
    for src in (joint, espcn):
        assert cli.main(["prune", str(src), "--sparsity", "0.5", "-o", str(src.with_suffix(".p.safetensors"))]) == 0
    (_, pj), (_, pe) = (checkpoint.load_checkpoint(p.with_suffix(".p.safetensors")) for p in (joint, espcn))
    assert (pj["kwargs"]["num_feat"], pj["kwargs"]["mid_feat"]) == (pe["kwargs"]["num_feat"], pe["kwargs"]["mid_feat"])
    assert pe["kwargs"]["num_feat"] >= 40 and abs(pj["extra"]["params_removed"] - 0.5) < 0.02
    assert (pj["kwargs"]["hr_feat"], pj["kwargs"]["down_feat"]) == (16, 32)  # the downscaler as it was

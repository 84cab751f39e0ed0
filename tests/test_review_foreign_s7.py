"""Other projects' checkpoints as they are published: twtygqyy's pickled VDSR module (read without
running its code), Lornatang's ESPCN/VDSR names, Lightning modules with loss networks,
`model_state_dict` wrappers, and one clear line for training states, TorchScript files and the
networks we recognise but do not run."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from torch import nn

from upsample import cli
from upsample.errors import UserError
from upsample.models.checkpoint import load_checkpoint
from upsample.models.registry import create_model


def _same_output(a, b, shape=(1, 1, 10, 12)):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6, rtol=0)


# twtygqyy/pytorch-vdsr's network (vdsr.py), which main_vdsr.py saves whole:
# torch.save({"epoch": epoch, "model": model}, ...) with model = DataParallel(Net()) on GPUs.
class Conv_ReLU_Block(nn.Module):  # noqa: N801 - the original's name is in the pickle
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(64, 64, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def __setstate__(self, state):  # the real class must never be used to read the file
        raise AssertionError("the checkpoint's own class was imported and run")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.residual_layer = nn.Sequential(*[Conv_ReLU_Block() for _ in range(18)])
        self.input = nn.Conv2d(1, 64, 3, 1, 1, bias=False)
        self.output = nn.Conv2d(64, 1, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)


class _WritesFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _twtygqyy_file(tmp_path, **save_kwargs):
    torch.manual_seed(0)
    net = Net()
    path = tmp_path / "model_epoch_50.pth"
    torch.save({"epoch": 50, "model": nn.DataParallel(net)}, path, **save_kwargs)
    return net, path


@pytest.mark.parametrize("zipped", [True, False])
def test_pickled_vdsr_module_loads_without_running_its_code(tmp_path, zipped):
    net, path = _twtygqyy_file(tmp_path, _use_new_zipfile_serialization=zipped)
    model, meta = load_checkpoint(path)
    assert meta["arch"] == "vdsr" and meta["kwargs"]["bias"] is False
    sd = model.state_dict()
    assert torch.equal(sd["conv_first.weight"], net.input.weight)
    assert torch.equal(sd["body.17.weight"], net.residual_layer[17].conv.weight)
    assert torch.equal(sd["conv_last.weight"], net.output.weight)


def test_pickled_module_of_old_torch_parameters(tmp_path, monkeypatch):
    """PyTorch 0.3 pickled a Parameter as Parameter(data, requires_grad), as the 2017 file is."""
    monkeypatch.setattr(nn.Parameter, "__reduce_ex__",
                        lambda self, proto: (nn.Parameter, (self.data, self.requires_grad)))
    net, path = _twtygqyy_file(tmp_path, _use_new_zipfile_serialization=False)
    monkeypatch.undo()
    model, _ = load_checkpoint(path)
    assert torch.equal(model.state_dict()["body.3.weight"], net.residual_layer[3].conv.weight)


def test_pickled_module_with_code_in_it_runs_none(tmp_path):
    torch.manual_seed(0)
    net = Net()
    net.payload = _WritesFile(tmp_path / "PWNED")  # an attribute whose unpickling opens a file
    torch.save({"model": net}, tmp_path / "m.pth")
    model, _ = load_checkpoint(tmp_path / "m.pth")
    assert not (tmp_path / "PWNED").exists()
    assert torch.equal(model.state_dict()["conv_first.weight"], net.input.weight)
    torch.save({"params": _WritesFile(tmp_path / "PWNED")}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="more than tensors"):
        load_checkpoint(tmp_path / "evil.pth")
    assert not (tmp_path / "PWNED").exists()


def test_lornatang_espcn_and_vdsr(tmp_path):
    torch.manual_seed(0)
    ours = create_model("espcn-x3").eval()
    names = {k.replace("first_part", "feature_maps").replace("last_part", "sub_pixel"): v
             for k, v in ours.state_dict().items()}
    torch.save({"epoch": 3, "best_psnr": 32.0, "best_ssim": 0.9, "state_dict": names,
                "optimizer": {"state": {}, "param_groups": []}}, tmp_path / "ESPCN_x3-T91.pth.tar")
    model, meta = load_checkpoint(tmp_path / "ESPCN_x3-T91.pth.tar")
    assert meta["name"] == "espcn-x3" and _same_output(ours, model)
    ours = create_model("vdsr", bias=False).eval()
    sd = ours.state_dict()
    names = {"conv1.0.weight": sd["conv_first.weight"], "conv2.weight": sd["conv_last.weight"],
             **{f"trunk.{i}.conv.weight": sd[f"body.{i}.weight"] for i in range(18)}}
    torch.save({"epoch": 1, "state_dict": names}, tmp_path / "vdsr-TB291.pth.tar")
    model, meta = load_checkpoint(tmp_path / "vdsr-TB291.pth.tar")
    assert meta["arch"] == "vdsr" and _same_output(ours, model)


def test_lightning_module_with_a_loss_network_and_model_state_dict(tmp_path):
    torch.manual_seed(0)
    ours = create_model("espcn-x2").eval()
    sd = {"model." + k: v for k, v in ours.state_dict().items()}
    sd["perceptual_loss.vgg.features.0.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save({"state_dict": sd, "epoch": 1, "optimizer_states": [{}]}, tmp_path / "light.ckpt")
    assert load_checkpoint(tmp_path / "light.ckpt")[1]["name"] == "espcn-x2"
    torch.save({"epoch": 2, "model_state_dict": ours.state_dict(), "optimizer_state_dict": {"state": {}},
                "loss": 0.1}, tmp_path / "tutorial.pt")
    assert load_checkpoint(tmp_path / "tutorial.pt")[1]["name"] == "espcn-x2"
    torch.save({"module": ours.state_dict(), "buffer_names": [], "optimizer": None, "ds_version": "0.14"},
               tmp_path / "mp_rank_00_model_states.pt")  # a DeepSpeed checkpoint's weights file
    assert load_checkpoint(tmp_path / "mp_rank_00_model_states.pt")[1]["name"] == "espcn-x2"


def test_training_state_alone_says_so(tmp_path):
    """BasicSR's training_states/N.state holds the optimizers and schedulers, no network."""
    torch.save({"epoch": 10, "iter": 5000, "optimizers": [{"state": {}, "param_groups": [{"lr": 1e-3}]}],
                "schedulers": [{"last_epoch": 5000}]}, tmp_path / "5000.state")
    with pytest.raises(UserError, match="only a training state.*net_g"):
        load_checkpoint(tmp_path / "5000.state")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torchscript_file_is_named(tmp_path):
    torch.jit.save(torch.jit.script(nn.Conv2d(1, 4, 3, padding=1)), tmp_path / "m.pt")
    with pytest.raises(UserError, match="TorchScript") as info:
        load_checkpoint(tmp_path / "m.pt")
    assert "corrupt" not in str(info.value)


@pytest.mark.parametrize("name, keys", [
    ("SwinIR", ["conv_first.weight", "layers.0.residual_group.blocks.0.norm1.weight", "conv_last.weight"]),
    ("HAT", ["conv_first.weight", "layers.0.residual_group.blocks.0.norm1.weight",
             "layers.0.residual_group.blocks.0.conv_block.cab.0.weight"]),
    ("SPAN", ["conv_1.sk.weight", "block_1.c1_r.sk.weight", "conv_cat.weight"]),
    ("Real-CUGAN", ["unet1.conv1.conv.0.weight", "unet2.conv5.weight"]),
    ("OmniSR", ["input.weight", "residual_layer.0.residual_layer.0.layer.0.fn.0.weight", "output.weight"]),
])
def test_other_projects_networks_are_named(tmp_path, name, keys):
    torch.save({"params": {k: torch.zeros(4, 4, 3, 3) for k in keys}}, tmp_path / "m.pth")
    with pytest.raises(UserError, match=f"{re.escape(name)} is not supported"):
        load_checkpoint(tmp_path / "m.pth")


def test_esrgan_plus_is_named(tmp_path):
    torch.manual_seed(0)
    sd = create_model("rrdbnet-x4", num_block=1).state_dict()
    sd["body.0.rdb1.conv1x1.weight"] = torch.zeros(32, 64, 1, 1)
    torch.save(sd, tmp_path / "plus.pth")
    with pytest.raises(UserError, match=r"ESRGAN\+"):
        load_checkpoint(tmp_path / "plus.pth")


def test_scale_mismatch_names_the_scale_as_typed(tmp_path, capsys):
    from PIL import Image
    torch.manual_seed(0)
    torch.save({"params_ema": create_model("rrdbnet-x2", num_block=1).state_dict()}, tmp_path / "x2.pth")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    rc = cli.main(["image", str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png"), "--model",
                   str(tmp_path / "x2.pth"), "--scale", "4"])
    err = capsys.readouterr().err
    assert rc == 2 and "--scale is 4:" in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


def test_the_pickled_class_module_was_never_imported(tmp_path):
    """The file names `test_review_foreign_s7.Net`: reading it imports no module it names."""
    torch.manual_seed(0)
    fake = type("Net", (Net,), {"__module__": "twtygqyy_vdsr_not_installed"})
    net = fake()
    sys.modules["twtygqyy_vdsr_not_installed"] = type(sys)("twtygqyy_vdsr_not_installed")
    sys.modules["twtygqyy_vdsr_not_installed"].Net = fake
    try:
        torch.save({"epoch": 1, "model": net}, tmp_path / "m.pth")
    finally:
        del sys.modules["twtygqyy_vdsr_not_installed"]
    model, _ = load_checkpoint(tmp_path / "m.pth")
    assert "twtygqyy_vdsr_not_installed" not in sys.modules
    assert torch.equal(model.state_dict()["conv_last.weight"], net.output.weight)

"""Checkpoints as other projects and users' own training write them: Lightning modules (`net.`
prefix, AttributeDict hyper-parameters), EMA-only files, counters beside the weights, a torch
file named .safetensors, files saved on a GPU, and one clear line for what is no checkpoint."""

from __future__ import annotations

import re
import sys
import zipfile

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from upsample import cli
from upsample.errors import UserError
from upsample.models.checkpoint import interpolate_checkpoints, load_checkpoint
from upsample.models.registry import create_model


def _espcn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("espcn-x3").eval()


def _same_output(a, b, shape=(1, 1, 9, 11)):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


class AttributeDict(dict):
    """Lightning's hyper-parameter dict, pickled from a module the reader does not have."""


def test_lightning_net_prefix_and_attribute_dict_hyper_parameters(tmp_path):
    ours = _espcn()
    fake = type("AttributeDict", (AttributeDict,), {"__module__": "lightning_not_installed"})
    sys.modules["lightning_not_installed"] = type(sys)("lightning_not_installed")
    sys.modules["lightning_not_installed"].AttributeDict = fake
    try:
        torch.save({"state_dict": {"net." + k: v for k, v in ours.state_dict().items()},
                    "hyper_parameters": fake(lr=1e-3, scale=3), "epoch": 4,
                    "pytorch-lightning_version": "2.1.0"}, tmp_path / "epoch=4.ckpt")
    finally:
        del sys.modules["lightning_not_installed"]
    model, meta = load_checkpoint(tmp_path / "epoch=4.ckpt")
    assert meta["name"] == "espcn-x3" and _same_output(ours, model)


def _ema_files(ours, plain):
    """The EMA-weight layouts, each beside other (`plain`) weights that must not be picked."""
    sd, other = ours.state_dict(), plain.state_dict()
    averaged = AveragedModel(ours).state_dict()  # `n_averaged` + `module.<names>`
    return {
        "timm.pth": {"state_dict": other, "state_dict_ema": sd},
        "lornatang.pth.tar": {"epoch": 3, "state_dict": other, "ema_state_dict": averaged},
        "ema_only.pth": {"ema": sd},
        "model_ema.pth": {"model": other, "model_ema": sd},
        "lightning_ema.ckpt": {"state_dict": {**{"model." + k: v for k, v in other.items()},
                                              **{"model_ema.module." + k: v for k, v in sd.items()}}},
        "prefixed.pth": {"ema." + k: v for k, v in sd.items()},
    }


def test_ema_weights_are_found_and_preferred(tmp_path):
    ours, plain = _espcn(0), _espcn(1)
    for name, content in _ema_files(ours, plain).items():
        torch.save(content, tmp_path / name)
        model, meta = load_checkpoint(tmp_path / name)
        assert meta["name"] == "espcn-x3" and _same_output(ours, model), name


def test_counters_beside_the_weights_are_passed_over(tmp_path):
    ours = _espcn()
    sd = dict(ours.state_dict())
    sd["first_part.0.num_batches_tracked"] = torch.tensor(7)  # a step count of no BatchNorm here
    sd.update({"total_ops": torch.zeros(1, dtype=torch.float64), "first_part.0.total_params": torch.zeros(1)})
    torch.save({"params": sd}, tmp_path / "thop.pth")
    model, meta = load_checkpoint(tmp_path / "thop.pth")
    assert meta["name"] == "espcn-x3" and _same_output(ours, model)
    torch.save({"params": {**sd, "first_part.0.running_mean": torch.zeros(64)}}, tmp_path / "bn.pth")
    with pytest.raises(UserError, match="unexpected keys: first_part.0.running_mean$"):
        load_checkpoint(tmp_path / "bn.pth")  # a real buffer still does not fit


def test_a_torch_file_named_safetensors_and_one_saved_on_a_gpu(tmp_path, monkeypatch):
    ours = _espcn()
    torch.save({"params_ema": ours.state_dict()}, tmp_path / "misnamed.safetensors")
    assert _same_output(ours, load_checkpoint(tmp_path / "misnamed.safetensors")[0])
    import torch.serialization as serialization
    monkeypatch.setattr(serialization, "location_tag", lambda storage: "cuda:0")
    for zipped in (True, False):
        path = tmp_path / f"cuda-{zipped}.pth"
        torch.save({"params": ours.state_dict()}, path, _use_new_zipfile_serialization=zipped)
        with pytest.raises(RuntimeError):  # the file does say CUDA: read as it is, it needs a GPU
            torch.load(path, weights_only=True)
        assert _same_output(ours, load_checkpoint(path)[0])


@pytest.mark.parametrize("content, message", [
    (lambda m: torch.optim.Adam(m.parameters()).state_dict(), r"is an optimizer's state .*model's weights"),
    (lambda m: {}, r"holds an empty dict, no weights"),
    (lambda m: [m.state_dict()], r"holds no state dict of tensors \(a list\); give a file of a model's"),
    (lambda m: {"decay": 0.999, "num_updates": 5, "shadow_params": list(m.parameters())},
     r"EMA helper's state .*ema.copy_to"),
])
def test_files_without_weights_say_what_they_are(tmp_path, content, message):
    torch.save(content(_espcn()), tmp_path / "m.pth")
    with pytest.raises(UserError, match=message):
        load_checkpoint(tmp_path / "m.pth")


def test_files_that_are_no_checkpoint_say_so_in_words(tmp_path, capsys):
    with zipfile.ZipFile(tmp_path / "weights.pth", "w") as z:
        z.writestr("README.txt", "download the weights from ...")
    rc = cli.main(["interpolate", str(tmp_path / "weights.pth"), "espcn-x3", "--alpha", "0.5",
                   "-o", str(tmp_path / "o.safetensors")])
    err = capsys.readouterr().err
    assert rc == 2 and "is a zip archive of other files (README.txt), not a PyTorch checkpoint" in err
    assert "inline_container" not in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    (tmp_path / "junk.pth").write_bytes(b"\x80\x02" + b"junk" * 10)
    with pytest.raises(UserError, match=r"as a PyTorch checkpoint: [A-Za-z]+Error \d+; the file is corrupt"):
        load_checkpoint(tmp_path / "junk.pth")
    assert not (tmp_path / "o.safetensors").exists()


class _WritesFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_legacy_pickles_with_code_run_none(tmp_path):
    ours = _espcn()
    marker = tmp_path / "PWNED"
    torch.save({"params": _WritesFile(marker)}, tmp_path / "evil.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(UserError, match="more than tensors"):
        load_checkpoint(tmp_path / "evil.pth")
    torch.save({"params": ours.state_dict(), "args": _WritesFile(marker)}, tmp_path / "beside.pth",
               _use_new_zipfile_serialization=False)
    assert _same_output(ours, load_checkpoint(tmp_path / "beside.pth")[0])
    assert not marker.exists()


def test_interpolate_names_what_differs(tmp_path):
    torch.manual_seed(0)
    torch.save({"params_ema": create_model("rrdbnet-x4", num_block=1).state_dict()}, tmp_path / "x4.pth")
    torch.save({"params_ema": create_model("rrdbnet-x2", num_block=1).state_dict()}, tmp_path / "x2.pth")
    torch.save(create_model("vapsr-x4", num_block=1).state_dict(), tmp_path / "vapsr.pth")
    out = tmp_path / "o.safetensors"
    with pytest.raises(UserError, match=r"different architectures \(scale 4 vs 2\)"):
        interpolate_checkpoints(tmp_path / "x4.pth", tmp_path / "x2.pth", 0.5, out)
    with pytest.raises(UserError, match=re.escape("different architectures (rrdbnet vs vapsr)")):
        interpolate_checkpoints(tmp_path / "x4.pth", tmp_path / "vapsr.pth", 0.5, out)
    assert not out.exists()
    ema = AveragedModel(_espcn(1)).state_dict()  # a foreign EMA file and ours blend
    torch.save({"ema_state_dict": ema}, tmp_path / "ema.pth.tar")
    interpolate_checkpoints(tmp_path / "ema.pth.tar", tmp_path / "ema.pth.tar", 0.5, out)
    assert _same_output(load_checkpoint(out)[0], _espcn(1))


def test_a_state_dict_with_its_counters_put_in_beside_it(tmp_path):
    ours = _espcn()
    state = {"first_part.0.num_batches_tracked": torch.tensor(3), **ours.state_dict()}
    state.update(epoch=12, best_psnr=33.1, note="lr 1e-3")  # state["epoch"] = epoch; torch.save(state)
    torch.save(state, tmp_path / "sr_epoch12.pth")
    model, meta = load_checkpoint(tmp_path / "sr_epoch12.pth")
    assert meta["name"] == "espcn-x3" and meta["dtype"] == "float32" and _same_output(ours, model)


def test_a_missing_pth_tar_is_a_checkpoint_not_found(tmp_path, monkeypatch, capsys):
    from PIL import Image
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save("a.png")
    rc = cli.main(["image", "a.png", "-o", "o.png", "--model", "ESPCN_x3-T91-64bf5ee4.pth.tar"])
    err = capsys.readouterr().err
    assert rc == 2 and "checkpoint not found: ESPCN_x3-T91-64bf5ee4.pth.tar" in err and "unknown model" not in err

"""Review of the ESRGAN side as a researcher uses it: discriminator patch sizes, perceptual and
LPIPS weights that cannot be downloaded (or are the wrong file), ESRGAN-family checkpoints as
other projects ship them, and `upsample interpolate` of two of them."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upsample import cli
from upsample.errors import UserError
from upsample.evaluation import lpips
from upsample.models import features
from upsample.models.checkpoint import load_checkpoint, read_state
from upsample.models.discriminator import UNetDiscriminatorSN, VGGStyleDiscriminator
from upsample.models.rrdbnet import RRDBNet
from upsample.training.config import load_config
from upsample.training.gan import build_discriminator

ROOT = Path(__file__).resolve().parents[1]
T91 = ROOT.parent / "shared" / "datasets" / "train" / "T91"
TINY = str(ROOT / "configs" / "esrgan-tiny.toml")


def _train(run_dir, *sets):
    args = ["train", TINY, "--run-dir", str(run_dir), "--device", "cpu",
            "--set", f"data.train=[{json.dumps(str(T91))}]", "--set", "data.max_images=4"]
    for s in sets:
        args += ["--set", s]
    return cli.main(args)


# ------------------------------------------------------------------------- discriminator patches


def test_unet_discriminator_patch_not_a_multiple_of_8_is_one_line():
    sets = ["gan.discriminator=realesrgan-unet-discriminator", "gan.kwargs={num_feat = 4}"]
    cfg = load_config(TINY, sets + ["data.patch_size=36"])
    with pytest.raises(UserError, match="multiple of 8.*data.patch_size = 36.*32 or 40"):
        build_discriminator(cfg, 36, torch.device("cpu"))
    disc = build_discriminator(load_config(TINY, sets + ["data.patch_size=40"]), 40, torch.device("cpu"))
    assert disc.model(torch.rand(2, 3, 40, 40)).shape == (2, 1, 40, 40)
    # without the skips any side works: nothing is added across levels
    plain = UNetDiscriminatorSN(num_feat=4, skip_connection=False)
    assert plain.size_multiple == 1 and plain(torch.rand(1, 3, 36, 36)).dim() == 4


def test_x3_generator_and_discriminator_patch_advice_agree():
    """x3 needs a patch that is a multiple of 3; the VGG-style discriminator takes 128 or 256 only,
    so each error used to send the user to the other's size and back."""
    x3 = ["model.name=rrdbnet-x3", "model.kwargs={num_feat = 4, num_block = 1, num_grow_ch = 4}"]
    with pytest.raises(UserError, match=r"128 is not a multiple of the model's scale \(3\).*multiple of 24"):
        build_discriminator(load_config(TINY, x3 + ["data.patch_size=129"]), 129, torch.device("cpu"))
    unet = x3 + ["gan.discriminator=realesrgan-unet-discriminator", "gan.kwargs={num_feat = 4}"]
    with pytest.raises(UserError, match="e.g. 120 or 144"):  # multiples of 8 and of 3
        build_discriminator(load_config(TINY, unet + ["data.patch_size=126"]), 126, torch.device("cpu"))
    build_discriminator(load_config(TINY, unet + ["data.patch_size=120"]), 120, torch.device("cpu"))


@pytest.mark.skipif(not T91.is_dir(), reason="needs ../shared/datasets/train/T91")
def test_unet_patch_error_comes_before_the_run_dir(tmp_path, capsys):
    code = _train(tmp_path / "run", "gan.discriminator=realesrgan-unet-discriminator",
                  "gan.kwargs={num_feat = 4}", "data.patch_size=36", "train.steps=1")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "multiple of 8" in err[0], err
    assert not (tmp_path / "run").exists()  # no half run dir that then needs --reset


# ------------------------------------------------------------------------- perceptual weights


def _torchvision_file(path: Path, arch: str, bn: bool = False) -> str:
    if arch == "alexnet":
        seq, _ = features.alexnet_features()
    elif not bn:
        seq, _ = features.vgg_features(arch)
    else:  # torchvision's vgg19_bn: conv, BatchNorm, ReLU
        layers, cin = [], 3
        for v in features._VGG_CFGS[arch]:
            layers += [torch.nn.MaxPool2d(2)] if v == "M" else \
                [torch.nn.Conv2d(cin, v, 3, padding=1), torch.nn.BatchNorm2d(v), torch.nn.ReLU()]
            cin = cin if v == "M" else v
        seq = torch.nn.Sequential(*layers)
    state = {f"features.{k}": v for k, v in seq.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(state, path)
    return str(path)


def test_vgg19_without_weights_says_which_key_to_set_and_the_offline_default(tmp_path):
    with pytest.raises(UserError) as exc:
        features.feature_extractor("vgg19")
    text = str(exc.value)
    assert "never downloads" in text and "vgg19-dcb9e9d4.pth" in text
    assert "loss.perceptual.weights" in text and 'network = "efficientnet-lite0"' in text
    with pytest.raises(UserError, match="is a folder; set loss.perceptual.weights"):
        features.feature_extractor("vgg19", "", str(tmp_path))
    with pytest.raises(UserError, match="is a folder"):
        features.feature_extractor("efficientnet-lite0", "", str(tmp_path))


@pytest.mark.skipif(not T91.is_dir(), reason="needs ../shared/datasets/train/T91")
def test_train_with_vgg19_and_no_file_is_one_line_and_no_run_dir(tmp_path, capsys):
    assert _train(tmp_path / "run", "loss.perceptual.network=vgg19") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--set loss.perceptual.weights=" in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arch,bn,named", [("vgg16", False, "vgg16"), ("vgg19", True, "vgg19_bn"),
                                           ("alexnet", False, "alexnet")])
def test_another_torchvision_network_is_named(tmp_path, arch, bn, named):
    path = _torchvision_file(tmp_path / "w.pth", arch, bn)
    with pytest.raises(UserError, match=f"holds torchvision's {named} weights, not vgg19's; pass vgg19-dcb9e9d4"):
        features.feature_extractor("vgg19", "", path)


def test_vgg19_file_with_the_default_network_says_set_network(tmp_path):
    path = _torchvision_file(tmp_path / "vgg19-dcb9e9d4.pth", "vgg19")
    with pytest.raises(UserError, match='vgg19 weights, not EfficientNet-Lite0.*network = "vgg19"'):
        features.feature_extractor("efficientnet-lite0", "", path)
    assert features.feature_extractor("vgg19", "", path).layer == "conv5_4"  # the right way works


# ------------------------------------------------------------------------- LPIPS files


def _lins(path: Path, chans) -> str:
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(chans)}, path)
    return str(path)


def test_lpips_swapped_wrong_kind_squeeze_and_folder(tmp_path):
    alex = _lins(tmp_path / "alex.pth", lpips.CHANNELS["alex"])
    vgg = _lins(tmp_path / "vgg.pth", lpips.CHANNELS["vgg"])
    backbone = _torchvision_file(tmp_path / "alexnet-owt-7be5be79.pth", "alexnet")
    assert lpips.load_lpips(alex, backbone).net == "alex"
    with pytest.raises(UserError, match="alexnet backbone, not LPIPS v0.1 linear weights.*swapped"):
        lpips.load_lpips(backbone, alex)
    with pytest.raises(UserError, match=r"\(for vgg.pth\).*alexnet weights, not vgg16's; pass vgg16-397923af"):
        lpips.load_lpips(vgg, backbone)
    squeeze = _lins(tmp_path / "squeeze.pth", (64, 128, 256, 384, 384, 512, 512))
    with pytest.raises(UserError, match="SqueezeNet LPIPS"):
        lpips.load_lpips(squeeze, backbone)
    with pytest.raises(UserError, match="is a folder; LPIPS is unavailable"):
        lpips.load_lpips(str(tmp_path), backbone)


# ------------------------------------------------------------------------- ESRGAN-family files

SMALL = {"num_feat": 8, "num_block": 2, "num_grow_ch": 4}


def _esrgan_trunk_names(state: dict) -> dict:
    """BasicSR names -> the original ESRGAN repository's RRDB_trunk / trunk_conv / upconv / HRconv."""
    out = {}
    for k, v in state.items():
        k = "RRDB_trunk." + k[5:] if k.startswith("body.") else k
        k = k.replace(".rdb", ".RDB").replace("conv_body", "trunk_conv").replace("conv_up", "upconv")
        out[k.replace("conv_hr", "HRconv")] = v
    return out


def _esrgan_sequential_names(state: dict, nb: int) -> dict:
    """BasicSR names -> old ESRGAN's `model.N` (x4: model.3 / 6 up, 8 HR, 10 last)."""
    top = {"conv_first": "model.0", "conv_body": f"model.1.sub.{nb}", "conv_up1": "model.3",
           "conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}
    out = {}
    for k, v in state.items():
        p = k.split(".")
        out[f"model.1.sub.{p[1]}.RDB{p[2][-1]}.{p[3]}.0.{p[4]}" if p[0] == "body" else f"{top[p[0]]}.{p[1]}"] = v
    return out


LAYOUTS = {  # file name -> (scale, blocks, how it is saved)
    "RealESRGAN_x4plus.pth": (4, 2, lambda s: {"params_ema": s}),
    "RealESRGAN_x2plus.pth": (2, 2, lambda s: {"params_ema": s}),  # pixel-unshuffle: 12 input channels
    "RealESRGAN_x4plus_anime_6B.pth": (4, 6, lambda s: {"params_ema": s}),
    "net_g_5000.pth": (4, 2, lambda s: {"params": s}),
    "RRDB_ESRGAN_x4.pth": (4, 2, _esrgan_trunk_names),
    "RRDB_ESRGAN_x4_old_arch.pth": (4, 2, lambda s: _esrgan_sequential_names(s, 2)),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_esrgan_family_files_load_and_compute_as_their_network(tmp_path, name):
    scale, blocks, save_as = LAYOUTS[name]
    torch.manual_seed(0)
    ref = RRDBNet(scale=scale, **{**SMALL, "num_block": blocks}).eval()
    torch.save(save_as(ref.state_dict()), tmp_path / name)
    model, meta = load_checkpoint(tmp_path / name)
    assert meta["arch"] == "rrdbnet" and meta["scale"] == scale and meta["kwargs"]["num_block"] == blocks
    x = torch.rand(1, 3, 12, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


def test_ema_weights_win_over_params(tmp_path):
    a, b = RRDBNet(**SMALL).state_dict(), RRDBNet(**SMALL).state_dict()
    torch.save({"params": a, "params_ema": b}, tmp_path / "net_g.pth")
    state = load_checkpoint(tmp_path / "net_g.pth")[0].state_dict()
    assert torch.equal(state["conv_first.weight"], b["conv_first.weight"])


@pytest.mark.parametrize("disc", [VGGStyleDiscriminator(num_feat=4), UNetDiscriminatorSN(num_feat=4)])
def test_a_discriminator_handed_to_image_is_one_line(tmp_path, capsys, disc):
    torch.save({"params": disc.state_dict()}, tmp_path / "net_d.pth")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    assert cli.main(["image", str(tmp_path / "a.png"), "--model", str(tmp_path / "net_d.pth"),
                     "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "discriminator" in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_interpolate_original_esrgan_psnr_and_gan_files(tmp_path, capsys):
    """ESRGAN's net_interp.py use: RRDB_PSNR_x4.pth and RRDB_ESRGAN_x4.pth, in either layout."""
    torch.manual_seed(1)
    psnr, gan = RRDBNet(**SMALL).state_dict(), RRDBNet(**SMALL).state_dict()
    torch.save(_esrgan_sequential_names(psnr, 2), tmp_path / "RRDB_PSNR_x4.pth")
    torch.save(_esrgan_trunk_names(gan), tmp_path / "RRDB_ESRGAN_x4.pth")
    out = tmp_path / "interp_08.safetensors"
    assert cli.main(["interpolate", str(tmp_path / "RRDB_PSNR_x4.pth"), str(tmp_path / "RRDB_ESRGAN_x4.pth"),
                     "--alpha", "0.8", "-o", str(out)]) == 0
    blended, _ = read_state(out)
    for k in ("conv_first.weight", "body.1.rdb3.conv5.bias", "conv_body.weight", "conv_hr.weight"):
        torch.testing.assert_close(blended[k], 0.2 * psnr[k] + 0.8 * gan[k])
    # a discriminator is no partner for a generator: one line
    torch.save({"params": VGGStyleDiscriminator(num_feat=4).state_dict()}, tmp_path / "net_d.pth")
    capsys.readouterr()
    assert cli.main(["interpolate", str(tmp_path / "RRDB_PSNR_x4.pth"), str(tmp_path / "net_d.pth"),
                     "--alpha", "0.5", "-o", str(tmp_path / "x.safetensors")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()


def test_lpips_on_images_too_small_for_the_backbone_is_one_line(tmp_path, capsys):
    """AlexNet's taps leave no pixel under 31x31 (VGG16's under 16x16): a max-pool traceback before."""
    alex = _lins(tmp_path / "alex.pth", lpips.CHANNELS["alex"])
    backbone = _torchvision_file(tmp_path / "alexnet-owt-7be5be79.pth", "alexnet")
    metric = lpips.load_lpips(alex, backbone)
    assert metric.min_side == 31
    assert metric(torch.rand(1, 3, 31, 40), torch.rand(1, 3, 31, 40)).shape == (1,)
    with pytest.raises(UserError, match="at least 31x31 pixels after the border crop, got 40x30"):
        metric(torch.rand(1, 3, 30, 40), torch.rand(1, 3, 30, 40))
    vgg = lpips.load_lpips(_lins(tmp_path / "vgg.pth", lpips.CHANNELS["vgg"]),
                           _torchvision_file(tmp_path / "vgg16-397923af.pth", "vgg16"))
    assert vgg.min_side == 16
    folder = tmp_path / "d"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "tiny.png")
    assert cli.main(["eval", "--scale", "2", "--data", str(folder), "--lpips", "--lpips-weights", alex,
                     "--lpips-backbone", backbone]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tiny.png" in err[0] and "LPIPS (alex) needs" in err[0], err

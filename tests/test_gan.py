"""ESRGAN: the adversarial training step and its exact resume, perceptual feature networks, LPIPS,
coarse-dropout degradation, interpolation of checkpoints, `<name>_sr` outputs."""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upsample import cli
from upsample.data import pairs as data, degrade
from upsample.models import features
from upsample.evaluation import lpips
from upsample.models.checkpoint import load_checkpoint, read_state, save_checkpoint
from upsample.training.config import load_config
from upsample.errors import UserError
from upsample.training.losses import PerceptualLoss, relativistic_loss
from upsample.models.registry import create_model
from isolation import in_child_process

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
T91 = SHARED / "train" / "T91"
needs_t91 = pytest.mark.skipif(not T91.is_dir(), reason="needs ../shared/datasets/train/T91")
TINY = str(ROOT / "configs" / "esrgan-tiny.toml")
BASE = [f"data.train=[{json.dumps(str(T91))}]", "data.max_images=8", "val.max_images=1", "val.crop=48"]


def _train(run_dir, *extra, sets=()):
    args = ["train", TINY, "--run-dir", str(run_dir), "--device", "cpu", *extra]
    for s in [*BASE, *sets]:
        args += ["--set", s]
    return cli.main(args)


def _log(run_dir):
    recs = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if "loss" in r]


# ------------------------------------------------------------------------- adversarial training

GAN_SETS = ("train.steps=6", "train.ckpt_every=2", "train.log_every=1", "val.every=3", "train.ema=0.9",
            "sched.milestones=[2]", "gan.sched.milestones=[3]")


@needs_t91
@in_child_process
def test_gan_training_logs_both_losses_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_train import _stop_at

    assert _train(tmp_path / "a", sets=GAN_SETS) == 0
    assert "D loss" in capsys.readouterr().out
    ref = _log(tmp_path / "a")
    assert [r["step"] for r in ref] == list(range(1, 7))
    terms = ("loss", "pixel", "perceptual", "g_adv", "d_loss", "d_real", "d_fake", "lr", "lr_d")
    assert all(all(np.isfinite(r[k]) for k in terms) for r in ref)
    assert [r["lr"] for r in ref] == pytest.approx([2e-4, 2e-4, 1e-4, 1e-4, 1e-4, 1e-4])
    assert [r["lr_d"] for r in ref] == pytest.approx([2e-4, 2e-4, 2e-4, 1e-4, 1e-4, 1e-4])
    tags = EventAccumulator(str(tmp_path / "a" / "tb")).Reload().Tags()["scalars"]
    assert {"train/loss", "train/d_loss", "train/g_adv", "train/perceptual", "train/d_real"} <= set(tags)
    state = torch.load(tmp_path / "a" / "last_state.pt", weights_only=False)
    assert set(state["gan"]) == {"model", "opt", "sched", "scaler"} and state["gan"]["opt"]["state"]

    # SIGTERM while step 4 runs: saved at step 4, exit 143; --resume continues bit for bit
    with monkeypatch.context() as m:
        _stop_at(m, 3, lambda: os.kill(os.getpid(), signal.SIGTERM))
        assert _train(tmp_path / "b", sets=GAN_SETS) == 128 + signal.SIGTERM
    assert torch.load(tmp_path / "b" / "last_state.pt", weights_only=False)["step"] == 4
    assert _train(tmp_path / "b", "--resume") == 0
    got = _log(tmp_path / "b")
    assert [{k: r[k] for k in terms} for r in got] == [{k: r[k] for k in terms} for r in ref]
    a, b = (read_state(d / "last.safetensors")[0] for d in (tmp_path / "a", tmp_path / "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    da, db = (torch.load(d / "last_state.pt", weights_only=False)["gan"]["model"]
              for d in (tmp_path / "a", tmp_path / "b"))
    assert all(torch.equal(da[k], db[k]) for k in da)
    # TensorBoard keeps the checkpoint's step 4 across the resume (purge_step was 4: lost)
    steps = [e.step for e in EventAccumulator(str(tmp_path / "b" / "tb")).Reload().Scalars("train/loss")]
    assert sorted(set(steps)) == list(range(1, 7))


@needs_t91
def test_extending_a_gan_run_extends_both_cosines(tmp_path):
    """--resume --set train.steps=8 of a 4-step run: the discriminator's cosine decays to step 8
    too (it kept its old end, and its lr climbed back to the base after it)."""
    cosine = ["train.log_every=1", "val.every=0", "sched.name=\"cosine\"", "sched.eta_min=1e-6",
              "gan.sched.name=\"cosine\"", "gan.sched.eta_min=1e-6"]
    assert _train(tmp_path / "c", sets=["train.steps=4", *cosine]) == 0
    assert _train(tmp_path / "c", "--resume", sets=["train.steps=8", *cosine]) == 0
    log = _log(tmp_path / "c")
    after = [r["lr_d"] for r in log if r["step"] > 4]
    assert after == sorted(after, reverse=True) and after == pytest.approx([r["lr"] for r in log if r["step"] > 4])


@needs_t91
def test_stage_two_starts_from_the_psnr_model(tmp_path, capsys):
    psnr = ["gan.discriminator=\"\"", "loss.adversarial_weight=0", "loss.perceptual.weight=0",
            "loss.pixel_weight=1", "train.steps=2", "val.every=0"]
    assert _train(tmp_path / "psnr", sets=psnr) == 0
    ckpt = tmp_path / "psnr" / "last.safetensors"
    assert "pixel" not in _log(tmp_path / "psnr")[0]  # a plain run logs as before
    capsys.readouterr()
    assert _train(tmp_path / "gan", sets=["train.steps=1", "val.every=0", f"train.init={json.dumps(str(ckpt))}"]) == 0
    n = len(read_state(ckpt)[0])
    assert f"initialised {n}/{n} tensors" in capsys.readouterr().err
    assert _train(tmp_path / "x", sets=["train.init=\"runs/none/best.safetensors\""]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.init" in err and "--init" in err
    # a GAN config cannot resume a run that had no discriminator
    assert _train(tmp_path / "psnr", "--resume", sets=["train.steps=3", "gan.discriminator=esrgan-discriminator",
                                                        "loss.adversarial_weight=0.005"]) == 2
    assert "a resumed run keeps its" in capsys.readouterr().err  # its loss and gan settings


@pytest.mark.parametrize("sets,message", [
    (["loss.adversarial_weight=0"], "gan.discriminator"),
    (["gan.discriminator=\"\""], "loss.adversarial_weight"),
    (["loss.perceptual.network=vgg19"], "vgg19-dcb9e9d4.pth"),
    (["loss.perceptual.network=vgg19", "loss.perceptual.weights=/nonexistent/vgg19.pth"], "not found"),
    (["loss.perceptual.layer=conv5_4"], "not a layer of efficientnet-lite0"),
    (["data.patch_size=64"], "set data.patch_size = 128"),
    (["gan.discriminator=rrdbnet-x4"], "is not a discriminator"),
    (["model.kwargs.num_in_ch=1", "model.kwargs.num_out_ch=1"], "need an RGB model"),
    (["degrade.dropout_size=[4, 2]"], "degrade.dropout_size must be a range"),
])
def test_bad_gan_configs_give_one_line(tmp_path, capsys, sets, message):
    if not T91.is_dir():
        pytest.skip("needs ../shared/datasets/train/T91")
    assert _train(tmp_path / "run", sets=sets) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_esrgan_recipe_follows_the_paper():
    cfg = load_config(ROOT / "configs" / "esrgan-x4.toml")
    assert (cfg.loss.pixel_weight, cfg.loss.perceptual.weight, cfg.loss.adversarial_weight) == (0.01, 1.0, 0.005)
    assert (cfg.optim.lr, cfg.gan.optim.lr, cfg.optim.betas) == (1e-4, 1e-4, [0.9, 0.99])
    assert cfg.sched.milestones == cfg.gan.sched.milestones == [50000, 100000, 200000, 300000]
    assert (cfg.gan.discriminator, cfg.data.patch_size, cfg.train.steps) == ("esrgan-discriminator", 128, 400000)
    assert cfg.train.init == "runs/rrdbnet-x4-psnr/best.safetensors"
    psnr = load_config(ROOT / "configs" / "rrdbnet-x4-psnr.toml")
    assert psnr.model == cfg.model


def test_relativistic_loss():
    z = torch.zeros(4, 1)
    assert relativistic_loss(z, z, True).item() == pytest.approx(np.log(2))
    real, fake = torch.full((4, 1), 5.0), torch.full((4, 1), -5.0)
    assert relativistic_loss(real, fake, True) < 1e-4 and relativistic_loss(fake, real, False) < 1e-4
    assert relativistic_loss(real, fake, False) > 9


# ------------------------------------------------------------------------- feature networks


def _torchvision_file(tmp_path, arch):
    """Random weights in torchvision's state-dict format (features + a classifier to ignore)."""
    torch.manual_seed(0)
    seq, _ = features.torchvision_features(arch)
    state = {f"features.{k}": v for k, v in seq.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(3, 3)
    path = tmp_path / f"{arch}.pth"
    torch.save(state, path)
    return path, seq


def test_vgg19_conv5_4_before_activation_from_a_torchvision_file(tmp_path):
    path, seq = _torchvision_file(tmp_path, "vgg19")
    ext = features.feature_extractor("vgg19", "", str(path))
    assert ext.layer == "conv5_4" and isinstance(ext.body[-1], torch.nn.Conv2d) and len(ext.body) == 35
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    f = ext(x)
    mean, std = torch.tensor(features.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(features.IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(f, seq[:35]((x - mean) / std))
    assert f.shape == (1, 512, 2, 2) and (f < 0).any()  # before the ReLU
    assert not any(p.requires_grad for p in ext.parameters())
    f.sum().backward()
    assert x.grad.abs().sum() > 0
    relu = features.feature_extractor("vgg19", "relu5_4", str(path))
    assert (relu(x) >= 0).all()
    # wrong file: one clear error
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="not a torchvision vgg19 state dict"):
        features.feature_extractor("vgg19", "", str(tmp_path / "bad.pth"))


def test_efficientnet_lite0_default_is_installed_frozen_and_imagenet_trained():
    ext = features.feature_extractor("efficientnet-lite0")
    assert ext.layer == "blocks.10" and features.efficientnet_weights_path() is not None
    ext.train()
    assert not ext.training and not any(p.requires_grad for p in ext.parameters())
    x = torch.rand(2, 3, 64, 64)
    assert ext(x).shape == (2, 112, 4, 4)
    loss = PerceptualLoss("efficientnet-lite0")
    pred = x.clone().requires_grad_(True)
    assert loss(pred, x).item() == 0
    loss(pred + 0.1 * torch.rand_like(x), x).backward()
    assert pred.grad.abs().sum() > 0
    butterfly = SHARED / "benchmark" / "Set5" / "butterfly.png"
    if butterfly.is_file():  # the ImageNet classifier sees a monarch (class 323)
        img = torch.from_numpy(np.array(Image.open(butterfly).convert("RGB"))).permute(2, 0, 1)[None]
        x = degrade.imresize(img.double() / 255, size=(224, 224)).float()
        with torch.no_grad():
            assert ext.body((x - ext.mean) / ext.std).argmax().item() == 323


# ------------------------------------------------------------------------- LPIPS


def _lpips_files(tmp_path, net):
    path, seq = _torchvision_file(tmp_path, lpips.BACKBONE[net])
    g = torch.Generator().manual_seed(1)
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(lpips.CHANNELS[net])}
    torch.save(lins, tmp_path / f"{net}_lin.pth")
    return str(tmp_path / f"{net}_lin.pth"), str(path), seq, lins


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_formula_with_weights_in_the_published_formats(tmp_path, net):
    lin_path, backbone, seq, lins = _lpips_files(tmp_path, net)
    metric = lpips.load_lpips(lin_path, backbone)
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    d = metric(x, y)
    assert d.shape == (2,) and (d > 0).all()
    torch.testing.assert_close(metric(y, x), d)
    assert metric(x, x).abs().max() == 0
    # by hand: taps at the ReLUs after the named convs, unit-normalised over channels
    taps = {"alex": [1, 4, 7, 9, 11], "vgg": [3, 8, 15, 22, 29]}[net]
    shift, scale = torch.tensor(lpips.SHIFT).view(1, 3, 1, 1), torch.tensor(lpips.SCALE).view(1, 3, 1, 1)

    def feats(v):
        h, out = (2 * v - 1 - shift) / scale, []
        for i, layer in enumerate(seq[:taps[-1] + 1]):
            h = layer(h)
            if i in taps:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out
    want = sum(((a - b) ** 2 * lins[f"lin{i}.model.1.weight"]).sum(1).mean((1, 2))
               for i, (a, b) in enumerate(zip(feats(x), feats(y))))
    torch.testing.assert_close(d, want)


def test_eval_lpips_and_its_missing_weights(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(lpips.ENV_WEIGHTS, raising=False)
    monkeypatch.delenv(lpips.ENV_BACKBONE, raising=False)
    folder = tmp_path / "d"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    args = ["eval", "--scale", "2", "--data", str(folder), "--lpips"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "LPIPS is unavailable" in err
    assert "--lpips-weights" in err and "--lpips-backbone" in err
    lin_path, backbone, _, _ = _lpips_files(tmp_path, "alex")
    monkeypatch.setenv(lpips.ENV_WEIGHTS, lin_path)
    assert cli.main([*args, "--lpips-backbone", backbone, "--json", "-"]) == 0
    res = json.loads(capsys.readouterr().out)["datasets"]["d"]
    assert res["n"] == 2 and res["lpips"] > 0 and res["psnr"] > 0
    assert cli.main([*args, "--lpips-backbone", backbone]) == 0
    assert "LPIPS" in capsys.readouterr().out.splitlines()[1]
    with pytest.raises(UserError, match="not LPIPS v0.1 linear weights"):
        lpips.load_lpips(backbone, backbone)


# ------------------------------------------------------------------------- coarse dropout


def test_coarse_dropout_is_deterministic_and_optional(tmp_path):
    a = degrade.dropout_boxes(3, (2, 4), 16, 16, torch.Generator().manual_seed(5))
    assert a == degrade.dropout_boxes(3, (2, 4), 16, 16, torch.Generator().manual_seed(5))
    assert len(a) == 3 and all(2 <= hh <= 4 and 2 <= ww <= 4 and y0 + hh <= 16 and x0 + ww <= 16
                               for y0, x0, hh, ww in a)
    assert degrade.dropout_boxes(1, (40, 40), 16, 12) == [(0, 0, 16, 12)]  # clipped to the image
    x = torch.rand(1, 3, 16, 12) + 0.5
    assert torch.equal(data.black_out(x, np.array([[[0, 0, 16, 12]]])), torch.zeros_like(x))
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(1, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    files = sorted(tmp_path.glob("*.png"))

    def batch(**kw):
        spec = data.PairSpec(patch=32, scales=[4], y_channel=False, pre_upsample=False, **kw)
        return data.PairDataset(files, spec, seed=3).make_batch(list(range(8)), 4)
    plain, off = batch(), batch(dropout_prob=0.0, dropout_holes=(2, 2))
    assert torch.equal(plain[0], off[0]) and torch.equal(plain[1], off[1])  # off: samples unchanged
    on, again = batch(dropout_prob=1.0), batch(dropout_prob=1.0)
    assert torch.equal(on[0], again[0]) and torch.equal(on[1], plain[1])
    holes = (on[0] == 0).all(1)  # black in every channel, only there
    assert holes.flatten(1).any(1).all() and torch.equal(on[0][~holes.unsqueeze(1).expand_as(on[0])],
                                                          plain[0][~holes.unsqueeze(1).expand_as(on[0])])


# ------------------------------------------------------------------------- interpolation, _sr


def test_interpolate_rrdbnet_ends_exact_and_a_mid_value_upscales(tmp_path, capsys):
    small = {"num_feat": 8, "num_block": 1, "num_grow_ch": 8}
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        paths.append(save_checkpoint(create_model("rrdbnet-x4", **small), tmp_path / f"{seed}.safetensors"))
    for alpha in ("0", "1", "0.8"):
        assert cli.main(["interpolate", *map(str, paths), "--alpha", alpha, "-o", str(tmp_path / f"i{alpha}.safetensors")]) == 0
    states = {n: read_state(tmp_path / f"{n}.safetensors")[0] for n in ("1", "2", "i0", "i1", "i0.8")}
    for end, src in (("i0", "1"), ("i1", "2")):
        assert all(torch.equal(states[end][k], states[src][k]) for k in states[src])
    k = "conv_first.weight"
    torch.testing.assert_close(states["i0.8"][k], 0.2 * states["1"][k] + 0.8 * states["2"][k])
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(src / "photo.png")
    assert cli.main(["image", str(src / "photo.png"), "--model", str(tmp_path / "i0.8.safetensors"),
                     "-o", str(tmp_path / "out"), "--suffix", "_sr"]) == 0
    out = Image.open(tmp_path / "out" / "photo_sr.png")
    assert out.size == (40, 48)
    torch.manual_seed(0)
    other = save_checkpoint(create_model("rrdbnet-x4", num_feat=16, num_block=1, num_grow_ch=8),
                            tmp_path / "other.safetensors")
    capsys.readouterr()
    assert cli.main(["interpolate", str(paths[0]), str(other), "--alpha", "0.5", "-o", str(tmp_path / "z.safetensors")]) == 2
    assert "different architectures" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "i0.8.safetensors")[1]["extra"]["interpolated"]["alpha"] == 0.8

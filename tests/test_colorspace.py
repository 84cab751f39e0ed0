"""model.colorspace: RGB <-> YCbCr / OKLab inside the network, recorded in checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upsample import cli
from upsample.data.colour import rgb_to_ycbcr, ycbcr_to_rgb
from upsample.errors import UserError
from upsample.models import colorspace, registry
from upsample.models.checkpoint import load_checkpoint
from upsample.runtime import export

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.toml")


def _rgb(dtype, seed=0):
    # a little outside [0, 1] as well: a network's output is not clamped before the conversion
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(2, 3, 32, 32, generator=g, dtype=torch.float64) * 1.2 - 0.1).to(dtype)


@pytest.mark.parametrize("to_space,to_rgb", [(rgb_to_ycbcr, ycbcr_to_rgb),
                                             (colorspace.rgb_to_oklab, colorspace.oklab_to_rgb)])
def test_conversions_round_trip(to_space, to_rgb):
    x = _rgb(torch.float64)
    assert (to_rgb(to_space(x)) - x).abs().max() < 1e-10
    x = _rgb(torch.float32)
    # float32 OKLab: a dark channel beside bright ones, in the sRGB toe (slope 12.92), carries
    # about 1.5e-5 of rounding (0.004 of a uint8 level); YCbCr stays near 1e-7
    tol = 1e-5 if to_space is rgb_to_ycbcr else 2.5e-5
    assert (to_rgb(to_space(x)) - x).abs().max() < tol


def test_oklab_matches_published_values():
    # Ottosson's published inverse matrices (bottosson.github.io/posts/oklab) agree with the
    # inverses computed from his forward ones: a typo in either would show here
    m1_inv = [[4.0767416621, -3.3077115913, 0.2309699292], [-1.2684380046, 2.6097574011, -0.3413193965],
              [-0.0041960863, -0.7034186147, 1.7076147010]]
    m2_inv = [[1, 0.3963377774, 0.2158037573], [1, -0.1055613458, -0.0638541728],
              [1, -0.0894841775, -1.2914855480]]
    np.testing.assert_allclose(colorspace.OKLAB_M1_INV, m1_inv, atol=2e-7)
    np.testing.assert_allclose(colorspace.OKLAB_M2_INV, m2_inv, atol=2e-7)
    colours = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 3, 1)
    lab = colorspace.rgb_to_oklab(colours)[0, :, :, 0].T
    # white is L = 1, a = b = 0; sRGB red is oklab(0.628 0.225 0.126) (CSS Color 4); black is 0
    np.testing.assert_allclose(lab.numpy(), [[1, 0, 0], [0.62796, 0.22486, 0.12585], [0, 0, 0]], atol=2e-4)


def test_oklab_gradients_are_finite_at_black_and_below_zero():
    x = torch.tensor([0.0, -0.05, 0.002, 0.5]).reshape(1, 1, 4, 1).expand(1, 3, 4, 1).clone()
    x.requires_grad_(True)
    colorspace.oklab_to_rgb(colorspace.rgb_to_oklab(x)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_refused_where_it_makes_no_sense(tmp_path, capsys):
    with pytest.raises(UserError, match="needs a model that takes RGB; vdsr takes Y"):
        registry.create_model("vdsr", colorspace="ycbcr")
    with pytest.raises(UserError, match="must be one of rgb, ycbcr, oklab; got 'lab'"):
        registry.create_model("espcn-rgb-x2", colorspace="lab")
    with pytest.raises(UserError, match="takes a discriminator"):
        registry.create_model("esrgan-discriminator", colorspace="oklab")
    # from a recipe: one line, exit 2 (tiny.toml's espcn-x2 works on Y)
    code = cli.main(["train", TINY, "--run-dir", str(tmp_path / "run"), "--device", "cpu",
                     "--set", "model.colorspace=oklab"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "espcn-x2 takes Y" in err[0]


def _images(folder: Path, n: int = 6, side: int = 48) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, side)[None, :, None] * np.array([1.0, 0.6, 0.3])
    for i in range(n):  # smooth colour ramps plus noise: something a model can learn a little
        img = base + rng.normal(0, 20, (side, side, 3))
        Image.fromarray(np.clip(np.roll(img, 7 * i, axis=1), 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("space", colorspace.COLORSPACES)
def test_a_tiny_model_trains_saves_and_loads_in_each_space(space, tmp_path):
    data = _images(tmp_path / "imgs")
    run = tmp_path / "run"
    sets = [f"data.train=[{json.dumps(str(data))}]", "data.max_images=0", "data.batch_size=2",
            "model.name=espcn-rgb-x2", "model.kwargs={num_feat = 8, mid_feat = 4}",
            f"model.colorspace={space}", "train.steps=1", "val.every=0", "val.crop=0"]
    args = ["train", TINY, "--run-dir", str(run), "--device", "cpu"]
    assert cli.main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    model, meta = load_checkpoint(run / "last.safetensors")
    assert meta["colorspace"] == space and model.upsample_spec.colorspace == space
    assert "colorspace = " + json.dumps(space) in (run / "config.toml").read_text()
    # the loaded model is its bare network between the two conversions
    bare = registry.build(meta["arch"], meta["kwargs"]).eval()  # the same weights in rgb
    bare.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    to_space, to_rgb = colorspace.CONVERSIONS.get(space, (lambda t: t, lambda t: t))
    with torch.no_grad():
        torch.testing.assert_close(model(x), to_rgb(bare(to_space(x))), rtol=0, atol=1e-6)
        if space != "rgb":
            assert (model(x) - bare(x)).abs().max() > 1e-3  # the conversion is really applied
    # and the conversion travels into an exported graph (ONNX Runtime vs PyTorch)
    if space == "oklab":
        assert export.export_model(model, "onnx", tmp_path / "m.onnx") < 1e-5

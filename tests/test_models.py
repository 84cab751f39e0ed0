"""Model zoo: shapes, exact parameter counts, MACs, the registry, the RGB wrapper, `upsample models`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from upsample import cli
from upsample.evaluation import metrics
from upsample.data.degrade import imresize
from upsample.errors import UserError
from upsample.models.registry import count_macs, count_params, create_model, get_spec, list_models
from upsample.inference.upscaler import ModelUpscaler
from upsample.inference.load import load_upscaler
from upsample.data.colour import rgb_to_ycbcr, ycbcr_to_rgb

EXACT_PARAMS = {"espcn-x3": 22_729, "vapsr-x2": 329_236, "vapsr-x4": 342_220, "vapsr-s-x4": 154_956,
                "rrdbnet-x4": 16_697_987,
                # catid's: conv_first 1,792 + 20 x 35,808 + conv_body 36,928 + upsampler 38,372
                "vapsr-catid-x2": 793_252}


def meta_model(name, **overrides):
    with torch.device("meta"):
        return create_model(name, **overrides)


@pytest.mark.parametrize("name", list_models())
def test_forward_shape(name):
    spec = get_spec(name)
    torch.manual_seed(0)
    model = create_model(name).eval()
    side = 8 if spec.arch == "rrdbnet" else 12
    x = torch.rand(2, spec.channels, side, side)
    with torch.no_grad():
        y = model(x)
    out = side if spec.pre_upsample else side * spec.scale
    assert y.shape == (2, spec.channels, out, out)
    assert torch.isfinite(y).all()
    assert model.upsample_spec == spec


@pytest.mark.parametrize("name,count", sorted(EXACT_PARAMS.items()))
def test_exact_param_counts(name, count):
    assert count_params(meta_model(name)) == count


def test_vdsr_and_vapsr_x3_param_counts():
    assert abs(count_params(meta_model("vdsr")) - 665_000) <= 6_650
    assert 330_000 <= count_params(meta_model("vapsr-x3")) <= 340_000


def test_vapsr_variants_structure():
    small = create_model("vapsr-s-x4")
    assert small.conv_body.groups == 2 and len(small.body) == 11
    plain = create_model("vapsr-dense3x3-x2")
    att = plain.body[0].atten_branch
    assert att.depthwise.kernel_size == (3, 3) and att.depthwise_dilated.dilation == (1, 1)
    assert att.depthwise.groups == 1 and att.depthwise_dilated.groups == 1  # dense, not depth-wise
    official = create_model("vapsr-x2").body[0].atten_branch
    assert official.depthwise.kernel_size == (5, 5) and official.depthwise_dilated.dilation == (3, 3)
    assert "body.19.atten_branch.depthwise_dilated.weight" in create_model("vapsr-x2").state_dict()


def test_old_dense_names_are_aliases():
    assert get_spec("vapsr-3x3-x2") == get_spec("vapsr-dense3x3-x2")
    assert create_model("vapsr-3x3-x4").upsample_spec.name == "vapsr-dense3x3-x4"
    assert "vapsr-3x3-x2" not in list_models() and "vapsr-3x3-x2" in list_models(aliases=True)
    assert not create_model("vapsr-dense3x3-x2").signed_io  # the catid variant is another model
    assert create_model("vapsr-catid-x2").body[0].proj_1.kernel_size == (3, 3)


def test_macs_match_hand_count_for_espcn():
    per_pixel = 1 * 64 * 25 + 64 * 32 * 9 + 32 * 9 * 9  # the three convolutions of espcn-x3
    assert count_macs(meta_model("espcn-x3"), 256) == per_pixel * 256 * 256


def test_overrides_and_unknown_names():
    assert len(create_model("rrdbnet-x4", num_block=2).body) == 2
    with pytest.raises(UserError, match="vapsr-x4"):
        get_spec("vapsr-x5")
    with pytest.raises(UserError, match="upsample models"):
        get_spec("totally-unrelated")


def test_discriminators_registered_apart():
    assert not set(list_models()) & set(list_models("discriminator"))
    assert {"esrgan-discriminator", "realesrgan-unet-discriminator"} <= set(list_models("discriminator"))
    vgg = create_model("esrgan-discriminator").eval()
    assert vgg(torch.rand(2, 3, 128, 128)).shape == (2, 1)
    unet = create_model("realesrgan-unet-discriminator").eval()
    assert unet(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)
    assert "conv1.weight_orig" in unet.state_dict()  # spectral norm, BasicSR names


def test_models_command_json(capsys):
    assert cli.main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list_models(aliases=True)
    assert {r["name"]: r.get("alias_of") for r in rows}["vapsr-3x3-x2"] == "vapsr-dense3x3-x2"
    for r in rows:
        assert set(r) - {"alias_of"} == {"name", "scale", "params", "macs", "input", "weights"}
        assert r["input"] in ("y", "rgb") and isinstance(r["macs"], int) and r["macs"] > 0
        assert r["weights"] is None or r["weights"].endswith(f"{r['name']}.safetensors")
    by_name = {r["name"]: r for r in rows}
    assert by_name["vdsr"]["scale"] is None and by_name["espcn-x3"]["input"] == "y"
    assert all(by_name[n]["params"] == c for n, c in EXACT_PARAMS.items())


def test_ycbcr_matches_metrics_and_round_trips():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].double() / 255
    ycc = rgb_to_ycbcr(x)
    np.testing.assert_allclose(ycc[0, 0].numpy() * 255, metrics.rgb_to_y(img), atol=1e-9)
    torch.testing.assert_close(ycbcr_to_rgb(ycc), x, atol=1e-12, rtol=0)


def test_y_wrapper_with_zero_residual_vdsr_is_bicubic(capsys):
    """VDSR whose last conv outputs zero returns its input, so the RGB upscaler must equal
    bicubic on RGB (YCbCr is affine and imresize linear)."""
    up = load_upscaler("vdsr", scale=3, backend="torch")  # the torch model is edited below
    with torch.no_grad():
        up.model.conv_last.weight.zero_()
        up.model.conv_last.bias.zero_()
    x = torch.rand(1, 3, 10, 13)
    out = up(x)
    assert out.shape == (1, 3, 30, 39)
    torch.testing.assert_close(out, imresize(x, 3), atol=1e-5, rtol=0)


def test_rrdbnet_x2_pads_odd_sizes():
    tiny = create_model("rrdbnet-x2", num_block=1).eval()  # pixel-unshuffles by 2
    up = ModelUpscaler(tiny, tiny, scale=2, name="tiny", backend="torch", device=torch.device("cpu"))
    x = torch.rand(1, 3, 7, 9)
    assert up(x).shape == (1, 3, 14, 18)
    x_even = torch.nn.functional.pad(x, (0, 1, 0, 1), mode="reflect")
    torch.testing.assert_close(up(x), tiny(x_even)[..., :14, :18])


def test_scale_mismatch_is_a_user_error():
    with pytest.raises(UserError, match="x3 model"):
        load_upscaler("espcn-x3", scale=2)
    with pytest.raises(UserError, match="any scale"):
        load_upscaler("vdsr")
    with pytest.raises(UserError, match="backend"):
        load_upscaler("espcn-x3", scale=3, backend="tensorrt")


def test_cli_unknown_model_one_line(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    from PIL import Image
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "d" / "a.png")
    assert cli.main(["eval", "--model", "espcn-x9", "--scale", "3", "--data", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "espcn-x" in err and "did you mean" in err


def test_suggestions_name_shipped_models_first():
    from upsample.errors import UserError
    from upsample.models import registry
    with pytest.raises(UserError) as exc:
        registry.get_spec("espcn-rgb-x")
    names = str(exc.value).split("did you mean ")[1].split("?")[0].split(", ")
    shipped = [n for n in names if registry.weights_path(n)]
    assert shipped and names[:len(shipped)] == shipped


@pytest.mark.parametrize("dilation", [1, 3])
def test_vapsr_depthwise_backward_equals_torchs(dilation):
    """VapSR's depth-wise convolutions in channels_last CPU training take their input gradient
    from the turned kernel (`vapsr._DepthwiseSame`): the same output and gradients as torch's."""
    from upsample.models.vapsr import depthwise
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 16, 5, padding=2 * dilation, dilation=dilation, groups=16)
    x = torch.randn(2, 16, 13, 11).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(2, 16, 13, 11)
    out = depthwise(conv, x)
    assert out.grad_fn is not None and "DepthwiseSame" in type(out.grad_fn).__name__
    out.backward(g)
    ours = [x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone()]
    x.grad = None
    conv.zero_grad()
    ref = conv(x)
    ref.backward(g)
    assert torch.equal(out, ref)
    for a, b in zip(ours, [x.grad, conv.weight.grad, conv.bias.grad]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # inference and export: torch's own convolution
        assert depthwise(conv, x).grad_fn is None


@pytest.mark.parametrize("dilation", [1, 3])
def test_vapsr_depthwise_under_bf16_autocast_equals_torchs(dilation):
    """Under CPU bf16 autocast the depth-wise convolution also goes through `_DepthwiseSame`:
    the same bf16 output as autocast's own convolution, gradients in fp32 close to it."""
    from upsample.models.vapsr import depthwise
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 16, 5, padding=2 * dilation, dilation=dilation, groups=16)
    x = torch.randn(2, 16, 13, 11).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(2, 16, 13, 11)
    results = []
    for ours in (True, False):
        x.grad = None
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = depthwise(conv, x) if ours else conv(x)
        assert ("DepthwiseSame" in type(out.grad_fn).__name__) == ours and out.dtype == torch.bfloat16
        out.float().backward(g)
        results.append([out.detach().float(), x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone()])
    assert conv.weight.grad.dtype == torch.float32
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1:], results[1][1:]):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dilation", [1, 3])
def test_tap_weight_grads_equal_onednn_s(dtype, dilation):
    """The per-tap form the trainer compiles gives oneDNN's weight and bias gradients (summed
    in fp32, returned in the weight's dtype); `depthwise_weight_grads` puts it in the backward."""
    from upsample.models import vapsr
    torch.manual_seed(0)
    x, grad = (torch.randn(3, 8, 12, 10).to(dtype).contiguous(memory_format=torch.channels_last) for _ in "ab")
    weight, pad, dil = torch.randn(8, 1, 5, 5), (2 * dilation, 2 * dilation), (dilation, dilation)
    taps = vapsr.tap_weight_grads(grad, x, weight, pad, dil)
    native = vapsr.native_weight_grads(grad, x, weight, pad, dil)
    assert all(t.dtype == torch.float32 for t in taps + native)
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    for a, b in zip(taps, native):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * 10)
    calls = []

    def counted(*args):
        calls.append(1)
        return vapsr.tap_weight_grads(*args)

    conv = torch.nn.Conv2d(8, 8, 5, padding=pad, dilation=dil, groups=8)
    with vapsr.depthwise_weight_grads(counted):
        vapsr.depthwise(conv, x.float().requires_grad_()).sum().backward()
    assert calls == [1] and vapsr._weight_grads is vapsr.native_weight_grads


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None, reason="no C++ compiler")
def test_compiled_tap_weight_grads_equal_onednn_s():
    """What `train.compile = "auto"` uses on the CPU: the compiled kernel, for both of VapSR's
    layer shapes (plain and dilated), against oneDNN's gradients."""
    from upsample.models import vapsr
    from upsample.training import speed
    torch.manual_seed(0)
    x, grad = (torch.randn(2, 8, 12, 10).contiguous(memory_format=torch.channels_last) for _ in "ab")
    kernel = speed._compiled_tap_grads()
    for dilation in (1, 3):
        weight, pad, dil = torch.randn(8, 1, 5, 5), (2 * dilation, 2 * dilation), (dilation, dilation)
        for a, b in zip(kernel(grad, x, weight, pad, dil), vapsr.native_weight_grads(grad, x, weight, pad, dil)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    assert kernel.compiled is not None  # it compiled (no fallback)


def test_counts_under_one_are_refused_but_float_weights_of_zero_build():
    """num_feat = 0 built and then failed at the first step; a TOML 0 for a float weight
    (joint's rate_weight, clean_prob) is an int there and must still build."""
    from upsample.errors import UserError
    from upsample.models import registry
    with pytest.raises(UserError, match="num_feat must be >= 1"):
        registry.create_model("espcn-x2", num_feat=0)
    registry.build("joint", {"scale": 2, "num_in_ch": 1, "rate_weight": 0, "clean_prob": 0})

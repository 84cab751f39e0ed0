"""Checkpoints: our safetensors round trip, ecosystem state dicts, detection, errors, interpolation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from upsample import cli
from upsample.models.checkpoint import interpolate_checkpoints, load_checkpoint, read_state, save_checkpoint
from upsample.errors import UserError
from upsample.models.registry import create_model, full_kwargs, get_spec, list_models
from upsample.models import discriminator, downscaler, espcn, registry, rrdbnet, vapsr, vdsr

# RRDBNet has 16.7M parameters: where a test only needs the structure, 2 blocks stand for 23.
SMALL = {"rrdbnet": {"num_block": 2}}


def small_model(name, seed=0):
    torch.manual_seed(seed)
    return create_model(name, **SMALL.get(get_spec(name).arch, {})).eval()


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def tiny_input(model, side=8):
    return torch.rand(1, model.upsample_spec.channels, side, side, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", list_models())
def test_safetensors_round_trip_bit_exact(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name)  # the full registered model, RRDBNet included
    path = save_checkpoint(model, tmp_path / f"{name}.safetensors", config={"lr": 1e-3},
                           extra={"eval": {"Set5": 30.0}})
    loaded, meta = load_checkpoint(path)
    assert same_state(model, loaded)
    assert meta["name"] == name and meta["arch"] == get_spec(name).arch
    assert meta["config"] == {"lr": 1e-3} and meta["extra"] == {"eval": {"Set5": 30.0}}
    assert (meta["scale"], meta["input"]) == (get_spec(name).scale, get_spec(name).input)
    assert not list(tmp_path.glob("*.part"))


def test_fp16_storage(tmp_path):
    model = small_model("vapsr-x2")
    a = save_checkpoint(model, tmp_path / "a.safetensors")
    b = save_checkpoint(model, tmp_path / "b.safetensors", fp16=True)
    assert b.stat().st_size < 0.6 * a.stat().st_size
    loaded, meta = load_checkpoint(b)
    assert meta["dtype"] == "float16"
    w, w16 = model.conv_first.weight, loaded.conv_first.weight
    assert w16.dtype == torch.float32 and torch.equal(w16, w.half().float())


@pytest.mark.parametrize("name", list_models())
def test_plain_state_dict_is_detected(name, tmp_path):
    """A bare state dict (no metadata) rebuilds the same architecture and output (our RRDBNet x3
    has ESRGAN x2's tensors: the scale asked for tells them apart)."""
    model = small_model(name)
    torch.save(model.state_dict(), tmp_path / "m.pth")
    loaded, meta = load_checkpoint(tmp_path / "m.pth", scale=3 if name == "rrdbnet-x3" else None)
    assert meta["source"] == "detected" and meta["arch"] == get_spec(name).arch
    assert full_kwargs(meta["arch"], meta["kwargs"]) == full_kwargs(meta["arch"], model.upsample_spec.kwargs)
    assert meta["name"] == (None if get_spec(name).arch in SMALL else name)
    x = tiny_input(model)
    with torch.no_grad():
        # same weights, separately built modules: oneDNN may pick other kernels (~1e-7)
        assert torch.allclose(model(x), loaded(x), atol=1e-6, rtol=0)


# Each architecture file's own recogniser, and the architecture it answers for.
ARCH_DETECTORS = {"espcn": espcn.detect, "vdsr": vdsr.detect, "vapsr": vapsr.detect,
                  "rrdbnet": rrdbnet.detect, "joint": downscaler.detect,
                  "vgg_discriminator": discriminator.detect_vgg_style,
                  "unet_discriminator_sn": discriminator.detect_unet_sn}


def meta_state(name):
    with torch.device("meta"):  # detection reads names and shapes only: allocate nothing
        return create_model(name).state_dict()


@pytest.mark.parametrize("arch", list(ARCH_DETECTORS))
def test_each_architecture_detects_its_own_state_dicts_only(arch):
    detect = ARCH_DETECTORS[arch]
    for name in list_models(None):
        kwargs = detect(meta_state(name))
        if name == "rrdbnet-x3" and arch == "rrdbnet":  # ESRGAN x2's tensors: its scale is read from metadata or asked
            kwargs = rrdbnet.at_scale(kwargs, 3)
        if get_spec(name).arch == arch:
            assert kwargs is not None, name
            assert full_kwargs(arch, kwargs) == full_kwargs(arch, get_spec(name).kwargs), name
        else:
            assert kwargs is None, name


def test_detectors_cover_every_architecture():
    assert dict(registry.DETECTORS) == ARCH_DETECTORS and set(ARCH_DETECTORS) == set(registry.ARCHS)


def to_esrgan_original(state):
    """BasicSR RRDBNet names -> the original ESRGAN repository's `model.N` names (x4)."""
    tail = {"conv_body": None, "conv_up1": "model.3", "conv_up2": "model.6", "conv_hr": "model.8",
            "conv_last": "model.10", "conv_first": "model.0"}
    n_block = len({k.split(".")[1] for k in state if k.startswith("body.")})
    out = {}
    for k, v in state.items():
        if m := re.match(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)", k):
            out[f"model.1.sub.{m[1]}.RDB{m[2]}.conv{m[3]}.0.{m[4]}"] = v
        else:
            head, p = k.rsplit(".", 1)
            out[f"{tail[head] or f'model.1.sub.{n_block}'}.{p}"] = v
    return out


def test_foreign_rrdbnet_esrgan_and_basicsr(tmp_path):
    src = small_model("rrdbnet-x4", seed=3)
    decoy = small_model("rrdbnet-x4", seed=4)
    state = src.state_dict()
    torch.save(to_esrgan_original(state), tmp_path / "old.pth")
    torch.save({"params": decoy.state_dict(), "params_ema": state}, tmp_path / "ema.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth")
    x = tiny_input(src)
    with torch.no_grad():
        want = src(x)
        for f in ("old.pth", "ema.pth", "ddp.pth"):
            model, meta = load_checkpoint(tmp_path / f)
            assert meta["kwargs"]["num_block"] == 2 and meta["scale"] == 4, f
            assert torch.equal(model(x), want), f


def test_one_upsampling_conv_is_esrgans_x2_and_our_x3_keeps_its_scale(tmp_path):
    """ESRGAN's and BSRGAN's x2 files have one nearest x2 + conv (BSRGAN's RRDB_trunk names here):
    read as x2, run as their forward does (they were read as x3: 3x the size, the wrong net).
    `--scale 3` reads such tensors as our x3; a bare x3 model saved keeps x3."""
    torch.manual_seed(5)
    net = rrdbnet.RRDBNet(scale=2, unshuffle_input=False, num_block=2).eval()
    names = [(r"^body\.", "RRDB_trunk."), (r"\.rdb(\d)\.", r".RDB\1."), (r"^conv_body\.", "trunk_conv."),
             (r"^conv_up1\.", "upconv1."), (r"^conv_hr\.", "HRconv.")]
    bsrgan = {}
    for k, v in net.state_dict().items():
        for a, b in names:
            k = re.sub(a, b, k)
        bsrgan[k] = v
    assert "conv_up2.weight" not in net.state_dict()
    torch.save(bsrgan, tmp_path / "BSRGANx2.pth")
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():  # BSRGAN's forward at sf=2
        lrelu = torch.nn.functional.leaky_relu
        feat = net.conv_first(x)
        feat = feat + net.conv_body(net.body(feat))
        feat = lrelu(net.conv_up1(torch.nn.functional.interpolate(feat, scale_factor=2.0)), 0.2)
        want = net.conv_last(lrelu(net.conv_hr(feat), 0.2))
        model, meta = load_checkpoint(tmp_path / "BSRGANx2.pth")
        assert meta["scale"] == 2 and torch.allclose(model(x), want, atol=1e-6)
        model3, meta3 = load_checkpoint(tmp_path / "BSRGANx2.pth", scale=3)
        assert meta3["scale"] == 3 and model3(x).shape[-2:] == (30, 36)
    assert get_spec("rrdbnet-x2").pad_multiple == 2 and model.upsample_spec.pad_multiple == 1
    save_checkpoint(rrdbnet.RRDBNet(scale=3, num_block=2), tmp_path / "bare3.safetensors")
    assert load_checkpoint(tmp_path / "bare3.safetensors")[1]["scale"] == 3
    # the commands that take --scale read such a file at it too (export, quantize, bench)
    assert cli.main(["export", str(tmp_path / "BSRGANx2.pth"), "--scale", "3", "-o", str(tmp_path / "x3.onnx")]) == 0


def test_foreign_vapsr_beta_and_vdsr_port_names(tmp_path):
    vap = small_model("vapsr-s-x4")
    beta = {k.replace("atten_branch.depthwise_dilated", "spatial_gating_unit.conv_spatial")
             .replace("atten_branch.depthwise", "spatial_gating_unit.conv0")
             .replace("atten_branch.pointwise", "spatial_gating_unit.conv1")
             .replace("pixel_norm", "norm"): v for k, v in vap.state_dict().items()}
    torch.save({"params_ema": beta}, tmp_path / "beta.pth")
    loaded, meta = load_checkpoint(tmp_path / "beta.pth")
    assert meta["name"] == "vapsr-s-x4" and same_state(vap, loaded)

    vdsr = create_model("vdsr", bias=False)
    port = {"input.weight": vdsr.conv_first.weight, "output.weight": vdsr.conv_last.weight,
            **{f"residual_layer.{i}.conv.weight": c.weight for i, c in enumerate(vdsr.body)}}
    torch.save(port, tmp_path / "vdsr.pth")
    loaded, meta = load_checkpoint(tmp_path / "vdsr.pth")
    assert meta["kwargs"]["bias"] is False and meta["kwargs"]["num_layers"] == 20
    assert same_state(vdsr, loaded)


def test_mismatches_name_the_keys(tmp_path):
    state = small_model("vapsr-x2").state_dict()
    bad = dict(state)
    bad["conv_body.weight"] = torch.zeros(48, 48, 5, 5)
    del bad["body.3.proj_2.bias"]
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(UserError) as e:
        load_checkpoint(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "body.3.proj_2.bias" in msg and "extra.weight" in msg and "conv_body.weight" in msg
    assert "\n" not in msg

    # our metadata says espcn-x3, the tensors are another architecture's
    path = save_checkpoint(small_model("espcn-x3"), tmp_path / "e.safetensors")
    from safetensors.torch import save_file
    _, meta = read_state(path)
    save_file(small_model("espcn-rgb-x3").state_dict(), str(path), metadata=meta)
    with pytest.raises(UserError, match="shape mismatches: first_part.0.weight"):
        load_checkpoint(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    (tmp_path / "junk.pth").write_bytes(b"this is not a pickle")
    (tmp_path / "empty.pth").write_bytes(b"")
    for f in ("junk.safetensors", "junk.pth", "empty.pth"):
        with pytest.raises(UserError):
            load_checkpoint(tmp_path / f)
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "nostate.pth")
    with pytest.raises(UserError, match="no state dict"):
        load_checkpoint(tmp_path / "nostate.pth")
    torch.save({"a.weight": torch.zeros(3)}, tmp_path / "unknown.pth")
    with pytest.raises(UserError, match="cannot tell the architecture"):
        load_checkpoint(tmp_path / "unknown.pth")


class Payload:  # pickling this needs code execution on load: weights_only must refuse it
    pass


def test_pickle_with_code_is_refused(tmp_path):
    torch.save({"conv_first.weight": torch.zeros(1), "obj": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(UserError, match="more than tensors .*Payload"):
        load_checkpoint(tmp_path / "evil.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "evil.pth").read_bytes()[:100])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "cut.pth")


def write_images(folder, n=2, side=24):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_cli_errors_are_one_line(tmp_path, capsys):
    data = write_images(tmp_path / "d")
    save_checkpoint(small_model("espcn-rgb-x4"), tmp_path / "x4.safetensors")
    (tmp_path / "bad.pth").write_bytes(b"\x80\x04garbage")
    cases = [(["--model", str(tmp_path / "x4.safetensors"), "--scale", "3"], "x4 model"),
             (["--model", str(tmp_path / "bad.pth"), "--scale", "4"], "cannot read"),
             (["--model", str(tmp_path / "nope.safetensors"), "--scale", "4"], "not found")]
    for args, expect in cases:
        assert cli.main(["eval", *args, "--data", str(data)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expect in err, err
    assert cli.main(["eval", "--model", str(tmp_path / "x4.safetensors"), "--scale", "4", "--data",
                     str(data), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["datasets"]["d"]["n"] == 2


def test_interpolate(tmp_path, capsys):
    a, b = small_model("espcn-x3", seed=1), small_model("espcn-x3", seed=2)
    pa = save_checkpoint(a, tmp_path / "a.safetensors")
    torch.save({"params_ema": b.state_dict()}, tmp_path / "b.pth")
    outs = {}
    for alpha in ("0", "1", "0.25"):
        out = tmp_path / f"i{alpha}.safetensors"
        assert cli.main(["interpolate", str(pa), str(tmp_path / "b.pth"), "--alpha", alpha, "-o", str(out)]) == 0
        outs[alpha], meta = load_checkpoint(out)
        assert meta["extra"]["interpolated"]["alpha"] == float(alpha)
    assert same_state(outs["0"], a) and same_state(outs["1"], b)
    w = outs["0.25"].first_part[0].weight
    torch.testing.assert_close(w, 0.75 * a.first_part[0].weight + 0.25 * b.first_part[0].weight)
    assert not torch.equal(w, a.first_part[0].weight)

    other = save_checkpoint(small_model("espcn-x2"), tmp_path / "x2.safetensors")
    with pytest.raises(UserError, match="different architectures"):
        interpolate_checkpoints(pa, other, 0.5, tmp_path / "z.safetensors")
    # one architecture computing in another colour space (model.colorspace): not blendable
    torch.manual_seed(1)
    rgb = save_checkpoint(create_model("espcn-rgb-x3"), tmp_path / "rgb.safetensors")
    oklab = save_checkpoint(create_model("espcn-rgb-x3", colorspace="oklab"), tmp_path / "oklab.safetensors")
    with pytest.raises(UserError, match="computes in rgb and .* in oklab"):
        interpolate_checkpoints(rgb, oklab, 0.5, tmp_path / "z.safetensors")
    capsys.readouterr()
    assert cli.main(["interpolate", str(pa), str(pa), "--alpha", "1.5", "-o", str(tmp_path / "q.safetensors")]) == 2
    assert cli.main(["interpolate", str(pa), str(pa), "--alpha", "0", "-o", str(tmp_path / "i0.safetensors")]) == 2
    assert "exists" in capsys.readouterr().err


def test_interpolate_takes_a_shipped_models_name(tmp_path, capsys):
    from upsample.models import registry
    shipped, _ = load_checkpoint(registry.weights_path("espcn-x3"))
    mine = save_checkpoint(small_model("espcn-x3", seed=3), tmp_path / "mine.safetensors")
    out = tmp_path / "half.safetensors"
    assert cli.main(["interpolate", "espcn-x3", str(mine), "--alpha", "0.5", "-o", str(out)]) == 0
    blend, _ = load_checkpoint(out)
    torch.testing.assert_close(blend.first_part[0].weight,
                               0.5 * shipped.first_part[0].weight.float() + 0.5 * load_checkpoint(mine)[0].first_part[0].weight)
    capsys.readouterr()
    untrained = next(n for n in registry.list_models() if registry.weights_path(n) is None)
    assert cli.main(["interpolate", untrained, str(mine), "--alpha", "0.5", "-o", str(tmp_path / "v.safetensors")]) == 2
    err = capsys.readouterr().err
    assert f"{untrained} has no trained weights" in err and len(err.strip().splitlines()) == 1


def test_a_model_of_other_channel_counts_is_refused_at_load(tmp_path):
    """An RGBA (4-channel) ESRGAN loaded, then failed at its first tile with a traceback."""
    torch.manual_seed(0)
    rgba = create_model("rrdbnet-x4", num_block=1, num_in_ch=4, num_out_ch=4)
    torch.save({"params_ema": rgba.state_dict()}, tmp_path / "rgba.pth")
    with pytest.raises(UserError, match="4 input and 4 output channels; upsample runs models of 1"):
        load_checkpoint(tmp_path / "rgba.pth")


# ------------------------------------------------------- other projects' wrappers and layouts
# Tiny RRDBNets: detection and strict loading read names and shapes, not the trained sizes.
TINY_RRDB = {"num_feat": 8, "num_block": 1, "num_grow_ch": 4}


def tiny_rrdbnet(scale=4, seed=0):
    torch.manual_seed(seed)
    return rrdbnet.RRDBNet(scale=scale, **TINY_RRDB).eval()


def esrgan_old_arch(n_up, nf=8, gc=4, nb=1):
    """The original ESRGAN's `model.N` names (architecture.py) with `n_up` upsampling convs."""
    state = {}

    def conv(name, cin, cout):
        state[f"{name}.weight"], state[f"{name}.bias"] = torch.randn(cout, cin, 3, 3) * 0.1, torch.zeros(cout)
    conv("model.0", 3, nf)
    for r in (1, 2, 3):
        for j in range(1, 6):
            conv(f"model.1.sub.0.RDB{r}.conv{j}.0", nf + (j - 1) * gc, gc if j < 5 else nf)
    conv(f"model.1.sub.{nb}", nf, nf)
    for i in range(n_up):  # Upsample, conv, act: three entries each
        conv(f"model.{3 + 3 * i}", nf, nf)
    conv(f"model.{2 + 3 * n_up}", nf, nf)
    conv(f"model.{4 + 3 * n_up}", nf, 3)
    return state


def lightning(state):
    """A PyTorch Lightning .ckpt: the module's state dict among the trainer's own entries."""
    return {"epoch": 7, "global_step": 1234, "pytorch-lightning_version": "2.2.0", "state_dict": state,
            "hyper_parameters": {"lr": 1e-4}}


@pytest.mark.parametrize("prefix", ["model.", "_orig_mod.", "model._orig_mod.", "module._orig_mod.",
                                    "_orig_mod.module.", "net_g."])
def test_lightning_and_compiled_prefixes_are_stripped(prefix, tmp_path):
    net = tiny_rrdbnet()
    torch.save(lightning({prefix + k: v for k, v in net.state_dict().items()}), tmp_path / "m.ckpt")
    model, meta = load_checkpoint(tmp_path / "m.ckpt")
    assert meta["arch"] == "rrdbnet" and meta["scale"] == 4 and same_state(model, net)


def test_old_esrgan_model_names_keep_their_model_prefix(tmp_path):
    """`model.N` is the original ESRGAN's own layout (rrdbnet.rename_foreign reads it), not a
    Lightning module's attribute: stripped, it would be `0.weight`, `1.sub...`; a Lightning module
    holding one (`model.model.N`) loses only its own `model.`."""
    state = esrgan_old_arch(2)
    for name, obj in (("old.pth", state), ("wrapped.ckpt", lightning({f"model.{k}": v for k, v in state.items()}))):
        torch.save(obj, tmp_path / name)
        model, meta = load_checkpoint(tmp_path / name)
        assert meta["scale"] == 4 and torch.equal(model.conv_first.weight, state["model.0.weight"]), name


@pytest.mark.parametrize("gen, disc", [("generator.", "discriminator."), ("net_g.", "net_d."),
                                       ("netG.", "netD."), ("gen.", "disc.")])
def test_a_gan_checkpoint_loads_its_generator(gen, disc, tmp_path):
    net = tiny_rrdbnet()
    d = {"conv0_0.weight": torch.randn(8, 3, 3, 3), "conv0_0.bias": torch.zeros(8)}
    state = {**{gen + k: v for k, v in net.state_dict().items()}, **{disc + k: v for k, v in d.items()}}
    torch.save(lightning(state), tmp_path / "gan.ckpt")
    model, meta = load_checkpoint(tmp_path / "gan.ckpt")
    assert meta["arch"] == "rrdbnet" and same_state(model, net)
    # under DataParallel too, and a generator beside something that is no discriminator stays refused
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pth")
    assert same_state(load_checkpoint(tmp_path / "ddp.pth")[0], net)
    torch.save({**{gen + k: v for k, v in net.state_dict().items()}, "other.w": torch.zeros(1)}, tmp_path / "x.pth")
    with pytest.raises(UserError, match="cannot tell the architecture"):
        load_checkpoint(tmp_path / "x.pth")


def srvgg_compact_state(num_conv=2, nf=8, scale=4):
    """Real-ESRGAN's SRVGGNetCompact (realesr-general-x4v3, realesr-animevideov3): `body.N`,
    3x3 convs alternating with PReLUs (1-d weights), the last conv out 3 * scale**2."""
    state, i = {}, 0
    for cin, cout in [(3, nf)] + [(nf, nf)] * num_conv + [(nf, 3 * scale * scale)]:
        state[f"body.{i}.weight"], state[f"body.{i}.bias"] = torch.randn(cout, cin, 3, 3), torch.zeros(cout)
        if cout == nf:
            state[f"body.{i + 1}.weight"] = torch.full((nf,), 0.25)
        i += 2
    return state


def test_srvgg_compact_is_named_and_refused_in_one_line(tmp_path, capsys):
    torch.save({"params": srvgg_compact_state()}, tmp_path / "realesr-general-x4v3.pth")
    with pytest.raises(UserError) as e:
        load_checkpoint(tmp_path / "realesr-general-x4v3.pth")
    msg = str(e.value)
    assert "Real-ESRGAN SRVGGNetCompact (realesr-*-v3) is not supported here; supported: ESRGAN/Real-ESRGAN " \
           "RRDBNet x1-x4, VapSR, ESPCN, VDSR; or export it to .onnx (runs with --model file.onnx)" in msg
    assert "\n" not in msg
    data = write_images(tmp_path / "d", n=1, side=8)
    assert cli.main(["image", str(data), "-o", str(tmp_path / "out"), "--model",
                     str(tmp_path / "realesr-general-x4v3.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "SRVGGNetCompact" in err, err


def test_the_generic_refusal_lists_generators_only(tmp_path):
    torch.save({"a.weight": torch.zeros(3)}, tmp_path / "unknown.pth")
    with pytest.raises(UserError) as e:
        load_checkpoint(tmp_path / "unknown.pth")
    known = str(e.value).split("known: ")[1]
    assert "rrdbnet" in known and "vapsr" in known and "discriminator" not in known


def test_rrdbnet_x8_is_refused_by_name(tmp_path):
    """ESRGAN's x8 files have 3 upsampling convs (conv_up3 once renamed): no scale of ours."""
    torch.save(esrgan_old_arch(3), tmp_path / "8x_old_arch.pth")
    state = tiny_rrdbnet().state_dict()
    torch.save({**state, "conv_up3.weight": state["conv_up2.weight"], "conv_up3.bias": state["conv_up2.bias"]},
               tmp_path / "8x_basicsr.pth")
    for name in ("8x_old_arch.pth", "8x_basicsr.pth"):
        with pytest.raises(UserError, match=r"RRDBNet x8 \(3 upsampling convs\) is not supported; scales 1-4"):
            load_checkpoint(tmp_path / name)

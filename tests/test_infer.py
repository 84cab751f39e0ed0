"""Image inference: formats, tiling exactness, memory bound, failures and no-overwrite (tiny)."""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

import upsample
from upsample.errors import UserError
from upsample import cli
from upsample.inference import tiling
from upsample.inference.api import ImageUpscaler, default_model
from upsample.inference.memory import PeakTensorMemory, receptive_radius, release_unheld
from upsample.inference.sizes import resident_bytes
from upsample.inference.sizes import MAX_DEFAULT_PAD, parse_size
from upsample.inference.tiler import BATCHES, Tiler
from upsample.inference.wrappers import ResizedUpscaler
from upsample.models import registry
from upsample.data.degrade import imresize_np
from upsample.inference.upscaler import BicubicUpscaler, ModelUpscaler

RNG = np.random.default_rng(0)


def rgb(h=20, w=26):
    return (RNG.random((h, w, 3)) * 255).astype(np.uint8)


def random_model_upscaler(name: str, **overrides) -> ModelUpscaler:
    torch.manual_seed(0)
    model = registry.create_model(name, **overrides).eval()
    spec = model.upsample_spec
    return ModelUpscaler(model, model, scale=spec.scale, name=name, backend="torch",
                         device=torch.device("cpu"))


def test_parse_size():
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("1.5GiB") == int(1.5 * 1024 ** 3)
    assert parse_size("800m") == 800_000_000
    assert parse_size("1234") == 1234
    with pytest.raises(upsample.errors.UserError):
        parse_size("lots")


# --- tile geometry: plain integer maths, no model ------------------------------------------------

def test_split_covers_the_region_once_row_by_row():
    tiles = tiling.split((2, 12, 0, 7), 4)
    assert tiles == [(2, 6, 0, 4), (2, 6, 4, 7), (6, 10, 0, 4), (6, 10, 4, 7), (10, 12, 0, 4), (10, 12, 4, 7)]
    covered = np.zeros((12, 7), int)
    for y0, y1, x0, x1 in tiles:
        covered[y0:y1, x0:x1] += 1
    assert (covered[2:] == 1).all() and (covered[:2] == 0).all()
    assert sum(tiling.region_area(t) for t in tiles) == tiling.region_area((2, 12, 0, 7))
    assert tiling.split((0, 5, 0, 5), 8) == [(0, 5, 0, 5)]  # a side longer than the region: one tile
    assert tiling.split_all([(0, 4, 0, 4), (0, 2, 4, 6)], 2) == [
        (0, 2, 0, 2), (0, 2, 2, 4), (2, 4, 0, 2), (2, 4, 2, 4), (0, 2, 4, 6)]


def test_padding_reaches_into_neighbours_and_stops_at_the_border():
    assert tiling.pad_region((4, 8, 4, 8), 3, 20, 30) == (1, 11, 1, 11)
    assert tiling.pad_region((0, 8, 24, 30), 3, 20, 30) == (0, 11, 21, 30)  # corner: clipped
    assert tiling.region_size(tiling.pad_region((0, 20, 0, 30), 5, 20, 30)) == (20, 30)


def test_geometry_of_a_scale_aligns_tiles_to_whole_output_pixels():
    g = tiling.TileGeometry.of(1.5)
    assert (g.p, g.q, g.align) == (3, 2, 2)
    assert tiling.TileGeometry.of(2.0, pad_multiple=2).align == 2
    assert tiling.TileGeometry.of(1.5, pad_multiple=4).align == 4  # lcm of q and the multiple
    assert tiling.TileGeometry.of(3.0, pad_multiple=2).align == 2
    with pytest.raises(upsample.errors.UserError, match="ratio of small integers"):
        tiling.TileGeometry.of(math.pi)
    assert (g.round_up(5), g.round_down(5), g.round_down(1)) == (6, 4, 2)  # never an empty tile
    assert (g.fixed_side(0, 30, 40), g.fixed_side(40, 30, 40), g.fixed_side(9, 30, 40)) == (0, 0, 8)


def test_output_regions_tile_the_output_and_crops_match_them():
    for scale, h, w in [(2.0, 37, 53), (1.5, 37, 53), (0.5, 37, 53), (3.0, 10, 7)]:
        g = tiling.TileGeometry.of(scale)
        oh, ow = math.ceil(round(h * scale, 9)), math.ceil(round(w * scale, 9))
        covered = np.zeros((oh, ow), int)
        for region in tiling.split((0, h, 0, w), g.round_down(8)):
            oy0, oy1, ox0, ox1 = g.out_region(region, h, w)
            covered[oy0:oy1, ox0:ox1] += 1
            padded = tiling.pad_region(region, g.round_up(3), h, w)
            cy0, cy1, cx0, cx1 = g.crop_in_tile(region, padded, h, w)
            assert (cy1 - cy0, cx1 - cx0) == (oy1 - oy0, ox1 - ox0)
            assert cy0 == oy0 - g.out_index(padded[0], h) and cx0 >= 0
        assert (covered == 1).all(), scale  # every output pixel from exactly one tile
    g = tiling.TileGeometry.of(1.5)
    assert (g.out_index(4, 11), g.out_index(11, 11)) == (6, 17)  # the image's end: its output size


def test_out_of_memory_halving_stops_at_the_smallest_tile():
    g = tiling.TileGeometry.of(2.0)
    assert g.half_side((0, 40, 0, 30)) == 20 and g.can_split((0, 40, 0, 30))
    assert not g.can_split((0, tiling.MIN_TILE, 0, tiling.MIN_TILE))
    assert tiling.TileGeometry.of(1.5, pad_multiple=32).half_side((0, 40, 0, 40)) == 32  # >= align


def test_formats_round_trip_through_the_cli(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    base = rgb()
    alpha = np.linspace(0, 255, 26, dtype=np.uint8)[None].repeat(20, 0)
    Image.fromarray(np.dstack([base, alpha]), "RGBA").save(src / "rgba.png")
    Image.fromarray(base[..., 0]).save(src / "sub" / "gray.png")
    Image.fromarray(np.dstack([base[..., 0], alpha]), "LA").save(src / "la.png")
    deep = (RNG.random((20, 26)) * 65535).astype(np.uint16)
    Image.fromarray(deep).save(src / "deep.png")
    Image.fromarray(base).convert("P").save(src / "pal.png")
    pal_t = Image.fromarray(base).convert("P")
    pal_t.info["transparency"] = 0
    pal_t.save(src / "palt.png", transparency=0)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(base).save(src / "icc.png", icc_profile=srgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: shown 90 degrees clockwise
    Image.fromarray(base).save(src / "rot.jpg", exif=exif.tobytes(), quality=95)

    assert cli.main(["image", str(src), "-o", str(tmp_path / "out"), "--model", "bicubic",
                     "--scale", "2"]) == 0
    out = tmp_path / "out"
    want = {"rgba_x2.png": ("RGBA", (52, 40)), "sub/gray_x2.png": ("L", (52, 40)),
            "la_x2.png": ("LA", (52, 40)), "deep_x2.png": ("I;16", (52, 40)),
            "pal_x2.png": ("RGB", (52, 40)), "palt_x2.png": ("RGBA", (52, 40)),
            "icc_x2.png": ("RGB", (52, 40)), "rot_x2.png": ("RGB", (40, 52))}
    for name, (mode, size) in want.items():
        im = Image.open(out / name)
        assert (im.mode, im.size) == (mode, size), name
    # 16-bit stays 16-bit: the float path, compared with a float64 bicubic of the source
    got = np.asarray(Image.open(out / "deep_x2.png")).astype(np.float64)
    ref = np.clip(imresize_np(deep.astype(np.float64) / 65535, 2.0), 0, 1) * 65535
    assert np.abs(got - ref).max() <= 1.0
    assert len(np.unique(got)) > 256
    # alpha upscaled separately and kept; gray stays one channel of the right values
    a = np.asarray(Image.open(out / "rgba_x2.png"))[..., 3]
    assert np.abs(a.astype(int) - imresize_np(alpha, 2.0)).max() <= 1
    g = np.asarray(Image.open(out / "sub/gray_x2.png"))
    assert np.abs(g.astype(int) - imresize_np(base[..., 0], 2.0)).max() <= 1
    assert Image.open(out / "icc_x2.png").info.get("icc_profile") == srgb
    # EXIF orientation 6 applied: the stored pixels turned 90 degrees clockwise, then upscaled
    stored = np.asarray(Image.open(src / "rot.jpg"))
    upright = np.asarray(Image.open(out / "rot_x2.png")).astype(int)
    assert np.abs(upright - imresize_np(np.rot90(stored, k=-1), 2.0)).max() <= 1
    assert Image.open(out / "rot_x2.png").getexif().get(0x0112, 1) == 1  # not turned twice


def test_16_bit_rgb_png_keeps_16_bits(tmp_path):
    """Pillow reads 16-bit RGB PNG as 8-bit; the image command keeps all 16 bits (PyAV codec)."""
    import av
    deep = (RNG.random((20, 26, 3)) * 65535).astype(np.uint16)
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = 26, 20, "rgb48be"
    frame = av.VideoFrame.from_ndarray(deep, format="rgb48le").reformat(format="rgb48be")
    (tmp_path / "rgb48.png").write_bytes(b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)]))
    assert Image.open(tmp_path / "rgb48.png").mode == "RGB"  # what Pillow alone would give
    assert cli.main(["image", str(tmp_path / "rgb48.png"), "-o", str(tmp_path / "out"),
                     "--model", "bicubic"]) == 0
    with av.open(str(tmp_path / "out" / "rgb48_x2.png")) as c:
        out = next(c.decode(video=0))
    assert out.format.name == "rgb48be" and (out.width, out.height) == (52, 40)
    got = out.to_ndarray(format="rgb48le").astype(np.float64)
    ref = np.clip(imresize_np(deep.astype(np.float64) / 65535, 2.0), 0, 1) * 65535
    assert np.abs(got - ref).max() <= 1.0


def test_16_bit_gray_with_alpha_png_keeps_16_bits_and_stays_gray(tmp_path):
    """Pillow reads a 16-bit gray + alpha PNG as 8-bit RGBA; the image command keeps one gray
    plane and the alpha, both in 16 bits, and writes them back as such (colour type 4)."""
    import av
    from upsample.media.imageio import png_strips
    gray, alpha = (RNG.random((20, 26, 2)) * 65535).astype(np.uint16).transpose(2, 0, 1)
    with png_strips(tmp_path / "la16.png", 26, 20, "LA;16") as png:
        png.write(np.stack([gray, alpha], 2))
    assert Image.open(tmp_path / "la16.png").mode == "RGBA"  # what Pillow alone would give
    assert cli.main(["image", str(tmp_path / "la16.png"), "-o", str(tmp_path / "out"),
                     "--model", "bicubic"]) == 0
    written = tmp_path / "out" / "la16_x2.png"
    assert written.read_bytes()[24:26] == bytes([16, 4])  # 16 bits, gray + alpha
    with av.open(str(written)) as c:
        out = next(c.decode(video=0)).to_ndarray(format="rgba64le").astype(np.float64)
    for got, plane in ((out[..., 0], gray), (out[..., 3], alpha)):
        ref = np.clip(imresize_np(plane.astype(np.float64) / 65535, 2.0), 0, 1) * 65535
        assert got.shape == (40, 52) and np.abs(got - ref).max() <= 1.0
    # an RGB profile does not describe gray pixels (Pillow, reading RGBA, would have kept it)
    from PIL import ImageCms
    from upsample.media.imageio import read_planes
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    with png_strips(tmp_path / "icc.png", 26, 20, "LA;16", {"icc_profile": srgb}) as png:
        png.write(np.stack([gray, alpha], 2))
    assert Image.open(tmp_path / "icc.png").info.get("icc_profile") == srgb
    assert "icc_profile" not in read_planes(tmp_path / "icc.png").info


def test_corrupt_file_reported_others_written_no_overwrite(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb()).save(src / "a.png")
    Image.fromarray(rgb()).save(src / "c.png")
    (src / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    out = tmp_path / "out"
    args = ["image", str(src), "-o", str(out), "--model", "bicubic", "--scale", "2"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert err.count("b.png") == 1  # named once: Pillow's message names it too
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.png", "c_x2.png"]  # no partial b
    marker = np.zeros((40, 52, 3), np.uint8)
    Image.fromarray(marker).save(out / "a_x2.png")
    cli.main(args)
    assert "exists" in capsys.readouterr().err
    assert np.asarray(Image.open(out / "a_x2.png")).max() == 0  # not replaced
    cli.main(args + ["--overwrite"])
    assert np.asarray(Image.open(out / "a_x2.png")).max() > 0  # replaced on request


@pytest.mark.parametrize("scale", [2, 3, 1.5, 0.5])
def test_bicubic_tiled_equals_untiled(scale):
    img = rgb(37, 53)
    whole = upsample.load("bicubic", scale, tile=0).upscale(img)
    tiled = upsample.load("bicubic", scale, tile=8).upscale(img)
    assert whole.shape == (math.ceil(37 * scale), math.ceil(53 * scale), 3)
    assert np.array_equal(whole, tiled)
    assert np.abs(whole.astype(int) - imresize_np(img, scale)).max() <= 1


@pytest.mark.parametrize("name,overrides", [
    ("espcn-rgb-x2", {}),
    ("espcn-x3", {}),  # a Y-channel model: chroma by bicubic inside the upscaler
    ("vapsr-x2", {"num_block": 2, "num_feat": 16, "d_atten": 16}),
    ("rrdbnet-x4", {"num_block": 1, "num_feat": 16, "num_grow_ch": 8}),
    ("rrdbnet-x2", {"num_block": 1, "num_feat": 16, "num_grow_ch": 8}),  # pixel-unshuffle: even tiles
])
def test_model_tiled_equals_untiled(name, overrides):
    up = random_model_upscaler(name, **overrides)
    pad = math.ceil(receptive_radius(up.model, up.spec.channels))
    img = rgb(24, 34)
    whole = ImageUpscaler(up, tile=0).upscale(img)
    tiled_engine = ImageUpscaler(up, tile=12, tile_pad=pad)
    tiled = tiled_engine.upscale(img)
    s = up.spec.scale
    assert whole.shape == (24 * s, 34 * s, 3)
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1
    # the default pad is that receptive field (capped), so the default tiling is exact too
    assert tiled_engine.tiler.pad >= min(pad, MAX_DEFAULT_PAD)


def test_outscale_after_a_model_is_tiled_exactly():
    up = ResizedUpscaler(random_model_upscaler("espcn-rgb-x2"), 1.5)
    img = rgb(24, 30)
    whole = ImageUpscaler(up, tile=0).upscale(img)
    tiled = ImageUpscaler(up, tile=8).upscale(img)
    assert whole.shape == (36, 45, 3)
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1


def test_array_and_pil_api_keep_their_kind():
    eng = upsample.load("bicubic", 2)
    gray = rgb()[..., 0]
    assert eng.upscale(gray).shape == (40, 52) and eng.upscale(gray).dtype == np.uint8
    rgba = np.dstack([rgb(), rgb()[..., :1]])
    assert eng.upscale(rgba).shape == (40, 52, 4)
    deep = (RNG.random((20, 26, 3)) * 65535).astype(np.uint16)
    out = eng.upscale(deep)
    assert out.dtype == np.uint16 and out.shape == (40, 52, 3) and out.max() > 255
    pil = eng.upscale(Image.fromarray(rgb()).convert("P"))
    assert isinstance(pil, Image.Image) and pil.mode == "RGB" and pil.size == (52, 40)
    assert np.array_equal(eng.upscale(deep.astype(">u2")), out)  # big-endian: the same values
    for empty in (np.zeros((0, 0, 3), np.uint8), np.zeros((0, 5), np.uint16)):
        with pytest.raises(UserError, match="the image is empty"):
            eng.upscale(empty)


@pytest.mark.parametrize("spec,scale", [("bicubic", 2), ("espcn-x3", None)])
def test_float_tensors_follow_the_tensor_contract(spec, scale):
    """NCHW or CHW float in [0, 1] in, the same layout, dtype and device out, unrounded: the
    uint8 path's pixels are these values rounded; a batch gives each image's own result."""
    eng = upsample.load(spec, scale, backend="torch")
    arr = rgb()
    chw = torch.from_numpy(arr.copy()).permute(2, 0, 1).double() / 255
    out = eng(chw)
    s = round(eng.scale)
    assert out.shape == (3, 20 * s, 26 * s) and out.dtype == torch.float64
    assert 0 <= out.min() and out.max() <= 1 and not torch.equal(out, (out * 255).round() / 255)
    as_uint8 = (out.float().permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()  # as the tiler rounds
    assert np.array_equal(as_uint8, eng.upscale(arr))
    pair = eng.upscale(torch.stack([chw, chw.flip(-1)]))
    assert pair.shape == (2, 3, 20 * s, 26 * s) and torch.allclose(pair[0], out, atol=1e-5)
    assert eng(chw[:1]).shape == (1, 20 * s, 26 * s)  # gray stays gray
    for bad, why in ((chw.mul(255).to(torch.uint8), "must be float"), (torch.ones(2, 8, 8), "1 \\(gray\\) or 3"),
                     (torch.ones(3, 0, 8), "empty")):
        with pytest.raises(UserError, match=why):
            eng(bad)


def test_gray_and_alpha_through_a_model_stay_single_channel():
    up = random_model_upscaler("espcn-rgb-x2")
    la = np.dstack([rgb()[..., 0], rgb()[..., 1]])
    for mode in ("bicubic", "model"):
        out = ImageUpscaler(up, tile=0, alpha_mode=mode).upscale(la)
        assert out.shape == (40, 52, 2)
    by_model = ImageUpscaler(up, tile=0, alpha_mode="model").upscale(la)[..., 1]
    by_bicubic = ImageUpscaler(up, tile=0, alpha_mode="bicubic").upscale(la)[..., 1]
    assert np.abs(by_bicubic.astype(int) - imresize_np(la[..., 1], 2.0)).max() <= 1
    assert not np.array_equal(by_model, by_bicubic)


def test_tiles_bound_tensor_memory():
    """The float working set follows the tile, not the image: measured with the same tracker
    that sizes tiles from --max-memory."""
    img = rgb(192, 192)
    peaks = {}
    for tile in (0, 32):
        tiler = Tiler(BicubicUpscaler(2.0), tile=tile)
        with PeakTensorMemory() as tracker:
            tiler.upscale(img)
        peaks[tile] = tracker.peak
    assert peaks[32] * 8 < peaks[0]
    # a budget gives a tile whose measured cost fits in it
    release_unheld()  # as the budget does before it reads resident memory
    tiler = Tiler(BicubicUpscaler(2.0), max_memory=resident_bytes() + 40_000_000)
    side = tiler.plan_tile(4000, 4000, 3, np.uint8)
    assert 0 < side < 4000
    assert tiler.bytes_per_pixel(3, np.uint8) * (side + 2 * tiler.pad) ** 2 <= 40_000_000


def test_out_of_memory_splits_the_tile_and_result_is_unchanged():
    class Flaky(BicubicUpscaler):
        def __call__(self, x):
            if x.shape[-1] * x.shape[-2] > 30 * 30:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().__call__(x)

    img = rgb(40, 44)
    ref = upsample.load("bicubic", 2, tile=0).upscale(img)
    tiler = Tiler(Flaky(2.0), tile=0)
    assert np.array_equal(tiler.upscale(img), ref)
    assert 0 < tiler.tile < 40


def test_default_model_falls_back_to_bicubic_without_weights(monkeypatch):
    monkeypatch.setattr(registry, "weights_path", lambda name: None)
    assert default_model(2) == "bicubic"
    assert default_model(1.5) == "bicubic"


def test_default_model_is_the_shipped_one_with_the_best_psnr_at_that_scale(tmp_path, monkeypatch):
    import json
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)

    def ship(name, psnr_by_scale):
        (tmp_path / f"{name}.safetensors").write_bytes(b"x")
        (tmp_path / f"{name}.eval.json").write_text(json.dumps({"scales": {
            str(s): {"model": {"Set5": {"psnr": p}, "Set14": {"psnr": p - 2}}} for s, p in psnr_by_scale.items()}}))
    ship("espcn-x3", {3: 32.4})
    assert [default_model(s) for s in (2, 3, 4)] == ["bicubic", "espcn-x3", "bicubic"]
    ship("vdsr", {2: 37.1, 3: 33.3})  # scale-free: it serves the scales it was evaluated at
    assert [default_model(s) for s in (2, 3, 4)] == ["vdsr", "vdsr", "bicubic"]
    ship("espcn-x2", {2: 37.5})
    assert default_model(2) == "espcn-x2"
    (tmp_path / "espcn-x3.eval.json").unlink()  # weights without an evaluation are not a default
    ship("vdsr", {2: 37.1})
    assert default_model(3) == "bicubic"


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["image", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    Image.fromarray(rgb()).save(tmp_path / "a.png")
    assert cli.main(["image", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"),
                     "--max-memory", "lots"]) == 2


def test_alpha_to_jpg_falls_back_to_png_and_is_not_overwritten(tmp_path, capsys):
    rgba = np.dstack([rgb(), np.full((20, 26, 1), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    args = ["image", str(tmp_path / "t.png"), "-o", str(tmp_path / "out"), "--model", "bicubic",
            "--ext", "jpg"]
    assert cli.main(args) == 0
    assert "wrote PNG" in capsys.readouterr().err
    written = tmp_path / "out" / "t_x2.png"
    assert Image.open(written).mode == "RGBA" and not (tmp_path / "out" / "t_x2.jpg").exists()
    Image.fromarray(np.zeros((40, 52, 4), np.uint8), "RGBA").save(written)
    assert cli.main(args) == 0
    assert "exists, skipped" in capsys.readouterr().err
    assert np.asarray(Image.open(written)).max() == 0


def test_measuring_tiles_leaves_the_process_peak_memory_alone():
    """The probe must not reset the kernel's high-water mark: /usr/bin/time and getrusage
    would then under-report what the whole run used."""
    import resource
    spike = np.ones(300_000_000, np.uint8)
    del spike
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Tiler(BicubicUpscaler(2.0)).bytes_per_pixel(3, np.uint8)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >= before


def test_outputs_get_the_usual_permissions_not_the_temp_files(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the renamed result follows the umask."""
    import os
    from PIL import Image
    from upsample import cli
    Image.new("RGB", (12, 10), (10, 200, 30)).save(tmp_path / "a.png")
    old = os.umask(0o022)
    try:
        assert cli.main(["image", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"),
                         "--model", "bicubic", "--scale", "2"]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "a_x2.png").stat().st_mode & 0o777 == 0o644


class CountingUpscaler(BicubicUpscaler):
    """Bicubic that records the batch size of every call (and can fail batches as out of memory)."""

    def __init__(self, scale, fail_batches=False):
        super().__init__(scale)
        self.calls, self.fail_batches = [], fail_batches

    def __call__(self, x):
        if self.fail_batches and x.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        self.calls.append(x.shape[0])
        return super().__call__(x)


@pytest.mark.parametrize("tile_batch", [None, 1, 3, 8])
def test_tiles_of_one_shape_go_through_in_batches_with_the_same_result(tile_batch):
    img = rgb(40, 50)  # 12px tiles: 4 x 5 regions, the last row and column narrower
    ref = upsample.load("bicubic", 2, tile=0).upscale(img)
    up = CountingUpscaler(2.0)
    tiler = Tiler(up, tile=12, tile_batch=tile_batch)
    assert np.array_equal(tiler.upscale(img), ref)
    regions = len(tiling.split((0, 40, 0, 50), 12))
    if tile_batch in (None, 1):  # auto on the CPU: one tile a call
        assert up.calls == [1] * regions
    else:
        # interior tiles share a padded shape (6 of them here), edge ones come in fewer
        assert sum(up.calls) == regions and 1 < max(up.calls) <= tile_batch
        assert len(up.calls) < regions


def test_tile_batch_timed_when_asked_picks_a_size_that_fits_and_keeps_the_result():
    img = rgb(40, 50)
    ref = upsample.load("bicubic", 2, tile=0).upscale(img)
    up = CountingUpscaler(2.0)
    tiler = Tiler(up, tile=12)
    tiler.time_batches = True  # what a GPU does: time 1/2/4/8 tiles a call once per tile shape
    assert np.array_equal(tiler.upscale(img), ref)
    assert tiler._batch_for and set(tiler._batch_for.values()) <= set(BATCHES)


def test_out_of_memory_in_a_batch_of_tiles_falls_back_to_one_tile_a_call(capsys):
    img = rgb(40, 50)
    ref = upsample.load("bicubic", 2, tile=0).upscale(img)
    tiler = Tiler(CountingUpscaler(2.0, fail_batches=True), tile=12, tile_batch=4)
    assert np.array_equal(tiler.upscale(img), ref)
    assert tiler.tile_batch == 1 and "one tile at a time" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5"])
def test_bad_tile_batch_is_one_line(tmp_path, capsys, bad):
    src = tmp_path / "a.png"
    Image.fromarray(rgb(20, 20)).save(src)
    assert cli.main(["image", str(src), "--model", "bicubic", "--scale", "2", "--tile-batch", bad,
                     "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--tile-batch" in err
    assert not (tmp_path / "out").exists()


def test_the_api_default_model_is_the_clis():
    from upsample.inference.api import default_model
    for scale in (2, 3, 4):
        assert upsample.load(scale=scale, backend="torch").up.name == default_model(scale) != "bicubic"
    assert upsample.load(backend="torch").up.name == default_model(2)


def test_untrained_models_make_no_image_unless_asked(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("UPSAMPLE_ALLOW_UNTRAINED")
    Image.new("RGB", (12, 10), (90, 120, 30)).save(tmp_path / "a.png")
    refusal = "vapsr-x2 has no trained weights: give a trained checkpoint file instead"
    for cmd in (["image", str(tmp_path / "a.png"), "-o", str(tmp_path / "o")],
                ["eval", "--data", str(tmp_path)]):
        assert cli.main([*cmd, "--model", "vapsr-x2"]) == 2
        err = capsys.readouterr().err
        assert refusal in err and "use a shipped model (espcn-x2, " in err and "--allow-untrained" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(UserError, match=refusal):
        upsample.load("vapsr-x2")
    assert cli.main(["image", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--model",
                     "espcn-rgb-x2", "--allow-untrained"]) == 0
    assert "no trained weights yet; using an untrained (random) model" in capsys.readouterr().err
    assert upsample.load("espcn-x3").up.name == "espcn-x3"  # shipped: no flag needed


@pytest.mark.parametrize("mode", ["RGB", "L", "I;16", "RGB;16"])
def test_png_strips_round_trip(tmp_path, mode):
    """Rows written in pieces decode to the same pixels (Pillow; PyAV for 16-bit RGB), with the
    ICC profile kept; a file missing rows is never left behind."""
    from upsample.media.imageio import png_strips, read_planes
    deep, channels = mode.endswith("16"), 3 if mode.startswith("RGB") else 1
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536 if deep else 256, (23, 17, channels)).astype(np.uint16 if deep else np.uint8)
    arr[:9] //= 5  # some structure for the filter
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    if channels == 1:  # a gray picture's profile is a gray one (its header says so)
        icc = icc[:16] + b"GRAY" + icc[20:]
    with png_strips(tmp_path / "s.png", 17, 23, mode, {"icc_profile": icc}) as png:
        png.write(arr[:10])
        png.write(arr[10:10])
        png.write(arr[10:])
    planes = read_planes(tmp_path / "s.png")
    assert np.array_equal(planes.color, arr) and planes.info.get("icc_profile") == icc
    with pytest.raises(ValueError, match="rows written"):
        with png_strips(tmp_path / "short.png", 17, 23, mode) as png:
            png.write(arr[:5])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.png"]


@pytest.mark.parametrize("kwargs, words", [
    ({"tile": -1}, "tile="), ({"tile_pad": -2}, "tile_pad="), ({"tile_batch": 0}, "tile_batch="),
    ({"max_memory": "0"}, "max_memory="), ({"threads": 0}, "threads="),
])
def test_api_refuses_bad_keywords_naming_them(kwargs, words):
    with pytest.raises(UserError, match=words):
        upsample.load("bicubic", 2, **kwargs)


@pytest.mark.parametrize("args, kwargs, words", [
    (("vapsr-x2",), {}, "allow_untrained=True runs its random weights"),
    (("espcn-x3", 2.5), {}, "but scale is 2.5: use scale=3"),
    (("espcn-x3",), {"backend": "torch", "precision": "bf16"}, "precision='bf16' needs backend='auto'"),
])
def test_api_errors_name_its_keywords_not_the_clis_options(args, kwargs, words, monkeypatch):
    monkeypatch.delenv("UPSAMPLE_ALLOW_UNTRAINED")  # the suite's default: refuse as a user's run
    with pytest.raises(UserError) as caught:
        upsample.load(*args, **kwargs)
    assert words in str(caught.value) and "--" not in str(caught.value)


def test_api_tile_zero_means_whole_images():
    up = upsample.load("bicubic", 2, tile=0)
    assert up.upscale(np.zeros((9, 7, 3), np.uint8)).shape == (18, 14, 3)


def test_jobs_share_an_openvino_model_without_a_busy_request(tmp_path, capsys):
    """`image --jobs 2` under the default backend: the images' threads each run the one compiled
    graph (a CompiledModel's own call shares one infer request: "Infer Request is busy")."""
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)).save(src / f"p{i}.png")
    rc = cli.main(["image", str(src), "-o", str(tmp_path / "out"), "--model", "espcn-x2", "--jobs", "2"])
    assert rc == 0, capsys.readouterr().err
    assert len(list((tmp_path / "out").glob("*.png"))) == 8


def test_per_thread_runs_requests_concurrently():
    import threading
    import openvino as ov
    from upsample.runtime.cache import per_thread
    model = ov.convert_model(torch.nn.Conv2d(3, 3, 3, padding=1), example_input=torch.rand(1, 3, 8, 8))
    run = per_thread(ov.Core().compile_model(model, "CPU"))
    x, errors = np.random.rand(1, 3, 64, 64).astype(np.float32), []

    def work():
        try:
            for _ in range(30):
                assert np.asarray(run(x)).shape == (1, 3, 64, 64)
        except Exception as exc:  # noqa: BLE001 - any failure of a thread fails the test
            errors.append(exc)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_dense_resize_weights_are_cached_by_bytes_and_can_be_dropped():
    """64 cached matrices of up to 32 MB each kept gigabytes; --max-memory counted them as held."""
    from upsample.data import bicubic, degrade
    degrade.drop_resize_caches()
    for n in range(1000, 1400, 10):  # 40 sizes of ~2000 x 1000 float64 weights: 16 MB each
        degrade.resize_matrix(n, 2 * n, 2.0)
    assert 0 < bicubic.weights_cache.currsize <= bicubic.WEIGHTS_CACHE_BYTES
    assert degrade.resize_matrix(1390, 2780, 2.0) is degrade.resize_matrix(1390, 2780, 2.0)  # still a cache
    degrade.drop_resize_caches()
    assert bicubic.weights_cache.currsize == 0


def test_api_keywords_leave_commands_and_paths_alone():
    from upsample.inference.api import in_keywords
    assert in_keywords("make it with `upsample bench --model m --calib DIR`, or pass it as --model") == \
        "make it with `upsample bench --model m --calib DIR`, or pass it as spec"
    assert in_keywords("cannot read /data/my--tile.pth (use --backend auto)") == \
        "cannot read /data/my--tile.pth (use backend='auto')"
    assert in_keywords("--device cuda:1: none here; use --device cpu.") == "device='cuda:1': none here; use device='cpu'."


def test_png_colour_chunks_are_kept(tmp_path):
    """gAMA, cHRM and sRGB say how viewers show a PNG: the upscaled PNG carries them, 8- and 16-bit."""
    import av
    from PIL.PngImagePlugin import PngInfo
    chrm = (0.3127, 0.329, 0.64, 0.33, 0.3, 0.6, 0.15, 0.06)
    tagged = PngInfo()
    tagged.add(b"gAMA", struct.pack(">I", 100000))  # linear light: shown far brighter than sRGB
    tagged.add(b"cHRM", struct.pack(">8I", *(round(v * 100000) for v in chrm)))
    base = RNG.integers(0, 256, (20, 26, 3), dtype=np.uint8)
    Image.fromarray(base).save(tmp_path / "lin.png", pnginfo=tagged)
    Image.fromarray(base).save(tmp_path / "srgb.png", pnginfo=_chunks(PngInfo(), b"sRGB", b"\x01"))
    deep = av.VideoFrame.from_ndarray((RNG.random((20, 26, 3)) * 65535).astype(np.uint16), format="rgb48le")
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = 26, 20, "rgb48be"
    data = b"".join(bytes(p) for p in [*codec.encode(deep.reformat(format="rgb48be")), *codec.encode(None)])
    gama = struct.pack(">I", 4) + b"gAMA" + struct.pack(">I", 100000)
    gama += struct.pack(">I", zlib.crc32(b"gAMA" + struct.pack(">I", 100000)))
    (tmp_path / "lin48.png").write_bytes(data[:33] + gama + data[33:])
    for name in ("lin", "srgb", "lin48"):
        assert cli.main(["image", str(tmp_path / f"{name}.png"), "-o", str(tmp_path / "out"),
                         "--model", "bicubic"]) == 0
    lin = Image.open(tmp_path / "out" / "lin_x2.png")
    assert lin.info["gamma"] == 1.0 and lin.info["chromaticity"] == chrm
    assert Image.open(tmp_path / "out" / "srgb_x2.png").info["srgb"] == 1
    assert Image.open(tmp_path / "out" / "lin48_x2.png").info["gamma"] == 1.0
    assert Image.open(tmp_path / "out" / "lin48_x2.png").size == (52, 40)


def _chunks(info, kind, body):
    info.add(kind, body)
    return info


def _tiled_tiff16(path, rgb):
    """A baseline TIFF of 16-bit RGB in one 16x16 tile, uncompressed (`rgb`: 16x16x3 uint16)."""
    data = rgb.astype("<u2").tobytes()
    entries = [(256, 3, 1, 16), (257, 3, 1, 16), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2),
               (277, 3, 1, 3), (284, 3, 1, 1), (322, 3, 1, 16), (323, 3, 1, 16), (324, 4, 1, None),
               (325, 4, 1, len(data))]
    bits_at = 8 + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(entries)))
    for tag, kind, count, value in entries:
        value = bits_at if tag == 258 else bits_at + 6 if tag == 324 else value
        single_short = kind == 3 and tag != 258
        out += struct.pack("<HHI", tag, kind, count) + struct.pack("<HH" if single_short else "<I",
                                                                    *((value, 0) if single_short else (value,)))
    path.write_bytes(bytes(out + struct.pack("<I3H", 0, 16, 16, 16) + data))


def test_a_tiled_16_bit_tiff_is_never_read_as_black(tmp_path, capsys):
    """FFmpeg decodes a tiled TIFF as zeros without an error: its reading is checked against
    Pillow's 8 bits, and Pillow's is used, said so (the output was black, exit 0)."""
    from upsample.media.imageio import read_planes
    rgb = (RNG.random((16, 16, 3)) * 65535).astype(np.uint16)
    _tiled_tiff16(tmp_path / "t.tif", rgb)
    planes = read_planes(tmp_path / "t.tif")
    assert "read as 8-bit" in capsys.readouterr().err
    assert planes.color.dtype == np.uint8 and np.array_equal(planes.color, (rgb >> 8).astype(np.uint8))


def test_a_16_bit_ppm_keeps_16_bits(tmp_path):
    """Pillow reads a 16-bit PPM as 8 bits, silently; it is decoded with FFmpeg instead."""
    deep = (RNG.random((12, 16, 3)) * 65535).astype(">u2")
    (tmp_path / "p.ppm").write_bytes(b"P6\n# a scanner's comment\n16 12\n65535\n" + deep.tobytes())
    from upsample.media.imageio import read_planes
    planes = read_planes(tmp_path / "p.ppm")
    assert planes.color.dtype == np.uint16 and np.array_equal(planes.color, deep.astype(np.uint16))


def test_a_16_bit_gray_png_with_a_transparent_value_keeps_it_as_alpha(tmp_path):
    """tRNS on a 16-bit gray PNG names the clear gray: it becomes a 16-bit alpha (it was lost)."""
    from upsample.media.imageio import read_planes
    gray = (RNG.random((20, 26)) * 65535).astype(np.uint16)
    gray[:5] = 1234
    Image.fromarray(gray).save(tmp_path / "g.png", transparency=1234)
    planes = read_planes(tmp_path / "g.png")
    assert planes.mode == "LA;16" and (planes.alpha[..., 0] == 0).sum() == (gray == 1234).sum()
    assert cli.main(["image", str(tmp_path / "g.png"), "-o", str(tmp_path / "o"), "--model", "bicubic"]) == 0
    assert (tmp_path / "o" / "g_x2.png").read_bytes()[24:26] == bytes([16, 4])  # 16-bit gray + alpha


def test_pil_float_and_int_images_come_back_in_their_mode_and_scale():
    """Mode F in [0, 1] came back as I;16 in 0..65535 (its scale silently changed), mode I as
    I;16, and a 0x0 PIL image raised an internal ValueError."""
    eng = upsample.load("bicubic", 2)
    gray = (RNG.random((9, 11)) * 65535).astype(np.uint16)
    as_16bit = eng.upscale(gray)
    floats = eng.upscale(Image.fromarray(gray.astype(np.float32) / 65535, "F"))
    assert floats.mode == "F" and floats.size == (22, 18)
    assert np.abs(np.asarray(floats) - as_16bit / 65535).max() < 1e-6  # [0, 1], computed in 16 bits
    ints = eng.upscale(Image.fromarray(gray.astype(np.int32), "I"))
    assert ints.mode == "I" and np.array_equal(np.asarray(ints), as_16bit)
    for empty in (Image.new("RGB", (0, 0)), Image.new("F", (0, 4))):
        with pytest.raises(UserError, match=r"the image is empty \(\d+x\d+\): nothing to upscale"):
            eng.upscale(empty)


@pytest.mark.parametrize("kwargs, message", [
    ({"outscale": 0}, "^outscale must be a positive number, got 0$"),
    ({"spec": "vdsr"}, r"^vdsr works at any scale \(trained at x2, x3, x4\): give one with scale \(e.g. scale=2\)$"),
    ({"threads": 0}, r"^the number of threads \(threads=\) must be >= 1, got 0$"),
    ({"tile": "64"}, "^tile must be a whole number"),
    ({"tile_batch": 1.5}, "^tile_batch must be a whole number"),
    ({"device": 0}, "^device must be a name"),
])
def test_api_errors_name_its_keywords_in_plain_words(kwargs, message):
    """The CLI's option names rewritten as `load`'s keywords: "--outscale must" became
    "outscale='must'", "--threads," lost its meaning, and tile="64" was a bare TypeError."""
    with pytest.raises(UserError, match=message):
        upsample.load(**{"spec": "espcn-rgb-x2", **kwargs}).upscale(np.zeros((8, 8, 3), np.uint8))
    from upsample.inference.api import in_keywords
    assert in_keywords("leave --precision out; use --precision int8 or --device GPU.") == \
        "leave precision out; use precision='int8' or device='GPU'."
    assert in_keywords("the tile side (--tile, tile=) must be >= 0") == "the tile side (tile=) must be >= 0"
    with pytest.raises(UserError, match="upscale takes a PIL image, a numpy array or a float tensor"):
        upsample.load("bicubic", 2).upscale("photo.png")


def test_load_value_errors_are_value_errors():
    """A bad argument value to `upsample.load` is a ValueError as well as one line (it was a
    plain UserError, past `except ValueError`)."""
    import upsample
    for kwargs in ({"scale": 0}, {"backend": "nope"}, {"threads": 0}, {"tile": -1}):
        with pytest.raises(ValueError):
            upsample.load("espcn-x3", **kwargs)

"""JPEG, noise and coarse dropout made on the training device (data/jpeg.py,
data/device_batches.py): libjpeg-turbo's codec bit for bit, the same samples as PairDataset's, and
runs that use them resume exactly on the pipeline they trained on."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, features

from upsample import cli
from upsample.data import degrade, pairs as data
from upsample.data.device_batches import DeviceBatches
from upsample.data.jpeg import jpeg_batch
from upsample.data.store import open_store
from upsample.models import checkpoint
from upsample.training import batches, config as config_mod

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
T91 = SHARED / "train" / "T91"


def _pillow_round_trip(arr: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf))


def _photo() -> np.ndarray:
    """A real photograph where the datasets are here (texture, edges, flat areas), else noise
    smoothed into something like one."""
    path = SHARED / "benchmark" / "Set14" / "baboon.png"
    if path.is_file():
        return np.asarray(Image.open(path).convert("RGB"))
    x = torch.rand(1, 3, 200, 200, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return degrade.array_to_uint8(degrade.gaussian_blur(x, 2.0)[0].permute(1, 2, 0).numpy())


@pytest.mark.skipif(not features.check_feature("libjpeg_turbo"), reason="Pillow is not built on libjpeg-turbo")
def test_jpeg_batch_is_pillows_libjpeg_turbo_bit_for_bit():
    rng = np.random.default_rng(7)
    photo = _photo()
    sizes = [(1, 1), (2, 2), (3, 3), (16, 1), (16, 3), (16, 5), (5, 16), (8, 8), (17, 33), (64, 48)]
    sizes += [tuple(int(v) for v in rng.integers(1, 60, 2)) for _ in range(30)]
    for i, (h, w) in enumerate(sizes):
        if i % 2:
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        else:
            y, x = rng.integers(0, photo.shape[0] - h), rng.integers(0, photo.shape[1] - w)
            arr = photo[y:y + h, x:x + w].copy()
        q = int(rng.integers(1, 101))
        ours = jpeg_batch(torch.from_numpy(arr).permute(2, 0, 1)[None], torch.tensor([q]))
        assert np.array_equal(ours[0].permute(1, 2, 0).numpy(), _pillow_round_trip(arr, q)), (h, w, q)
        gray = np.ascontiguousarray(arr[..., 1])
        ours = jpeg_batch(torch.from_numpy(gray)[None, None], torch.tensor([q]))
        assert np.array_equal(ours[0, 0].numpy(), _pillow_round_trip(gray, q)), ("gray", h, w, q)


# An 8x8 block (found by search, session 15's review) whose reconstruction at (1, 1) is -539 at
# quality 1: libjpeg-turbo's SIMD inverse DCT, which Pillow runs, saturates it to 0; the C code's
# range-limit table would wrap it to 255.
OVERSHOOT_Q1 = [[255, 0, 128, 255, 0, 0, 64, 0], [255, 0, 192, 255, 255, 192, 0, 255],
                [128, 0, 255, 0, 64, 255, 255, 0], [255, 64, 0, 255, 0, 255, 0, 255],
                [192, 0, 0, 255, 255, 0, 0, 255], [255, 255, 192, 0, 0, 255, 255, 0],
                [255, 192, 0, 0, 255, 0, 255, 0], [0, 0, 255, 192, 255, 255, 64, 64]]


@pytest.mark.skipif(not features.check_feature("libjpeg_turbo"), reason="Pillow is not built on libjpeg-turbo")
@pytest.mark.parametrize("channels", [1, 3])
def test_an_inverse_dct_far_out_of_range_saturates_as_pillow_s(channels):
    gray = np.array(OVERSHOOT_Q1, dtype=np.uint8)
    arr = gray if channels == 1 else np.repeat(gray[..., None], 3, 2)
    x = torch.from_numpy(arr).view(1, 8, 8, channels).permute(0, 3, 1, 2)
    ours = jpeg_batch(x, torch.tensor([1]))[0].permute(1, 2, 0).numpy()
    assert np.array_equal(ours, _pillow_round_trip(arr, 1).reshape(8, 8, channels))


def test_float64_batches_get_the_float32_decode_of_the_pillow_round_trip_it_replaced():
    """PairDataset works in float64: its JPEG samples are the codes / 255 in float32, as Pillow's
    np.float32 decode was, so that a workers run saved before the torch codec resumes exactly."""
    x = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    codes = jpeg_batch((degrade.quantize(x) * 255).round(), torch.tensor([40, 80]))
    assert torch.equal(degrade.jpeg(x, torch.tensor([40, 80])), (codes.to(torch.float32) / 255.0).double())


def test_each_image_of_a_batch_takes_its_own_quality():
    photo = _photo()
    crops = np.stack([photo[10 * i:10 * i + 40, 5 * i:5 * i + 40] for i in range(6)])
    qualities = torch.tensor([1, 10, 35, 50, 90, 100])
    x = torch.from_numpy(crops).permute(0, 3, 1, 2)
    together = jpeg_batch(x, qualities)
    for i, q in enumerate(qualities):
        assert torch.equal(together[i], jpeg_batch(x[i:i + 1], q.view(1))[0])
    err = (together - x.long()).abs().float().mean(dim=(1, 2, 3))
    assert bool((err[:-1] > err[1:]).all()), err  # lower quality, larger error
    floats = degrade.jpeg(x.double() / 255, qualities)  # the [0, 1] wrapper: the same codes
    assert floats.dtype == torch.float64 and torch.equal((floats * 255).round().long(), together)


def _images(tmp_path, n=3, side=72):
    photo = _photo()
    paths = []
    for i in range(n):
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(photo[20 * i:20 * i + side, 30 * i:30 * i + side + 8]).save(paths[-1])
    return paths


def _spec(**kw):
    return data.PairSpec(**{**dict(patch=24, scales=[2], y_channel=False, pre_upsample=False), **kw})


def test_device_jpeg_is_pair_datasets_and_dropout_and_noise_have_its_law(tmp_path):
    files = _images(tmp_path)
    store = open_store(files, tmp_path / "store")[0]
    ks = np.arange(48)
    spec = _spec(jpeg_prob=0.5, jpeg_quality=(10, 60))
    dev = DeviceBatches(store, spec, seed=3, device="cpu")
    (lr_d, hr_d), (lr_w, hr_w) = dev.make_batch(ks, 2), data.PairDataset(files, spec, seed=3).make_batch(list(ks), 2)
    assert torch.equal(hr_d, hr_w)
    # float32 against float64 may round an LR pixel to the other level, and JPEG spreads that over
    # its block: nearly every sample is identical
    same = [bool((lr_d[i] - lr_w[i]).abs().max() < 1e-6) for i in range(len(ks))]
    assert sum(same) >= len(ks) - 2, sum(same)
    u = data.uniforms(3, ks, 20)
    plain = DeviceBatches(store, _spec(), seed=3, device="cpu").make_batch(ks, 2)[0]
    assert ((lr_d != plain).flatten(1).any(1).numpy() == (u[:, data._JPEG] < 0.5)).all()

    holes = _spec(dropout_prob=0.5, dropout_holes=(1, 3), dropout_size=(2, 5))
    lr_h = DeviceBatches(store, holes, seed=3, device="cpu").make_batch(ks, 2)[0]
    black = (lr_h == 0).all(dim=1)                       # (B, 12, 12); photos have no black pixel
    dropped = u[:, data._DROPOUT] < 0.5
    assert not black[~dropped].any() and not (lr_h != plain)[~dropped].any()
    counts = black.flatten(1).sum(1).numpy()[dropped]
    assert counts.min() >= 4 and counts.max() <= 3 * 25  # 1-3 rectangles of sides 2-5
    assert torch.equal(lr_h[~black[:, None].expand_as(lr_h)], plain[~black[:, None].expand_as(plain)])
    rows, cols = black.any(2), black.any(1)             # the rectangles reach every row and column
    assert rows.any(0).all() and cols.any(0).all()

    noisy = DeviceBatches(store, _spec(noise_prob=0.5, noise_sigma=(8.0, 8.0)), seed=3, device="cpu")
    lr_n = noisy.make_batch(ks, 2)[0]
    assert torch.equal(lr_n, noisy.make_batch(ks, 2)[0])  # a function of the samples: resumable
    chose = u[:, data._NOISE] < 0.5
    diff = (lr_n - plain).flatten(1)
    assert not diff[~chose].any()
    assert abs(float(diff[chose].std()) * 255 - 8.0) < 0.5  # sigma 8, seen through the rounding


def test_auto_takes_the_device_and_a_resumed_run_keeps_its_pipeline():
    cfg = config_mod.Config()
    jpeg = _spec(jpeg_prob=0.5)
    assert batches.choose_pipeline(cfg, jpeg) == "device"
    assert batches.choose_pipeline(cfg, jpeg, {"pipeline": "workers"}) == "workers"
    assert batches.choose_pipeline(cfg, _spec(), {"step": 5}) == "device"
    # a state saved before states named their pipeline: JPEG, noise or dropout ran on the workers
    for legacy in (jpeg, _spec(noise_prob=0.1), _spec(dropout_prob=1.0)):
        assert batches.choose_pipeline(cfg, legacy, {"step": 5}) == "workers"
    cfg.data.pipeline = "device"
    assert batches.choose_pipeline(cfg, jpeg, {"pipeline": "workers"}) == "device"


DEGRADED = [f"data.train=[{json.dumps(str(T91))}]", "data.max_images=4", "data.batch_size=4",
            "val.max_images=1", "val.crop=48", "train.steps=120", "train.log_every=1", "val.every=60",
            "train.ckpt_every=60", "degrade.jpeg_prob=0.5", "degrade.noise_prob=0.5",
            "degrade.dropout_prob=0.5"]


def _run(run_dir, *extra, sets=DEGRADED):
    args = ["train", str(ROOT / "configs" / "tiny.toml"), "--run-dir", str(run_dir), "--device", "cpu"]
    return cli.main(args + [a for s in sets for a in ("--set", s)] + list(extra))


def _losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]


@pytest.mark.skipif(not T91.is_dir(), reason="needs ../shared/datasets/train/T91")
def test_a_state_saved_before_states_named_their_pipeline_resumes_on_the_workers_exactly(tmp_path, capsys):
    """Such a run made its JPEG, noise and dropout on the workers (the device did not make them):
    with "auto" in its config and no "pipeline" in its state, it goes on there, sample for sample."""
    workers = [*DEGRADED, "data.pipeline=\"workers\""]
    assert _run(tmp_path / "a", sets=workers) == 0
    assert _run(tmp_path / "b", "--max-minutes", "0.005", sets=workers) == 0
    state_file = tmp_path / "b" / "last_state.pt"
    state = torch.load(state_file, weights_only=False)
    assert 1 <= state["step"] < 120 and state.pop("pipeline") == "workers"
    torch.save(state, state_file)
    config = tmp_path / "b" / "config.toml"
    text = config.read_text()
    assert 'pipeline = "workers"' in text
    config.write_text(text.replace('pipeline = "workers"', 'pipeline = "auto"'))
    assert _run(tmp_path / "b", "--resume", sets=[]) == 0
    assert torch.load(state_file, weights_only=False)["pipeline"] == "workers"
    assert _losses(tmp_path / "b") == _losses(tmp_path / "a")


@pytest.mark.skipif(not T91.is_dir(), reason="needs ../shared/datasets/train/T91")
def test_a_run_with_every_degradation_trains_on_the_device_and_resumes_exactly(tmp_path, capsys):
    run, losses = _run, _losses

    assert run(tmp_path / "a") == 0
    assert torch.load(tmp_path / "a" / "last_state.pt", weights_only=False)["pipeline"] == "device"
    assert run(tmp_path / "b", "--max-minutes", "0.005") == 0
    assert "time limit" in capsys.readouterr().err
    assert 1 <= torch.load(tmp_path / "b" / "last_state.pt", weights_only=False)["step"] < 120
    assert run(tmp_path / "b", "--resume") == 0
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    a_w = checkpoint.load_checkpoint(tmp_path / "a" / "last.safetensors")[0].state_dict()
    b_w = checkpoint.load_checkpoint(tmp_path / "b" / "last.safetensors")[0].state_dict()
    assert all(torch.equal(a_w[k], b_w[k]) for k in a_w)

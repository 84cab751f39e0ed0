"""Review s10, `eval` against an independent numpy port of the papers' reference: BasicSR's
`calculate_psnr`/`calculate_ssim` (test_y_channel: Y of the BGR image in float32, the 11x11 Gaussian
window as one 2-D filter) and MATLAB's imresize in double; and the bicubic baseline that every
protocol reports beside the model."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from upsample import cli
from upsample.evaluation import metrics

SET5 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "benchmark" / "Set5"


# ---------------------------------------------------------------- the reference, written apart
def _basicsr_y(rgb: np.ndarray) -> np.ndarray:
    """metric_util.to_y_channel of what cv2.imread gives (BGR, gray expanded to three channels)."""
    bgr = np.dstack([rgb] * 3) if rgb.ndim == 2 else rgb[..., ::-1]
    y = np.dot(bgr.astype(np.float32) / 255., [24.966, 128.553, 65.481]) + 16.0
    return ((y / 255.).astype(np.float32) * 255.).astype(np.float64)


def _ref_psnr(a, b, c):
    a, b = _basicsr_y(a[c:-c, c:-c]), _basicsr_y(b[c:-c, c:-c])
    return 10 * np.log10(255. * 255. / np.mean((a - b) ** 2))


def _ref_ssim(a, b, c):
    a, b = _basicsr_y(a[c:-c, c:-c]), _basicsr_y(b[c:-c, c:-c])
    g = np.exp(-(np.arange(11) - 5.0) ** 2 / 4.5)
    win = np.outer(g / g.sum(), g / g.sum())
    h, w = a.shape[0] - 10, a.shape[1] - 10

    def f(x):  # cv2.filter2D(...)[5:-5, 5:-5], one tap at a time
        return sum(win[i, j] * x[i:i + h, j:j + w] for i in range(11) for j in range(11))

    mu1, mu2 = f(a), f(b)
    s1, s2, s12 = f(a * a) - mu1 ** 2, f(b * b) - mu2 ** 2, f(a * b) - mu1 * mu2
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return (((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s1 + s2 + c2))).mean()


def _pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, shape, dtype=np.uint8)
    noisy = np.clip(hr.astype(int) + rng.integers(-9, 10, shape), 0, 255).astype(np.uint8)
    return hr, noisy


@pytest.mark.parametrize("shape, crop", [((37, 53, 3), 3), ((40, 31), 2), ((24, 24, 3), 4)])
def test_metrics_match_basicsr_y_channel_reference(shape, crop):
    """Odd sizes, a gray HW image (BasicSR reads it as three equal channels), several crops."""
    hr, out = _pair(shape)
    assert metrics.psnr(out, hr, crop_border=crop) == pytest.approx(_ref_psnr(out, hr, crop), abs=1e-5)
    assert metrics.ssim(out, hr, crop_border=crop) == pytest.approx(_ref_ssim(out, hr, crop), abs=1e-7)


# ---------------------------------------------------------------- eval, end to end
def _eval(capsys, *args) -> dict:
    assert cli.main(["eval", "--json", "-", "--per-image", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def small_set(tmp_path) -> Path:
    """Two crops of Set5 pictures, sides that are no multiples of 2 or 3, and a gray one."""
    folder = tmp_path / "small"
    folder.mkdir()
    head = np.asarray(Image.open(SET5 / "head.png").convert("RGB"))
    Image.fromarray(head[40:107, 30:119]).save(folder / "odd.png")
    Image.fromarray(head[100:171, 60:120, 1]).save(folder / "gray.png")
    return folder


def test_papers_report_has_the_bicubic_baseline_beside_the_model(small_set, capsys):
    """The papers' protocol reported the model alone: the bicubic of the same LR, beside it per image
    and per set (as catid's protocol does), is the `--model bicubic` run's numbers exactly."""
    model = _eval(capsys, "--model", "espcn-x2", "--data", str(small_set))
    base = _eval(capsys, "--model", "bicubic", "--scale", "2", "--data", str(small_set))
    d, b = model["datasets"]["small"], base["datasets"]["small"]
    for row, brow in zip(d["images"], b["images"]):
        assert row["image"] == brow["image"]
        assert (row["bicubic_psnr"], row["bicubic_ssim"]) == (brow["psnr"], brow["ssim"])
        assert (brow["bicubic_psnr"], brow["bicubic_ssim"]) == (brow["psnr"], brow["ssim"])
        assert row["psnr"] > row["bicubic_psnr"]
    # set means are means of the per-image numbers (not a PSNR of the mean MSE)
    for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim"):
        assert d[k] == pytest.approx(np.mean([r[k] for r in d["images"]]), abs=1e-12)
    assert cli.main(["eval", "--model", "espcn-x2", "--data", str(small_set)]) == 0
    table = capsys.readouterr().out
    assert "bicubic PSNR / SSIM" in table and f"{d['bicubic_psnr']:.2f} / {d['bicubic_ssim']:.4f}" in table


def _matlab_bicubic(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB imresize(im2double(img), scale) (bicubic, rows first), then im2uint8, written apart."""
    x = img.astype(np.float64) / 255.0
    for axis in (0, 1):
        n = x.shape[axis]
        m = int(math.ceil(round(n * scale, 9)))
        kw = 4.0 / scale if scale < 1 else 4.0
        u = np.arange(1, m + 1) / scale + 0.5 * (1 - 1 / scale)
        idx = np.floor(u - kw / 2)[:, None] + np.arange(int(math.ceil(kw)) + 2)
        d = (u[:, None] - idx) * min(scale, 1.0)
        ad = np.abs(d)
        w = ((1.5 * ad**3 - 2.5 * ad**2 + 1) * (ad <= 1)
             + (-0.5 * ad**3 + 2.5 * ad**2 - 4 * ad + 2) * ((ad > 1) & (ad <= 2)))
        w /= w.sum(1, keepdims=True)
        mirror = np.concatenate([np.arange(n), np.arange(n)[::-1]])
        taps = mirror[np.mod(idx.astype(int) - 1, 2 * n)]
        x = np.moveaxis(sum(w[:, j, None, None] * np.moveaxis(x, axis, 0)[taps[:, j]]
                            for j in range(w.shape[1])), 0, axis)
    return np.clip(np.floor(x * 255 + 0.5), 0, 255).astype(np.uint8)


def test_papers_numbers_match_the_reference_at_x3_on_odd_sizes(small_set, capsys):
    """x3 (no rounding ties in the kernel): modcrop, MATLAB LR, bicubic up, Y metrics with crop 3 -
    the whole chain of the reference gives eval's bicubic numbers within 1e-6 dB."""
    rows = {r["image"]: r for r in _eval(capsys, "--model", "bicubic", "--scale", "3",
                                          "--data", str(small_set))["datasets"]["small"]["images"]}
    for name, row in rows.items():
        hr = np.asarray(Image.open(small_set / name).convert("RGB"))
        hr = hr[:hr.shape[0] // 3 * 3, :hr.shape[1] // 3 * 3]
        up = _matlab_bicubic(_matlab_bicubic(hr, 1 / 3), 3.0)
        assert up.shape == hr.shape
        assert row["psnr"] == pytest.approx(_ref_psnr(up, hr, 3), abs=1e-6)
        assert row["ssim"] == pytest.approx(_ref_ssim(up, hr, 3), abs=1e-8)

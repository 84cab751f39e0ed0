"""PSNR/SSIM as the papers' MATLAB protocol defines them."""

import numpy as np
import pytest

from upsample.evaluation import metrics


def test_y_of_primaries_and_gray():
    assert metrics.rgb_to_y(np.zeros((1, 1, 3), np.uint8))[0, 0] == pytest.approx(16.0)
    assert metrics.rgb_to_y(np.full((1, 1, 3), 255, np.uint8))[0, 0] == pytest.approx(235.0)
    red = np.array([[[255, 0, 0]]], np.uint8)
    assert metrics.rgb_to_y(red)[0, 0] == pytest.approx(16 + 65.481)
    gray = np.array([[100]], np.uint8)
    assert metrics.rgb_to_y(gray)[0, 0] == pytest.approx(metrics.rgb_to_y(np.full((1, 1, 3), 100, np.uint8))[0, 0])


def test_psnr_known_value_and_crop():
    a = np.zeros((20, 20), np.uint8)
    b = a.copy()
    b[5:15, 5:15] = 10  # Y difference 10 * 219/255 on a 10x10 block inside the 16x16 crop
    d = 10 * 219 / 255
    want = 10 * np.log10(255 ** 2 / (d ** 2 * 100 / 256))
    assert metrics.psnr(a, b, crop_border=2) == pytest.approx(want, abs=1e-9)
    assert metrics.psnr(a, a) == float("inf")
    # RGB PSNR: plain difference, no Y weighting.
    assert metrics.psnr(a, b, crop_border=2, y_channel=False) == pytest.approx(
        10 * np.log10(255 ** 2 / (100 * 100 / 256)), abs=1e-9)


def test_ssim_identity_and_bounds():
    rng = np.random.default_rng(0)
    a = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    assert metrics.ssim(a, a, crop_border=2) == pytest.approx(1.0)
    noisy = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    s = metrics.ssim(a, noisy, crop_border=2)
    assert 0 < s < 1
    assert metrics.ssim(a, noisy, y_channel=False) < 1


def test_ssim_matches_direct_formula_on_one_window():
    # An 11x11 image has exactly one valid window: SSIM equals the closed form with
    # Gaussian-weighted means, variances and covariance.
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (11, 11)).astype(np.uint8)
    b = rng.integers(0, 256, (11, 11)).astype(np.uint8)
    x = np.arange(11) - 5.0
    g = np.exp(-x ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    ya, yb = metrics.rgb_to_y(a), metrics.rgb_to_y(b)
    ma, mb = (w * ya).sum(), (w * yb).sum()
    va, vb = (w * ya * ya).sum() - ma ** 2, (w * yb * yb).sum() - mb ** 2
    cov = (w * ya * yb).sum() - ma * mb
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    want = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))
    assert metrics.ssim(a, b) == pytest.approx(want, abs=1e-12)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        metrics.psnr(np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))

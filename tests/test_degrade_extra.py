"""Training degradations appended to degrade.py: Gaussian blur + subsample, noise, JPEG."""

import pytest
import torch

from upsample.data import degrade


def test_gaussian_kernel_normalised_and_symmetric():
    g = degrade.gaussian_kernel(1.5)
    assert g.numel() == 11
    assert abs(float(g.sum()) - 1.0) < 1e-12
    assert torch.equal(g, g.flip(0))
    assert int(g.argmax()) == 5


def test_blur_keeps_constant_and_spreads_impulse():
    const = torch.full((1, 3, 16, 16), 0.3, dtype=torch.float64)
    assert torch.allclose(degrade.gaussian_blur(const, 1.2), const, atol=1e-12)
    x = torch.zeros(1, 1, 15, 15, dtype=torch.float64)
    x[..., 7, 7] = 1.0
    y = degrade.gaussian_blur(x, 1.0)
    assert abs(float(y.sum()) - 1.0) < 1e-9 and float(y[..., 7, 7]) < 0.2
    assert torch.allclose(y, y.transpose(-1, -2))


def test_blur_subsample_grid_centred_for_odd_scale():
    x = torch.zeros(1, 1, 12, 12, dtype=torch.float64)
    x[..., 4, 7] = 1.0  # centre of the LR pixel (1, 2) block at scale 3
    lr = degrade.blur_subsample(x, 3, 0.8)
    assert lr.shape == (1, 1, 4, 4)
    assert tuple(int(i) for i in divmod(int(lr.argmax()), 4)) == (1, 2)


def test_noise_is_seeded_and_has_the_requested_sigma():
    x = torch.full((1, 3, 64, 64), 0.5)
    a = degrade.add_noise(x, 10.0, torch.Generator().manual_seed(3))
    b = degrade.add_noise(x, 10.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert abs(float((a - x).std()) * 255 - 10.0) < 0.5


def test_jpeg_round_trip_is_lossy_and_close():
    g = torch.Generator().manual_seed(0)
    x = degrade.gaussian_blur(torch.rand(2, 3, 32, 32, generator=g, dtype=torch.float64), 1.0)
    y = degrade.jpeg(x, 50)
    assert y.shape == x.shape and y.dtype == x.dtype
    err = float((y - x).abs().mean())
    assert 0 < err < 0.05
    assert float((degrade.jpeg(x, 95) - x).abs().mean()) < err
    gray = degrade.jpeg(x[:, :1], 70)
    assert gray.shape == (2, 1, 32, 32)


@pytest.mark.parametrize("scale,size", [(1 / 3, None), (0.5, None), (1 / 4, None), (3.0, None), (4.0, (44, 44))])
def test_imresize_dense_path_matches_gather_path(scale, size, monkeypatch):
    x = torch.rand(4, 3, 36, 36, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    if scale > 1:
        x = x[..., :11, :11]
    b = degrade.imresize(x, scale, size=size)  # small: matrix products
    monkeypatch.setattr(degrade, "_DENSE_LIMIT", 0)
    a = degrade.imresize(x, scale, size=size)  # gather form
    assert a.shape == b.shape
    assert float((a - b).abs().max()) < 1e-12
    assert torch.equal(degrade.quantize(a), degrade.quantize(b))

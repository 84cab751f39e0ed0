"""MATLAB-compatible bicubic: values derived by hand from the algorithm, and its invariants."""

import numpy as np
import pytest
import torch

from upsample.data.degrade import contributions, cubic, imresize, imresize_np, output_size


def test_keys_kernel_values():
    # a = -0.5: 1 at 0, 0 at the integers, -0.0703125 at 1.25, 0.8671875 at 0.25.
    x = np.array([0.0, 0.25, 0.75, 1.0, 1.25, 1.75, 2.0, 2.5])
    want = [1.0, 0.8671875, 0.2265625, 0.0, -0.0703125, -0.0234375, 0.0, 0.0]
    np.testing.assert_allclose(cubic(x), want, atol=1e-12)


def test_x2_upscale_weights_derived_by_hand():
    # Output pixel x (1-based) maps to u = x/2 + 1/4; for x = 4, u = 2.25: taps 1..4 (0-based 0..3)
    # at distances 1.25, 0.25, -0.75, -1.75 -> weights below (they sum to 1).
    idx, w = contributions(8, 16, 2.0)
    row = dict(zip(idx[3].tolist(), w[3].tolist()))
    for tap, want in {0: -0.0703125, 1: 0.8671875, 2: 0.2265625, 3: -0.0234375}.items():
        assert row[tap] == pytest.approx(want, abs=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)


def test_x2_downscale_is_widened_and_mirrored():
    # Downscale by 2 with antialiasing: kernel width 8, 10 taps minus the all-zero columns;
    # out pixel 1 sits at u = 1.5, exactly between inputs 1 and 2: symmetric weights.
    idx, w = contributions(6, 3, 0.5)
    assert w.shape[1] == 8
    x = np.arange(6, dtype=np.float64)
    out = (x[idx] * w).sum(axis=1)
    # Mirrored boundary (edge repeated): the first output uses inputs 1, 0, 0, 1, 2... symmetric
    # about 0.5 in 0-based coordinates.
    assert idx[0].min() == 0 and idx.max() == 5
    assert out[1] == pytest.approx(2.5, abs=1e-12)  # centre of a linear ramp stays on the ramp


@pytest.mark.parametrize("scale", [0.25, 1 / 3, 0.5, 0.4, 1.5, 2, 2.5, 3, 4])
def test_constant_stays_constant(scale):
    x = torch.full((1, 3, 23, 17), 0.37, dtype=torch.float64)
    y = imresize(x, scale)
    assert y.shape[-2:] == (output_size(23, scale), output_size(17, scale))
    torch.testing.assert_close(y, torch.full_like(y, 0.37), atol=1e-12, rtol=0)


@pytest.mark.parametrize("scale", [2, 3, 4, 2.5])
def test_linear_ramp_reproduced_in_the_interior(scale):
    # Keys' cubic reproduces linear functions exactly away from the (mirrored) border.
    w = 40
    ramp = torch.arange(w, dtype=torch.float64).repeat(1, 1, 5, 1)
    y = imresize(ramp, scale)[0, 0, 2]
    u = torch.arange(1, y.shape[-1] + 1, dtype=torch.float64) / scale + 0.5 * (1 - 1 / scale) - 1
    inner = slice(int(3 * scale), -int(3 * scale))
    torch.testing.assert_close(y[inner], u[inner], atol=1e-10, rtol=0)


def test_symmetric_input_gives_symmetric_output():
    g = torch.Generator().manual_seed(0)
    half = torch.rand(1, 1, 12, 9, generator=g, dtype=torch.float64)
    x = torch.cat([half, half.flip(-1)], dim=-1)
    x = torch.cat([x, x.flip(-2)], dim=-2)
    for scale in (0.5, 2, 3):
        y = imresize(x, scale)
        torch.testing.assert_close(y, y.flip(-1), atol=1e-12, rtol=0)
        torch.testing.assert_close(y, y.flip(-2), atol=1e-12, rtol=0)


def test_shape_rules_and_sizes():
    x = torch.rand(2, 3, 31, 45)
    assert imresize(x, 0.5).shape == (2, 3, 16, 23)        # ceil(15.5), ceil(22.5)
    assert imresize(x, 1 / 3).shape == (2, 3, 11, 15)
    assert imresize(x, size=(10, 7)).shape == (2, 3, 10, 7)
    assert imresize(x[0, 0], 2).shape == (62, 90)          # plain HW works too
    with pytest.raises(ValueError):
        imresize(x, -2)
    with pytest.raises(TypeError):
        imresize(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 2)


def test_numpy_wrapper_matches_torch_and_rounds_uint8():
    rng = np.random.default_rng(1)
    img = (rng.random((20, 14, 3)) * 255).astype(np.uint8)
    out = imresize_np(img, 0.5)
    assert out.dtype == np.uint8 and out.shape == (10, 7, 3)
    ref = imresize(torch.from_numpy(img.astype(np.float64) / 255).permute(2, 0, 1), 0.5)
    np.testing.assert_array_equal(out, np.clip(np.round(ref.permute(1, 2, 0).numpy() * 255), 0, 255))
    gray = imresize_np(img[..., 0].astype(np.float64), 2)
    assert gray.shape == (40, 28) and gray.dtype == np.float64


def test_x2_down_then_known_values_of_a_delta():
    # A single bright pixel downscaled by 2 spreads with the widened kernel scale*cubic(scale*d).
    x = torch.zeros(1, 1, 1, 16, dtype=torch.float64)
    x[..., 8] = 1.0
    y = imresize(x, (1, 0.5))[0, 0, 0]
    # Output 5 (1-based) sits at u = 5 / 0.5 + 0.5 * (1 - 2) = 9.5, 0.5 from input 9 (1-based):
    # weight 0.5 * cubic(0.25) = 0.43359375.
    assert y[4].item() == pytest.approx(0.5 * 0.8671875, abs=1e-12)
    # The kernel's integer samples sum to 1 (partition of unity), so the delta's mass halves.
    assert y.sum().item() == pytest.approx(0.5, abs=1e-12)

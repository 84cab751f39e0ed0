"""`upsample eval` review: strict-JSON reports, one-line read errors, and the metrics checked
against BasicSR's `calculate_psnr` / `calculate_ssim` (test_y_channel, crop_border) and
scikit-image's `structural_similarity` defaults, rewritten here from their published formulas."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import correlate, uniform_filter

from upsample.cli import main
from upsample.evaluation import metrics


def strict_json(text: str):
    """json.loads that refuses Python's NaN / Infinity, as jq and JavaScript do."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_identical_output_gives_standard_json_with_null_psnr(tmp_path, capsys):
    data = tmp_path / "d"
    data.mkdir()
    Image.new("RGB", (32, 32), (120, 30, 200)).save(data / "flat.png")  # bicubic down-up: exact
    assert main(["eval", "--scale", "2", "--data", str(data), "--per-image", "--json"]) == 0
    report = strict_json(capsys.readouterr().out)
    assert report["datasets"]["d"]["psnr"] is None and report["datasets"]["d"]["images"][0]["psnr"] is None
    assert report["datasets"]["d"]["ssim"] == pytest.approx(1.0)
    out = tmp_path / "r.json"
    assert main(["eval", "--scale", "2", "--data", str(data), "--json", str(out)]) == 0
    assert "inf" in capsys.readouterr().out  # the table still says it
    assert strict_json(out.read_text())["datasets"]["d"]["psnr"] is None


def test_unreadable_image_is_named_once(tmp_path, capsys):
    data = tmp_path / "d"
    data.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data / "x.png")
    (data / "broken.png").write_bytes((data / "x.png").read_bytes()[:300])  # cut off: "truncated"
    (data / "x.png").unlink()
    assert main(["eval", "--scale", "2", "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.count("broken.png") == 1


# --- the metrics against the reference implementations' formulas -----------------------------

def basicsr_y(img_rgb: np.ndarray) -> np.ndarray:
    """BasicSR's to_y_channel: float32 [0, 1], bgr2ycbcr(y_only) (float32 out, / 255), times 255."""
    bgr = img_rgb[..., ::-1].astype(np.float32) / np.float32(255.0)
    y01 = ((np.dot(bgr, [24.966, 128.553, 65.481]) + 16.0) / 255.0).astype(np.float32)
    return y01[..., None] * np.float32(255.0)


def basicsr_psnr_ssim(img: np.ndarray, ref: np.ndarray, crop: int, y: bool) -> tuple[float, float]:
    a, b = (x[crop:-crop, crop:-crop] if crop else x for x in (img, ref))
    a, b = ((basicsr_y(a), basicsr_y(b)) if y else (a, b))
    a, b = a.astype(np.float64), b.astype(np.float64)
    psnr = 10 * np.log10(255.0 ** 2 / np.mean((a - b) ** 2))
    g = np.exp(-(np.arange(11) - 5.0) ** 2 / (2 * 1.5 ** 2))
    window = np.outer(g / g.sum(), g / g.sum())
    f = lambda x: correlate(x, window, mode="mirror")[5:-5, 5:-5]  # cv2.filter2D, then 'valid'
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssims = []
    for i in range(a.shape[2]):
        x, z = a[..., i], b[..., i]
        m1, m2 = f(x), f(z)
        s1, s2, s12 = f(x * x) - m1 ** 2, f(z * z) - m2 ** 2, f(x * z) - m1 * m2
        ssims.append((((2 * m1 * m2 + c1) * (2 * s12 + c2)) / ((m1 ** 2 + m2 ** 2 + c1) * (s1 + s2 + c2))).mean())
    return psnr, float(np.mean(ssims))


def skimage_ssim(a01: np.ndarray, b01: np.ndarray) -> float:
    """structural_similarity(a, b, channel_axis=-1, data_range=1) with its defaults."""
    out = []
    for c in range(a01.shape[2]):
        x, z = a01[..., c], b01[..., c]
        u = lambda v: uniform_filter(v, size=7)
        ux, uz = u(x), u(z)
        vx, vz, vxz = (49 / 48 * (u(p * q) - m * n) for p, q, m, n in ((x, x, ux, ux), (z, z, uz, uz), (x, z, ux, uz)))
        s = ((2 * ux * uz + 1e-4) * (2 * vxz + 9e-4)) / ((ux ** 2 + uz ** 2 + 1e-4) * (vx + vz + 9e-4))
        out.append(s[3:-3, 3:-3].mean())
    return float(np.mean(out))


@pytest.mark.parametrize("crop,y", [(0, True), (3, True), (4, False)])
def test_metrics_match_basicsr(crop, y):
    rng = np.random.default_rng(crop)
    ref = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    img = np.clip(ref.astype(int) + rng.integers(-20, 21, ref.shape), 0, 255).astype(np.uint8)
    p, s = basicsr_psnr_ssim(img, ref, crop, y)
    assert metrics.psnr(img, ref, crop_border=crop, y_channel=y) == pytest.approx(p, abs=1e-4)
    assert metrics.ssim(img, ref, crop_border=crop, y_channel=y) == pytest.approx(s, abs=1e-6)


def test_uniform_ssim_matches_scikit_image_defaults():
    rng = np.random.default_rng(7)
    ref = rng.integers(0, 256, (30, 33, 3), dtype=np.uint8)
    img = np.clip(ref.astype(int) + rng.integers(-30, 31, ref.shape), 0, 255).astype(np.uint8)
    want = skimage_ssim(img / 255.0, ref / 255.0)
    assert metrics.ssim(img, ref, y_channel=False, window="uniform") == pytest.approx(want, abs=1e-9)


def test_too_small_image_stops_the_run_before_any_image_is_evaluated(tmp_path, capsys, monkeypatch):
    from upsample.evaluation import evaluate
    data = tmp_path / "d"
    (data / "sub").mkdir(parents=True)
    Image.new("RGB", (40, 40), (10, 200, 30)).save(data / "a.png")
    Image.new("RGB", (14, 30), (10, 200, 30)).save(data / "sub" / "z.jpg")  # 14 - 2*2 < 11 at x2

    def evaluated(self, hr):
        raise AssertionError("an image was evaluated before the sizes were checked")
    monkeypatch.setattr(evaluate.Run, "image", evaluated)
    assert main(["eval", "--scale", "2", "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "z.jpg" in err and "14x30" in err and "--crop" in err
    assert main(["eval", "--scale", "2", "--protocol", "catid", "--data", str(data)]) == 2  # 14 - 8 < 7
    assert "z.jpg" in capsys.readouterr().err

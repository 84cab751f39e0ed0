"""Draws assets/sample.png, the `make demo` input: our own procedural picture (no third-party
image), with what super-resolution is judged on: edges at many angles, smooth gradients, small
text, fine periodic and random texture. Run: python assets/make_sample.py"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

W, H = 160, 120


def draw() -> Image.Image:
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    sky = np.stack([40 + 120 * y / H, 90 + 100 * y / H, 200 - 60 * y / H], -1)  # vertical gradient
    img = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse((12, 10, 52, 50), fill=(250, 210, 60), outline=(120, 60, 0), width=2)  # sun
    for k in range(12):  # rays: edges at every angle
        a = k * np.pi / 6
        d.line((32 + 24 * np.cos(a), 30 + 24 * np.sin(a), 32 + 31 * np.cos(a), 30 + 31 * np.sin(a)),
               fill=(255, 240, 150), width=1)
    d.polygon([(60, 95), (95, 35), (130, 95)], fill=(90, 110, 90), outline=(20, 30, 20))  # mountain
    d.polygon([(86, 51), (95, 35), (104, 51), (99, 48), (95, 53), (90, 48)], fill=(245, 245, 250))
    d.rectangle((118, 14, 152, 40), fill=(200, 40, 40), outline=(0, 0, 0))
    font = ImageFont.load_default()
    d.text((121, 15), "SR x2", fill=(255, 255, 255), font=font)
    arr = np.asarray(img).astype(np.float64)
    ground = y > 95  # fine texture: a zone plate ring pattern and grass-like noise
    rng = np.random.default_rng(6)
    zone = 0.5 + 0.5 * np.cos(((x - 80) ** 2 + (y - 140) ** 2) / 24.0)
    grass = np.stack([60 + 60 * zone, 110 + 70 * zone, 40 + 30 * zone], -1) + rng.normal(0, 10, (H, W, 1))
    arr[ground] = grass[ground]
    stripes = (x > 136) & (y > 46) & (y < 90)  # 1-pixel stripes and a checkerboard: aliasing tests
    arr[stripes] = (255 * ((x[stripes].astype(int) // 1) % 2))[:, None]
    check = (x > 136) & (y >= 90) & (y <= 95)
    arr[check] = (255 * ((x[check].astype(int) + y[check].astype(int)) % 2))[:, None]
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    ImageDraw.Draw(img).text((4, 104), "upsample 0123456789", fill=(250, 250, 250), font=font)
    return img


if __name__ == "__main__":
    out = Path(__file__).with_name("sample.png")
    draw().save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KB)")
    # the same picture inside the package: `--backend auto` checks bf16 against fp32 on it
    probe = Path(__file__).resolve().parents[1] / "src" / "upsample" / "assets" / "probe.png"
    probe.parent.mkdir(exist_ok=True)
    draw().save(probe, optimize=True)
    print(f"wrote {probe}")

"""Small smooth training pictures for the tests that train on a user's own folder."""

import numpy as np
from PIL import Image


def smooth_photos(folder, n=6, side=72):
    """`n` RGB PNGs of side x side in a new `folder`: random 1/8-size pictures upscaled bicubic."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((side, side), Image.BICUBIC).save(folder / f"p{i}.png")
    return folder

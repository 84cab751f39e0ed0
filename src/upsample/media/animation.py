"""Whether an image file is animated (GIF, APNG, animated WebP): such a file is a sequence of
frames, which `upsample image` must not silently cut to its first and `upsample video` reads
frame by frame.

Pillow only (no torch, no PyAV): `upsample image` imports it at start-up.
"""

from __future__ import annotations

import os
import struct
import warnings

from PIL import Image, UnidentifiedImageError

# formats whose extra frames are an animation (a multi-page TIFF or an MPO's second view are not)
ANIMATION_FORMATS = ("GIF", "PNG", "WEBP")
VIDEO_FORMATS = ("MPEG",)  # Pillow identifies an MPEG video stream's header, reads no frame of it
# formats without a signature that Pillow guesses from a few header bytes: taken only under their
# own extensions (a raw AV1 .obu stream was read as a 2080x3890 TGA, so a still image)
UNSIGNED_FORMATS = {"TGA": (".tga", ".icb", ".vda", ".vst")}


def image_frame_count(path: str | os.PathLike) -> int | None:
    """The frames of an image file Pillow identifies: 1 for a still (also a multi-page TIFF),
    n for an animation in one of `ANIMATION_FORMATS`; None when Pillow does not read it as an
    image (a video, say). Only the header and frame index are read, never the pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a count: a damaged header's warnings come when it is read
            with Image.open(path) as im:
                if im.format in VIDEO_FORMATS:
                    return None
                own = UNSIGNED_FORMATS.get(im.format)
                if own and not os.fspath(path).lower().endswith(own):
                    return None
                if im.format in ANIMATION_FORMATS and getattr(im, "is_animated", False):
                    return int(im.n_frames)
                return 1
    except Image.DecompressionBombError:
        return 1  # a (huge) still picture
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error):
        return None  # damaged (a GIF cut inside its frames): `open_image` says so when it is read


def is_animated_image(path: str | os.PathLike) -> bool:
    """An image file of more than one frame of animation (GIF, APNG, WebP)."""
    return (image_frame_count(path) or 0) > 1

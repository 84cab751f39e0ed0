"""upsample: image and video super-resolution.

Tensor contract everywhere inside the package: float NCHW RGB (or Y for Y-channel models) in [0, 1].
uint8/uint16, fp16 and YCbCr conversions live only in thin wrappers at the edges.
"""

__version__ = "0.1.0"


def load(spec: str = "bicubic", scale: float | None = None, **kwargs):
    """An image upscaler: `upsample.load("vapsr-x2").upscale(image)` for PIL images and uint8 /
    uint16 numpy arrays. See `upsample.inference.api.load` for the options (backend, device, tile ...)."""
    from .inference.api import load as _load
    return _load(spec, scale, **kwargs)

"""upsample: image and video super-resolution.

Tensor contract everywhere inside the package: float NCHW RGB (or Y for Y-channel models) in [0, 1].
uint8/uint16, fp16 and YCbCr conversions live only in thin wrappers at the edges.
"""

__version__ = "0.1.0"


def load(spec: str | None = None, scale: float | None = None, **kwargs):
    """An image upscaler: `upsample.load("espcn-x3").upscale(image)` for PIL images, uint8 /
    uint16 numpy arrays (RGB order; OpenCV's BGR as a[..., ::-1]) and float tensors in [0, 1]
    (`upsample.load("vdsr", 2)(x)`, as spandrel's); `upsample.load(scale=4)` takes the best shipped
    model at x4, as the CLI. See `upsample.inference.api.load` for the options (backend, device,
    tile ...)."""
    from .inference.api import load as _load
    return _load(spec, scale, **kwargs)

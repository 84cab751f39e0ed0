"""upsample: image and video super-resolution.

Tensor contract everywhere inside the package: float NCHW RGB (or Y for Y-channel models) in [0, 1].
uint8/uint16, fp16 and YCbCr conversions live only in thin wrappers at the edges.
"""

__version__ = "0.1.0"

"""JPEG compression of a whole batch on its own device: libjpeg-turbo's baseline codec, as
Pillow drives it by default, in exact integer arithmetic in torch (int64, and float64 matrix
products whose values stay below 2^53), so that training makes its JPEG LR where it trains (as
Real-ESRGAN's DiffJPEG does on the GPU) and the pixels are libjpeg's, bit for bit.

Each stage is the integer code of libjpeg-turbo 6b-compatible paths: jccolor's RGB -> YCbCr,
jcprepct/jcsample's edge replication and h2v2 (4:2:0) averaging with its alternating bias,
jfdctint's islow DCT, jcdctmgr's reciprocal quantization, jidctint's islow inverse with its
saturation, jdsample's "fancy" triangle upsampling of the chroma, and jdcolor's YCbCr ->
RGB. Quality tables follow jpeg_set_quality(q, force_baseline=TRUE). Entropy coding is lossless
and is skipped. Each image takes its own quality; 1-channel batches are coded as grayscale.
"""

from __future__ import annotations

from functools import lru_cache

import torch

# Annex K's tables, natural order (jcparam.c std_luminance_quant_tbl / std_chrominance_quant_tbl)
_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
         14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
         18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
         49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_CHROMA = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
           24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32

_CONST_BITS, _PASS1_BITS, _SCALE_BITS = 13, 2, 16
# jfdctint.c / jidctint.c's FIX(x) at CONST_BITS = 13
(_F0298, _F0390, _F0541, _F0765, _F0899, _F1175, _F1501, _F1847, _F1961, _F2053, _F2562,
 _F3072) = (2446, 3196, 4433, 6270, 7373, 9633, 12299, 15137, 16069, 16819, 20995, 25172)


def _fix(x: float) -> int:
    return int(x * (1 << _SCALE_BITS) + 0.5)


def quality_tables(quality: torch.Tensor) -> torch.Tensor:
    """(N, 2, 8, 8) int64 luma and chroma quantization tables of each image's quality (1-100)."""
    q = quality.to(torch.int64).clamp(1, 100)
    scale = torch.where(q < 50, 5000 // q, 200 - 2 * q).view(-1, 1, 1, 1)
    return ((_base_tables(q.device) * scale + 50) // 100).clamp(1, 255)


@lru_cache(maxsize=8)
def _base_tables(device: torch.device) -> torch.Tensor:
    return torch.tensor((_LUMA, _CHROMA), dtype=torch.int64, device=device).view(1, 2, 8, 8)


@lru_cache(maxsize=8)
def _reciprocals(device: torch.device) -> torch.Tensor:
    """(256, 3) float64: jcdctmgr.c compute_reciprocal(q << 3) of each table value q: the
    reciprocal, the rounding correction and 2^-shift, with which its quantize() divides,
    |coef| -> ((|coef| + correction) * reciprocal) >> shift."""
    rows = [(0, 0, 1.0)]
    for q in range(1, 256):
        divisor = q << 3
        r = 16 + divisor.bit_length() - 1
        fq, fr = divmod(1 << r, divisor)
        c = divisor // 2
        if fr == 0:
            fq, r = fq >> 1, r - 1
        elif fr <= divisor // 2:
            c += 1
        else:
            fq += 1
        rows.append((fq, c, 2.0 ** -r))
    return torch.tensor(rows, dtype=torch.float64, device=device)


def _fdct_1d(d: list) -> list:
    """jfdctint.c's pass over 8 samples, before its final descale: the DC and the 4th output
    scaled by 2^CONST_BITS, so that one descale by 11 (rows) or 15 (columns) gives both passes'
    outputs. Linear: it runs on ints to make the pass's matrix."""
    tmp0, tmp7, tmp1, tmp6 = d[0] + d[7], d[0] - d[7], d[1] + d[6], d[1] - d[6]
    tmp2, tmp5, tmp3, tmp4 = d[2] + d[5], d[2] - d[5], d[3] + d[4], d[3] - d[4]
    tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
    z1 = (tmp12 + tmp13) * _F0541
    even = [(tmp10 + tmp11) << _CONST_BITS, z1 + tmp13 * _F0765, (tmp10 - tmp11) << _CONST_BITS,
            z1 - tmp12 * _F1847]
    z1, z2, z3, z4 = tmp4 + tmp7, tmp5 + tmp6, tmp4 + tmp6, tmp5 + tmp7
    z5 = (z3 + z4) * _F1175
    z1, z2 = -z1 * _F0899, -z2 * _F2562
    z3, z4 = -z3 * _F1961 + z5, -z4 * _F0390 + z5
    odd = [tmp7 * _F1501 + z1 + z4, tmp6 * _F3072 + z2 + z3, tmp5 * _F2053 + z2 + z4,
           tmp4 * _F0298 + z1 + z3]
    return [even[0], odd[0], even[1], odd[1], even[2], odd[2], even[3], odd[3]]


def _idct_1d(d: list) -> list:
    """jidctint.c's pass over 8 coefficients, before its descale by 11 (columns) or 18 (rows).
    Its all-zero-AC shortcut gives the same numbers."""
    z1 = (d[2] + d[6]) * _F0541
    tmp2, tmp3 = z1 - d[6] * _F1847, z1 + d[2] * _F0765
    tmp0, tmp1 = (d[0] + d[4]) << _CONST_BITS, (d[0] - d[4]) << _CONST_BITS
    tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
    o0, o1, o2, o3 = d[7], d[5], d[3], d[1]
    z1, z2, z3, z4 = o0 + o3, o1 + o2, o0 + o2, o1 + o3
    z5 = (z3 + z4) * _F1175
    z1, z2 = -z1 * _F0899, -z2 * _F2562
    z3, z4 = -z3 * _F1961 + z5, -z4 * _F0390 + z5
    o0, o1 = o0 * _F0298 + z1 + z3, o1 * _F2053 + z2 + z4
    o2, o3 = o2 * _F3072 + z2 + z3, o3 * _F1501 + z1 + z4
    return [tmp10 + o3, tmp11 + o2, tmp12 + o1, tmp13 + o0, tmp13 - o0, tmp12 - o1, tmp11 - o2, tmp10 - o3]


@lru_cache(maxsize=16)
def _matrix(transform, device: torch.device) -> torch.Tensor:
    """The (8, 8) integer matrix of a linear 1-D pass, as float64 on `device` (every product and
    sum of a pass stays below 2^53: exact). Cached per device: no copy from the host per batch."""
    columns = [transform([int(j == k) for j in range(8)]) for k in range(8)]
    return torch.tensor(columns, dtype=torch.float64, device=device).T


def _pass(blocks: torch.Tensor, transform, shift: int, dim: int) -> torch.Tensor:
    """One pass along `dim` (-1: rows, -2: columns) of (..., 8, 8) float64 blocks, then its
    descale: (x + 2^(shift-1)) >> shift."""
    m = _matrix(transform, blocks.device)
    out = blocks @ m.T if dim == -1 else m @ blocks
    return torch.floor((out + 2.0 ** (shift - 1)) * 2.0 ** -shift)


def _code_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Encode and decode an (N, H, W) int64 plane of samples 0..255, H and W multiples of 8, with
    each image's (N, 8, 8) table: the decoded samples."""
    n, h, w = plane.shape
    blocks = (plane - 128).double().view(n, h // 8, 8, w // 8, 8).transpose(2, 3)  # (N, by, bx, 8, 8)
    coef = _pass(_pass(blocks, _fdct_1d, _CONST_BITS - _PASS1_BITS, -1), _fdct_1d,
                 _CONST_BITS + _PASS1_BITS, -2)
    recip, corr, down = (t[:, None, None] for t in _reciprocals(plane.device)[table].unbind(-1))
    quantized = torch.sign(coef) * torch.floor((coef.abs() + corr) * recip * down)
    dequantized = quantized * table[:, None, None]
    out = _pass(_pass(dequantized, _idct_1d, _CONST_BITS - _PASS1_BITS, -2), _idct_1d,
                _CONST_BITS + _PASS1_BITS + 3, -1)
    # +128 and saturated, as libjpeg-turbo's SIMD inverse DCT (what Pillow runs) does: its C code's
    # range-limit table agrees for values within [-512, 512) and wraps beyond (quality <= ~5)
    out = out.clamp(-128, 127).long() + 128
    return out.transpose(2, 3).reshape(n, h, w)


def _extend(x: torch.Tensor, h: int, w: int, before: int = 0) -> torch.Tensor:
    """(..., H, W) -> (..., h, w): `before` rows and columns ahead of it, the rest after it, each
    a copy of the nearest edge row or column (libjpeg's edge replication; any dtype)."""
    rows = (torch.arange(h, device=x.device) - before).clamp(0, x.shape[-2] - 1)
    cols = (torch.arange(w, device=x.device) - before).clamp(0, x.shape[-1] - 1)
    return x.index_select(-2, rows).index_select(-1, cols)


def _up8(n: int) -> int:
    return -(-n // 8) * 8


def _rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """jccolor.c rgb_ycc_convert on (N, 3, H, W) int64."""
    r, g, b = rgb.unbind(1)
    half, offset = 1 << (_SCALE_BITS - 1), 128 << _SCALE_BITS
    y = (_fix(0.299) * r + _fix(0.587) * g + _fix(0.114) * b + half) >> _SCALE_BITS
    cb = (-_fix(0.16874) * r - _fix(0.33126) * g + _fix(0.5) * b + offset + half - 1) >> _SCALE_BITS
    cr = (_fix(0.5) * r - _fix(0.41869) * g - _fix(0.08131) * b + offset + half - 1) >> _SCALE_BITS
    return torch.stack([y, cb, cr], 1)


def _ycbcr_to_rgb(y: torch.Tensor, cb: torch.Tensor, cr: torch.Tensor) -> torch.Tensor:
    """jdcolor.c ycc_rgb_convert: (N, H, W) int64 planes -> (N, 3, H, W)."""
    half = 1 << (_SCALE_BITS - 1)
    cb, cr = cb - 128, cr - 128
    r = y + ((_fix(1.402) * cr + half) >> _SCALE_BITS)
    g = y + ((-_fix(0.34414) * cb - _fix(0.71414) * cr + half) >> _SCALE_BITS)
    b = y + ((_fix(1.772) * cb + half) >> _SCALE_BITS)
    return torch.stack([r, g, b], 1).clamp(0, 255)


def _downsample(c: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A full-size chroma plane (N, h, w) -> its 4:2:0 plane as the encoder codes it: jcsample's
    h2v2 average (bias 1, 2, 1, 2, ... along a row) of the plane with its last column replicated
    to the blocks' width and its last row to an even count, then the last averaged row
    replicated to the blocks' height."""
    hc, wc = -(-h // 2), _up8(-(-w // 2))
    c = _extend(c, 2 * hc, 2 * wc)
    sums = c[:, 0::2, 0::2] + c[:, 0::2, 1::2] + c[:, 1::2, 0::2] + c[:, 1::2, 1::2]
    bias = torch.arange(wc, device=c.device) % 2 + 1
    return _extend((sums + bias) >> 2, _up8(hc), wc)


def _upsample(c: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """jdsample.c h2v2_fancy_upsample of the decoded chroma's first ceil(h/2) x ceil(w/2) samples
    (rows and columns beyond the image replicate its edge), cropped to (h, w); as jinit_upsampler
    chooses, plain h2v2_upsample (each sample doubled) where the chroma is 1 or 2 columns wide."""
    hc, wc = -(-h // 2), -(-w // 2)
    if wc <= 2:
        return c[:, :hc, :wc].repeat_interleave(2, 1).repeat_interleave(2, 2)[:, :h, :w]
    c = _extend(c[:, :hc, :wc], hc + 2, wc + 2, before=1)
    near = 3 * c[:, 1:-1]
    rows = torch.stack([near + c[:, :-2], near + c[:, 2:]], 2).reshape(c.shape[0], 2 * hc, wc + 2)
    near = 3 * rows[..., 1:-1]
    out = torch.stack([(near + rows[..., :-2] + 8) >> 4, (near + rows[..., 2:] + 7) >> 4], -1)
    return out.reshape(c.shape[0], 2 * hc, 2 * wc)[:, :h, :w]


def jpeg_batch(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Each image of uint8-valued NCHW `x` (C = 3 for RGB, 1 for gray; any integer or float dtype
    holding 0..255) JPEG-coded at its quality (N ints, 1-100; 4:2:0 for RGB) and decoded, as
    Pillow's save(quality=q) and open() do: int64 samples 0..255, on x's device."""
    n, c, h, w = x.shape
    if c not in (1, 3):
        raise ValueError(f"JPEG codes 1 or 3 channels, got {c}")
    tables = quality_tables(quality.to(x.device))
    pixels = x.to(torch.int64)
    if c == 1:
        luma = _extend(pixels[:, 0], _up8(h), _up8(w))
        return _code_plane(luma, tables[:, 0])[:, None, :h, :w]
    ycc = _rgb_to_ycbcr(pixels)
    luma = _code_plane(_extend(ycc[:, 0], _up8(h), _up8(w)), tables[:, 0])[:, :h, :w]
    chroma = [_upsample(_code_plane(_downsample(ycc[:, i], h, w), tables[:, 1]), h, w) for i in (1, 2)]
    return _ycbcr_to_rgb(luma, *chroma)

"""Tile geometry: where tiles are cut, how far they reach into their neighbours, where they land.

Plain integer maths, no model and no memory: a region is (y0, y1, x0, x1), rows y0..y1-1 and
columns x0..x1-1 of an h x w image. A tile is a region cut with `pad` pixels of its real
neighbours on every side (fewer at the image border, where the untiled run sees the same border),
upscaled, and cropped back to the region's own output. `TileGeometry` holds what the scale asks
of tiles: they start on multiples of `align`, so that their outputs start on whole pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from ..data.bicubic import output_size  # torch-free: fastpath checks scales with TileGeometry
from ..errors import UserError

Region = tuple[int, int, int, int]  # (y0, y1, x0, x1)

MIN_TILE = 16  # the smallest tile side a memory budget or an out-of-memory split may ask for


def split(region: Region, side: int) -> list[Region]:
    """`region` cut into tiles of at most side x side, row by row."""
    y0, y1, x0, x1 = region
    return [(y, min(y + side, y1), x, min(x + side, x1))
            for y in range(y0, y1, side) for x in range(x0, x1, side)]


def split_all(regions: list[Region], side: int) -> list[Region]:
    """Every region cut into tiles of at most side x side, in order."""
    return [part for region in regions for part in split(region, side)]


def pad_region(region: Region, pad: int, h: int, w: int) -> Region:
    """`region` grown by `pad` on every side, clipped to the h x w image."""
    y0, y1, x0, x1 = region
    return max(0, y0 - pad), min(h, y1 + pad), max(0, x0 - pad), min(w, x1 + pad)


def grow_to(region: Region, size: tuple | None, h: int, w: int, align: int = 1) -> Region:
    """A padded `region` grown toward the image's inside to at least `size` (H, W; None or a None
    side: no least size), or to the whole side where the image is smaller; starts stay multiples
    of `align`. A graph of one fixed input size runs a smaller tile padded up (a mirror, where an
    untiled run sees real pixels or the border): grown, an edge tile carries real pixels instead."""
    if size is None:
        return region

    def grow(a: int, b: int, n: int, least: int | None) -> tuple[int, int]:
        if least is None or b - a >= least:
            return a, b
        b = min(n, a + least)
        return max(0, min(a, b - least)) // align * align, b
    (y0, y1), (x0, x1) = grow(*region[:2], h, size[0]), grow(*region[2:], w, size[1])
    return y0, y1, x0, x1


def region_size(region: Region) -> tuple[int, int]:
    """(height, width) of a region."""
    y0, y1, x0, x1 = region
    return y1 - y0, x1 - x0


def region_area(region: Region) -> int:
    height, width = region_size(region)
    return height * width


@dataclass(frozen=True)
class TileGeometry:
    """The output maths of tiles at one scale, `scale` = p / q exactly. Tiles start (and their
    sides are cut) on multiples of `align`: of q, so that every tile's output starts on a whole
    output pixel, and of the network's pad multiple (e.g. RRDBNet x2 wants even sizes)."""

    scale: float
    p: int
    q: int
    align: int

    @classmethod
    def of(cls, scale: float, pad_multiple: int = 1) -> TileGeometry:
        frac = Fraction(scale).limit_denominator(1000)
        if abs(float(frac) - scale) > 1e-9:
            raise UserError(f"scale {scale} is not a ratio of small integers; tiling needs one")
        q = frac.denominator
        return cls(scale, frac.numerator, q, q * pad_multiple // math.gcd(q, pad_multiple))

    def round_up(self, n: int) -> int:
        return -(-n // self.align) * self.align

    def round_down(self, n: int) -> int:
        """n down to a multiple of `align`, at least `align` (a tile is never empty)."""
        return max(self.align, n // self.align * self.align)

    def fixed_side(self, tile: int, h: int, w: int) -> int:
        """The side of a `--tile` given tile for an h x w image (0: in one piece)."""
        return 0 if tile <= 0 or tile >= max(h, w) else self.round_down(tile)

    def out_index(self, i: int, n: int) -> int:
        """Output coordinate of input coordinate i (aligned, or the end n of the image)."""
        return output_size(n, self.scale) if i >= n else i * self.p // self.q

    def out_region(self, region: Region, h: int, w: int) -> Region:
        """Where `region` of an h x w image lands in the output."""
        y0, y1, x0, x1 = region
        return self.out_index(y0, h), self.out_index(y1, h), self.out_index(x0, w), self.out_index(x1, w)

    def crop_in_tile(self, region: Region, padded: Region, h: int, w: int) -> Region:
        """The part of the output of the `padded` tile around `region` that is `region`'s own
        output, in the tile output's coordinates."""
        oy0, oy1, ox0, ox1 = self.out_region(region, h, w)
        oy, ox = self.out_index(padded[0], h), self.out_index(padded[2], w)
        return oy0 - oy, oy1 - oy, ox0 - ox, ox1 - ox

    def can_split(self, region: Region) -> bool:
        """Whether an out-of-memory retry may cut `region` smaller."""
        return max(region_size(region)) > max(MIN_TILE, self.align)

    def half_side(self, region: Region) -> int:
        """The tile side that cuts `region`'s longer side about in half."""
        return self.round_down(max(region_size(region)) // 2)

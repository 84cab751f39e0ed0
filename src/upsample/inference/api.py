"""`upsample image` and the Python API: `upsample.load("vapsr-x2").upscale(image)`.

`make_upscaler` builds the upscaler the options ask for (the default model for a scale, half
precision, a final resize); `ImageUpscaler` runs it over any image kind through a `Tiler`: colour
by the model, alpha by bicubic or the model, memory bounded by the tile size.
"""

from __future__ import annotations

import json
import numbers
import os
import re
import sys

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..data.degrade import output_size
from ..errors import UserError, UserTypeError, UserValueError
from ..media.imageio import Planes, fill_hidden_colour, planes_from_pil, planes_to_pil
from ..models import registry, table
from ..runtime.kinds import BACKENDS, PRECISIONS, check_half
from .load import check_scale, load_upscaler
from .sizes import MIN_UNITLESS_MEMORY, parse_memory
from .tiler import Tiler, is_channel_agnostic
from .upscaler import BicubicUpscaler, Upscaler, glue_threads
from .wrappers import ResizedUpscaler, half_upscaler


STRIP_BYTES = 64_000_000  # output of one band of `upscale_planes_in_strips`


class ImageUpscaler:
    """Upscales PIL images and numpy arrays with one upscaler: `upsample.load(...)` makes one.

    `upscale(image)` takes a PIL image (any mode: RGB, RGBA, L, LA, P, 16-bit I;16 ...) or a numpy
    array (uint8 or uint16; HxW gray, HxWx1, HxWx2 gray+alpha, HxWx3 RGB, HxWx4 RGBA, in RGB order:
    OpenCV's BGR as a[..., ::-1]) and returns the same kind: PIL in PIL out (palette images come
    back RGB or RGBA; CMYK, YCbCr, LAB, HSV and RGBX as RGB, 1-bit as L, premultiplied La / RGBa
    as LA / RGBA, I;16B / I;16L as I;16, L and RGB with a transparent colour (tRNS) as LA and
    RGBA (16-bit gray with one: refused); F, float gray in [0, 1], as F on that scale; I,
    0..65535, as I: both computed as 16-bit gray), array in array out, same dtype and shape; a
    float tensor (NCHW or CHW, RGB or gray, in [0, 1]: NaN, infinities and values far outside,
    such as 0..255, are refused) in float out (`_upscale_tensor`), also by
    calling the upscaler itself. Alpha is upscaled by bicubic (`alpha_mode="bicubic"`) or by the
    model ("model")."""

    def __init__(self, up: Upscaler, *, tile: int | None = None, tile_pad: int | None = None,
                 max_memory: int | str | None = None, alpha_mode: str = "bicubic", jobs: int = 1,
                 progress: bool = False, verbose: bool = False, tile_batch: int | None = None):
        if alpha_mode not in ("bicubic", "model"):
            raise UserError(f"alpha mode must be bicubic or model, got {alpha_mode!r}")
        self.up, self.verbose, self._said_8 = up, verbose, False
        mem = None if max_memory is None else parse_memory(max_memory)
        self.tiler = Tiler(up, tile=tile, pad=tile_pad, max_memory=mem, jobs=jobs, progress=progress,
                           tile_batch=tile_batch)
        if alpha_mode == "bicubic" and not is_channel_agnostic(up):
            self.alpha_tiler = Tiler(BicubicUpscaler(up.scale, up.device), tile=tile, max_memory=mem,
                                     jobs=jobs, progress=progress)
        else:
            self.alpha_tiler = self.tiler

    @property
    def scale(self) -> float:
        return self.up.scale

    def __repr__(self) -> str:  # what a notebook shows: the model and what runs it
        up = self.up
        return f"ImageUpscaler({up.name} x{up.scale:g}, {up.runtime} {up.precision}, {up.device})"

    def __reduce__(self):  # pickle (multiprocessing) said "Can't pickle local object '_cpu_runner...'"
        raise UserTypeError("an upscaler holds compiled runtimes and cannot be pickled or copied to other "
                            "processes: call upsample.load(...) in each process (threads may share one)")

    def note_eight_bit(self, planes: Planes, desc: str) -> None:
        """A note, once, where a 16-bit picture goes through a uint8 graph: the output keeps its
        bit depth but holds 8 bits of levels."""
        if self.verbose and self.up.core.eight_bit and planes.color.dtype == np.uint16 and not self._said_8:
            self._said_8 = True
            tqdm.write(f"note: {desc or 'image'}: 16 bits a sample, but {self.up.name} is a uint8 graph: "
                       "the output keeps 8 bits of its levels (export without --uint8-io to keep 16)",
                       file=sys.stderr)

    def upscale_planes(self, planes: Planes, desc: str = "") -> Planes:
        self.note_eight_bit(planes, desc)
        c, a = planes.color, planes.alpha
        oh, ow = output_size(c.shape[0], self.scale), output_size(c.shape[1], self.scale)
        reserved = oh * ow * c.itemsize * (c.shape[2] + (1 if a is not None else 0))
        tile = self.tiler.plan_tile(c.shape[0], c.shape[1], c.shape[2], c.dtype, reserved)
        if tile and self.verbose:
            tqdm.write(f"note: {desc or 'image'}: {c.shape[1]}x{c.shape[0]} in {tile}px tiles, "
                       f"pad {self.tiler.pad}", file=sys.stderr)
        with glue_threads(self.up):  # the network outside torch: torch's share on one thread
            color = self.tiler.upscale(c, tile=tile, desc=desc)
        alpha = None
        if a is not None:
            atile = tile if self.alpha_tiler is self.tiler else \
                self.alpha_tiler.plan_tile(a.shape[0], a.shape[1], 1, a.dtype, oh * ow * a.itemsize)
            with glue_threads(self.up):  # bicubic alpha too: numpy's taps, the same bits on any thread count
                alpha = self.alpha_tiler.upscale(a, tile=atile, desc=desc)
        return Planes(color, alpha, planes.info)

    def upscale_planes_in_strips(self, planes: Planes, write, desc: str = "") -> None:
        """Upscale colour planes (no alpha) band by band, giving `write` the output rows in
        order (`imageio.png_strips`): memory is the input, the tiles and one band of output
        (at most STRIP_BYTES), whatever the output size. The colour may be rows decoded as the
        bands need them (`streamed.StreamedRows`): then not even the input is whole."""
        if planes.alpha is not None:
            raise ValueError("planes with alpha are upscaled whole (upscale_planes)")
        self.note_eight_bit(planes, desc)
        c = planes.color
        h, w, ch = c.shape
        row_bytes = output_size(w, self.scale) * ch * c.itemsize * max(1.0, self.scale)
        band = max(1, min(h, int(STRIP_BYTES // row_bytes)))
        reserved = 2 * int(band * row_bytes)  # a band's output, and its filtered copy in the writer
        if not isinstance(c, np.ndarray):  # rows decoded as needed: a band, the last, their join,
            reserved += 3 * min(h, band + 2 * self.tiler.pad) * w * ch * c.itemsize  # and what the
            reserved += c.held_bytes  # decoder holds whole (a progressive JPEG's coefficients)
        tile = self.tiler.plan_tile(min(h, band + 2 * self.tiler.pad), w, ch, c.dtype, reserved)
        if self.verbose:
            tqdm.write(f"note: {desc or 'image'}: {w}x{h} in bands of {band} rows"
                       + (f", {tile}px tiles" if tile else "")
                       + (", written" if isinstance(c, np.ndarray) else ", read and written") + " as it goes",
                       file=sys.stderr)
        with glue_threads(self.up):
            self.tiler.upscale_rows(c, write, tile=tile, band=band, desc=desc)

    def upscale(self, image):
        """`image` upscaled, as the class docstring says; an image this cannot take (a float PIL
        image out of [0, 1], a memory limit too small for it) is a ValueError, a wrong kind of
        argument a TypeError, both in `load`'s keywords."""
        try:
            if isinstance(image, Image.Image):
                return self._upscale_pil(image)
            if isinstance(image, np.ndarray):
                return self._upscale_array(image)
            if isinstance(image, torch.Tensor):
                return self._upscale_tensor(image)
        except UserError as exc:  # the CLI's words (imageio, the tiler): a Python caller's error
            raise api_error(exc) from None
        hint = "; open the file first: upscale(Image.open(path))" if isinstance(image, (str, os.PathLike)) else ""
        raise UserTypeError(f"upscale takes a PIL image, a numpy array or a float tensor, got {type(image).__name__}{hint}")

    __call__ = upscale  # as spandrel's models are called on tensors

    def _upscale_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """The package's tensor contract (spandrel's): float NCHW or CHW, RGB or gray, in [0, 1] ->
        the same layout, dtype and device, clamped to [0, 1], in float (not rounded to 8 or 16 bits).
        In one piece, as spandrel's models run: tiling and alpha are the arrays' and images' path."""
        check_tensor(x)
        with torch.no_grad(), glue_threads(self.up):  # the network outside torch: torch's share on one thread
            check_tensor_values(x)
            batch = (x if x.ndim == 4 else x[None]).detach().to(self.up.device, torch.float32)
            gray = batch.shape[1] == 1 and not is_channel_agnostic(self.up)  # an RGB model: as gray RGB
            y = self.up(batch.expand(-1, 3, -1, -1) if gray else batch)
            y = (y.mean(1, keepdim=True) if gray else y).clamp_(0, 1).to(x.device, x.dtype)
        return y if x.ndim == 4 else y[0]

    def _upscale_pil(self, image: Image.Image) -> Image.Image:
        check_pil(image)
        planes = fill_hidden_colour(planes_from_pil(image))  # as read_planes does for files
        if planes.mode == "LA;16":  # found before the work, not when the output cannot be made
            key = image.info["transparency"]
            raise UserValueError(f"this 16-bit gray image has a transparent value ({key}), so it upscales to 16-bit "
                                 "gray with alpha, which no PIL mode holds: pass a uint16 HxWx2 array (a = "
                                 f"np.asarray(img); np.dstack([a, np.where(a == {key}, 0, 65535)]).astype(np.uint16)), "
                                 "or del img.info['transparency'] for 16-bit gray")
        out = planes_to_pil(self.upscale_planes(planes))  # F and I: as 16-bit gray
        if image.mode == "F":  # float data, [0, 1] as the tensor contract has it: back on that scale
            floats = Image.fromarray(np.asarray(out, np.float32) / np.float32(65535), "F")
            floats.info.update(out.info)
            return floats
        return out.convert("I") if image.mode == "I" else out

    def _upscale_array(self, arr: np.ndarray) -> np.ndarray:
        given = arr.dtype  # a big-endian uint16 comes back big-endian: the same dtype, as promised
        if arr.dtype.kind == "u" and arr.dtype.itemsize == 2 and not arr.dtype.isnative:
            arr = arr.astype(np.uint16)  # big-endian 16-bit (from a FITS or a raw file): the same values
        check_array(arr)
        a3 = arr[..., None] if arr.ndim == 2 else arr
        has_alpha = a3.shape[2] in (2, 4)
        color = np.ascontiguousarray(a3[..., :-1] if has_alpha else a3)
        alpha = np.ascontiguousarray(a3[..., -1:]) if has_alpha else None
        res = self.upscale_planes(fill_hidden_colour(Planes(color, alpha)))  # as files and PIL images
        out = res.color if res.alpha is None else np.concatenate([res.color, res.alpha], 2)
        return (out[..., 0] if arr.ndim == 2 else out).astype(given, copy=False)


def check_pil(image: Image.Image) -> None:
    """A PIL image whose pixels can be had: not empty, not closed, its file (a lazy `Image.open`,
    decoded only now) not cut short; Pillow's own errors name no way out."""
    if not image.width or not image.height:
        raise UserValueError(f"the image is empty ({image.width}x{image.height}): nothing to upscale")
    closed = None
    try:
        if getattr(image, "tile", None) and getattr(image, "fp", 0) is None:  # a `with Image.open(...)` block
            closed = "its file is closed"  # left before any pixel was read: Pillow would fail an assert
        else:
            image.load()
    except ValueError as exc:  # "Operation on closed image": img.close() after the pixels were read
        closed = str(exc)
    except (OSError, SyntaxError, EOFError) as exc:  # a cut or damaged file
        raise UserValueError(f"the PIL image's file cannot be decoded ({exc}): use a whole copy of the file, or "
                             "set PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True before opening it to take what is "
                             "there") from None
    if closed:
        raise UserValueError(f"the PIL image cannot be read ({closed}): upscale it inside its `with Image.open(...)` "
                             "block or before img.close(), or pass img.copy() made while it was open")


_TENSOR_HINTS = {torch.uint8: "divide a uint8 one by 255", torch.bool: "for a mask, pass x.float()"}


def check_tensor(x: torch.Tensor) -> None:
    """What `_upscale_tensor` takes (the tensor contract), with what to do instead."""
    if x.layout != torch.strided:
        raise UserTypeError(f"tensors must be dense, got a {x.layout} one; pass x.to_dense()")
    if x.device.type == "meta":
        raise UserValueError("the tensor is on the 'meta' device and holds no values: nothing to upscale")
    if not x.is_floating_point():
        hint = _TENSOR_HINTS.get(x.dtype, "divide 0..255 data by 255, 0..65535 data by 65535")
        raise UserTypeError(f"tensors must be float in [0, 1], got {x.dtype}; {hint}")
    if x.ndim not in (3, 4) or x.shape[-3] not in (1, 3):
        order = "0, 3, 1, 2" if x.ndim == 4 else "2, 0, 1"
        last = x.ndim in (3, 4) and x.shape[-1] in (1, 3)  # channels last, as numpy and PIL have them
        hint = f"for channels last, pass x.permute({order})" if last else "give RGBA as a numpy array or a PIL image"
        raise UserTypeError(f"tensors must be NCHW or CHW with 1 (gray) or 3 (RGB) channels, got shape "
                            f"{tuple(x.shape)}; {hint}")
    if not x.numel():
        raise UserValueError(f"the tensor is empty (shape {tuple(x.shape)}): nothing to upscale")


TENSOR_SPAN = (-1.0, 2.0)  # beyond it a tensor is on another scale (0..255), not [0, 1] overshot


def check_tensor_values(x: torch.Tensor) -> None:
    """Values the tensor contract can mean: a NaN or an infinity would spread over the whole output
    (the bicubic resize mixes each row and column), and 0..255 data would come back clamped white."""
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))  # NaN anywhere makes both NaN
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise UserValueError(f"the tensor holds NaN or infinite values (min {lo:g}, max {hi:g}), which would spread "
                             "through the output: replace them first, e.g. x.nan_to_num(0.0, 1.0, 0.0)")
    if lo < TENSOR_SPAN[0] or hi > TENSOR_SPAN[1]:
        raise UserValueError(f"tensor values span [{lo:g}, {hi:g}], not [0, 1]: divide 0..255 data by 255 "
                             "(0..65535 data by 65535)")


_ARRAY_HINTS = {"f": "; for floats in [0, 1], pass (a * 255).round().astype(np.uint8), or a tensor "
                     "(torch.from_numpy(a).permute(2, 0, 1)) to get floats back",
                "b": "; for a mask, pass a.astype(np.uint8) * 255",
                "i": "; for values in 0..255 (np.array's default int64), pass a.astype(np.uint8), in 0..65535 "
                     "a.astype(np.uint16)",
                "u": "; for values in 0..65535, pass a.astype(np.uint16)"}


def check_array(arr: np.ndarray) -> None:
    """What `_upscale_array` takes: uint8 / uint16, HxW or HxWxC (C 1..4), not empty."""
    if arr.dtype not in (np.uint8, np.uint16):
        raise UserTypeError(f"arrays must be uint8 or uint16, got {arr.dtype}{_ARRAY_HINTS.get(arr.dtype.kind, '')}")
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)):
        first = arr.ndim == 3 and arr.shape[0] in (1, 2, 3, 4)  # channels first, as torch has them
        raise UserTypeError(f"arrays must be HxW or HxWxC with C in 1..4, got shape {arr.shape}"
                            + ("; for channels first (CxHxW), pass a.transpose(1, 2, 0)" if first else ""))
    if not arr.shape[0] or not arr.shape[1]:
        raise UserValueError(f"the image is empty (shape {arr.shape}): nothing to upscale")


def load(spec: str | None = None, scale: float | None = None, *, backend: str = "auto",
         device: str | torch.device = "cpu", tile: int | None = None, tile_pad: int | None = None,
         max_memory: int | str | None = None, half: bool = False, outscale: float | None = None,
         alpha_mode: str = "bicubic", precision: str = "auto", threads: int | None = None,
         tile_batch: int | None = None, allow_untrained: bool = False) -> ImageUpscaler:
    """An `ImageUpscaler` for a model: None (the default, as the CLI's: the best shipped model for
    `scale`, x2 when none is given), "bicubic", a registered name such as "espcn-x3", or a
    checkpoint path. `tile`: tile side in pixels (0: never tile; None: from
    `max_memory`, e.g. "2GB", or half the free memory); `tile_batch`: tiles per model call (None:
    1 on the CPU, timed on a GPU); `outscale`: final size factor (the model, then a bicubic
    resize); `max_memory` bounds this process's whole memory (its resident size, as the CLI's
    --max-memory), not the upscaler's share. `device`: "cpu", "cuda:0" (or a `torch.device`), or
    an OpenVINO device ("GPU"); `threads` sets torch's for the whole process too. A registered
    model without trained weights is refused unless `allow_untrained=True`. Wrong arguments raise
    TypeError or ValueError with one line. Threads may load and upscale with one upscaler at once."""
    spec = os.fspath(spec) if isinstance(spec, os.PathLike) else spec
    device = _device_name(device)
    _check_memory(max_memory)
    _check_types(spec, device, scales={"scale": scale, "outscale": outscale},
                 switches={"half": half, "allow_untrained": allow_untrained},
                 counts={"tile": tile, "tile_pad": tile_pad, "tile_batch": tile_batch, "threads": threads})
    try:
        up = make_upscaler(spec, scale, backend=backend, device=device, half=half, outscale=outscale,
                           precision=precision, threads=threads, allow_untrained=allow_untrained)
        return ImageUpscaler(up, tile=tile, tile_pad=tile_pad, max_memory=max_memory, alpha_mode=alpha_mode,
                             tile_batch=tile_batch)
    except UserError as exc:
        raise api_error(exc) from None


def api_error(exc: UserError) -> UserError:
    """`exc`, said in the CLI's words (shared with it), as the Python API raises it: in `load`'s
    keywords, and a TypeError or ValueError (a bad argument) that callers catch."""
    kind = type(exc) if isinstance(exc, (UserTypeError, UserValueError)) else UserValueError
    return kind(in_keywords(str(exc)))


def _device_name(device):
    """A torch user's device as `load` names it: torch.device("cpu") or "cpu:0" is "cpu" (the one
    CPU; OpenVINO would read "cpu:0" as a device it lacks), torch.device("cuda", 1) "cuda:1"."""
    if isinstance(device, torch.device):
        device = str(device)
    if isinstance(device, str) and re.fullmatch(r"cpu:\d+", device):
        return "cpu"
    return device


def _check_memory(max_memory) -> None:
    """A `max_memory` number is bytes: True, or 1.5 meant as 1.5 GB, would be a limit of a byte."""
    if isinstance(max_memory, (bool, np.bool_)):
        raise UserTypeError(f"max_memory must be a size such as '2GB' or a number of bytes, got {max_memory!r}")
    if isinstance(max_memory, numbers.Real) and 0 < max_memory < MIN_UNITLESS_MEMORY:
        raise UserValueError(f"max_memory={max_memory!r} is a number of bytes, under 1 MB: give the unit, "
                             f"such as max_memory='{max_memory:g}GB'")


def _check_types(spec, device, *, scales: dict, switches: dict, counts: dict) -> None:
    """What `load` would otherwise fail on deep inside, or take wrongly ("no" as a switch is true),
    with a TypeError ("64" as `tile`); an empty model name with a ValueError."""
    if spec is not None and not isinstance(spec, str):
        number = isinstance(spec, numbers.Real) and not isinstance(spec, bool)
        hint = f"; for a scale, write load(scale={spec!r})" if number else ""
        raise UserTypeError(f"the model must be a name or a path (str), got {spec!r}{hint}")
    if spec is not None and not spec.strip():
        raise UserValueError("the model name is empty: give a name such as 'espcn-x2', a checkpoint path, "
                             "or None for the best shipped model at the scale")
    if not isinstance(device, str):
        raise UserTypeError(f"device must be a name (str) such as 'cpu', 'cuda:0' or 'GPU', got {device!r}")
    if not device.strip():
        raise UserValueError("the device name is empty: give 'cpu', 'cuda:0' or an OpenVINO device such as 'GPU'")
    for name, value in scales.items():  # True is 1 to float(): a switch given by mistake
        if isinstance(value, (bool, np.bool_)) or not (value is None or isinstance(value, (numbers.Real, str))):
            raise UserTypeError(f"{name} must be a number such as 2, got {value!r}")
    for name, value in switches.items():  # 0 and 1 too: they were taken before (half=int(env))
        if not isinstance(value, (bool, np.bool_)) and not (isinstance(value, numbers.Integral) and value in (0, 1)):
            raise UserTypeError(f"{name} must be True or False, got {value!r}")
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise UserTypeError(f"{name} must be a whole number (int) or None, got {value!r}")


_SWITCHES = {"allow-untrained", "half"}  # flags that take no value: keyword=True
_VALUED = {"model", "scale", "backend", "precision", "device", "threads", "outscale", "tile", "max-memory",
           "tile-batch"}
_KEYWORD = {"model": "spec"}  # `load`'s names where they differ from the CLI's
_WORDS = {"backend": BACKENDS, "precision": PRECISIONS, "device": ("cpu", "cuda"), "tile-batch": ("auto",)}
_FLAG = re.compile(r"(?<![\w/.-])--([a-z][a-z-]*)(?: ([\w.:+,-]*\w))?")
_BOTH = re.compile(r"--[a-z][a-z-]*, (?=[a-z_]+=\))")  # "(--tile, tile=)": a message for both already


def _is_value(flag: str, word: str) -> bool:
    """Whether the word after a flag is its value ("--scale 3", "--backend openvino", "--device
    GPU", "--model a.pth") or the sentence going on ("--outscale must be", "leave --precision out"):
    values are numbers, names (capitals, digits, dots, dashes, slashes) or the flag's own words."""
    return word.split(":")[0] in _WORDS.get(flag, ()) or any(c.isdigit() or c.isupper() or c in "./:-" for c in word)


def in_keywords(message: str) -> str:
    """A message naming the CLI's options ("--scale 3", "--allow-untrained") in `load`'s keywords
    ("scale=3", "allow_untrained=True"); text in backticks (a command to run) is left as it is."""
    def keyword(m: re.Match) -> str:
        flag, word = m[1], m[2]
        name = _KEYWORD.get(flag, flag.replace("-", "_"))
        rest = f" {word}" if word else ""
        if flag in _SWITCHES:
            return f"{name}=True{rest}"
        named = flag == "device" and m.string[m.end():m.end() + 1] == ":"  # "--device mps: not on this machine"
        if flag in _VALUED and word and (named or _is_value(flag, word)):
            return f"{name}={word if word[0].isdigit() else repr(word)}"
        return name + rest
    parts = message.split("`")
    return "`".join(part if i % 2 else _FLAG.sub(keyword, _BOTH.sub("", part)) for i, part in enumerate(parts))


CLEARLY_ABOVE_BICUBIC_DB = 1.0  # the fast default must gain at least this much (benchmark mean)


def shipped_scores(scale: int) -> dict[str, tuple[float, float | None]]:
    """name -> (mean benchmark PSNR of the model, of bicubic where the evaluation has it) at
    `scale`, for the shipped generators that serve it (their own scale, or any for VDSR) and
    were evaluated there."""
    scores = {}
    for name in registry.list_models("generator"):
        weights = registry.weights_path(name)
        if not weights or registry.get_spec(name).scale not in (None, scale):
            continue
        try:
            report = json.loads(weights.with_suffix(".eval.json").read_text())["scales"][str(scale)]
            mean = {k: sum(v["psnr"] for v in report[k].values()) / len(report[k])
                    for k in ("model", "bicubic") if k in report}
            scores[name] = (mean["model"], mean.get("bicubic"))
        except (OSError, ValueError, KeyError, ZeroDivisionError):
            continue  # shipped without an evaluation at this scale: not a default
    return scores


def macs_per_output_pixel(name: str) -> float:
    """Network work per output pixel (pre-upsampling models run at the output size)."""
    row = table.describe(name)  # the registry's numbers, written down: no model is built
    side = registry.MACS_INPUT * (row["scale"] or 1)
    return row["macs"] / side ** 2


def default_model(scale: float, *, fastest: bool = False) -> str:
    """The shipped model for `scale` (else "bicubic"): the one with the highest mean benchmark
    PSNR in its NAME.eval.json, or with `fastest` (video: hours of frames) the one with the
    least work per output pixel among those at least CLEARLY_ABOVE_BICUBIC_DB above bicubic."""
    if not float(scale).is_integer():
        return "bicubic"
    scores = shipped_scores(int(scale))
    if fastest:
        clear = [n for n, (m, b) in scores.items() if b is not None and m - b >= CLEARLY_ABOVE_BICUBIC_DB]
        return min(clear, key=macs_per_output_pixel) if clear else "bicubic"
    return max(scores, key=lambda n: scores[n][0]) if scores else "bicubic"


def half_precision(device: str) -> str:
    """--half under --backend auto: fp16 on CUDA, an OpenVINO device's own half (auto: f16 on an
    Intel GPU), else the CPU's bf16 - refused here, in --half's words, where the CPU has no bf16
    units (it said "--precision bf16", which the user never gave)."""
    from ..runtime.hardware import cpu_has_bf16
    from ..runtime.sessions import on_cpu_only, openvino_device
    if device.startswith("cuda"):
        return "fp16"
    ov_device = openvino_device(device)
    if ov_device is not None and not on_cpu_only(ov_device):
        return "auto"
    if not cpu_has_bf16():
        raise UserError("--half: this CPU has no bf16 units (bf16 would be emulated, slower than fp32); drop "
                        "--half (--precision auto picks the fastest precision that passes its check)")
    return "bf16"


def make_upscaler(model: str | None, scale=None, *, backend: str = "auto", device: str = "cpu",
                  half: bool = False, outscale=None, precision: str = "auto",
                  threads: int | None = None, allow_untrained: bool = False,
                  fastest_default: bool = False) -> Upscaler:
    """The upscaler for the CLI and the API: `model` None means `default_model(scale or 2)` at
    that scale (`fastest_default`: the fast one, as video takes); bicubic defaults to x2; `half`
    and `outscale` (a final resize) applied."""
    scale = check_scale(scale) if scale is not None else None
    if model is None:  # the default model serves the scale asked, x2 if none was
        scale = scale or 2.0
        model = default_model(scale, fastest=fastest_default)
    if model == "bicubic" and scale is None:
        scale = 2.0
    check_half(half, precision)  # `load` ran fp32 in bf16
    if half and backend == "auto" and model != "bicubic":  # --half with auto: the device's half type, unchecked
        precision, half = half_precision(str(device)), False
    up = load_upscaler(model, scale=scale, backend=backend, device=device, precision=precision,
                       threads=threads, allow_untrained=allow_untrained)
    if half:
        up = half_upscaler(up)
    final = check_scale(outscale, "--outscale") if outscale is not None else up.scale
    if isinstance(up, BicubicUpscaler):
        return BicubicUpscaler(final, up.device)
    if abs(final - up.scale) > 1e-12:
        return ResizedUpscaler(up, final)
    return up

"""`upsample eval`: PSNR/SSIM on benchmark folders under a named protocol.

`papers` (the default): per HR image, modcrop to a multiple of the scale, LR = MATLAB bicubic
downscale rounded to uint8 (as the standard LR PNGs are), upscale, clamp and round to uint8, then
measure on Y (or RGB) with `crop_border` (default: the scale) pixels cut at each side; SSIM with
Wang et al.'s 11x11 Gaussian window. Beside the model, under either protocol: the bicubic
baseline of the same LR, measured the same way (papers: MATLAB's imresize up, the pixels of
`--model bicubic`).

`catid` (his evaluate.py, `upsampling` repository): LR = Pillow's `Image.resize(BICUBIC)` of the
whole HR to (W // s, H // s), no modcrop; PSNR and SSIM on RGB in [0, 1] with 4 pixels cut at
each side; SSIM = scikit-image's `structural_similarity` defaults, mean over channels; beside
the model, the bicubic baseline: Pillow's bicubic upscale of the same LR (`--model bicubic` is that
baseline). Where a side is not a multiple of the scale his script stops (the model's output is
smaller than the HR); here the HR is cut at the bottom/right to s * (side // s) instead, which
changes nothing on images whose sides are multiples of s (all of Set5 and Urban100 at x2).

`degrade` gaussian (`--degrade gaussian --sigma S`, either protocol): LR = Gaussian blur of sigma
S HR pixels, then every s-th pixel (`data.degrade.blur_subsample`, as training's gaussian kind),
rounded to uint8. (catid's --gaussian used scipy's gaussian_filter with sigma s / 6, which also
blurs across the colour axis; this blur keeps the channels apart.)
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import metrics
from .montage import side_by_side
from ..data.colour import to_tensor, to_uint8
from ..data.degrade import (blur_subsample, gaussian_radius, imresize_any_cpu, make_lr, modcrop, quantize,
                             scale_period)
from ..data.pairs import one_name_each
from ..data.prepare import LR_MARK, SRF_HR, lr_files, lr_folder_name
from ..errors import UserError, one_line
from ..media.imageio import atomic_save, header_size, list_images, open_image, read_rgb, skip_reason
from ..media.progress import progress_bar
from ..inference.upscaler import Upscaler
from ..inference.load import bicubic_device, check_scale, is_untrained, load_upscaler


@dataclass(frozen=True)
class Protocol:
    name: str
    y_channel: bool          # the default channel: Y (BT.601) or RGB
    crop: int | None         # border cut at each side; None = the scale rounded up
    ssim_window: str         # metrics.ssim's window
    pil: bool                # Pillow bicubic and no modcrop (else MATLAB's imresize, modcrop)


PROTOCOLS = {"papers": Protocol("papers", True, None, "gaussian", False),
             "catid": Protocol("catid", False, 4, "uniform", True)}
DEGRADES = ("bicubic", "gaussian")


@dataclass(frozen=True)
class Degrade:
    kind: str = "bicubic"    # the protocol's bicubic downscale, or "gaussian" (blur + subsample)
    sigma: float | None = None  # gaussian: the blur's sigma in HR pixels


def check_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise UserError(f"unknown protocol {name!r}: use one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def check_degrade(kind: str, sigma: float | None, protocol: Protocol, scale: float) -> Degrade:
    """The LR degradation asked for, or UserError saying what does not fit."""
    if kind not in DEGRADES:
        raise UserError(f"unknown --degrade {kind!r}: use one of {', '.join(DEGRADES)}")
    if kind == "bicubic":
        if sigma is not None:
            raise UserError("--sigma is the blur of --degrade gaussian: add that, or leave --sigma out")
        return Degrade()
    if sigma is None or not sigma > 0:
        raise UserError("--degrade gaussian needs --sigma S > 0 (the blur in HR pixels; catid's "
                        "evaluate.py used scale / 6)")
    if not float(scale).is_integer():
        raise UserError(f"--degrade gaussian subsamples every s-th pixel: the scale must be an integer, not {scale}")
    return Degrade("gaussian", float(sigma))


# ------------------------------------------------------------------------------ one image


def hr_for(hr: np.ndarray, scale: float, protocol: Protocol) -> np.ndarray:
    """The HR that is measured: modcropped (papers), or cut to s * (side // s) (catid)."""
    if not protocol.pil:
        return modcrop(hr, scale)
    s = int(scale)
    return hr[:hr.shape[0] // s * s, :hr.shape[1] // s * s]


def make_input(hr: np.ndarray, scale: float, protocol: Protocol, degrade: Degrade, device) -> torch.Tensor:
    """The LR input (float NCHW in [0, 1] on the 8-bit grid) of the measured HR `hr`."""
    if degrade.kind == "gaussian":
        try:
            return quantize(blur_subsample(to_tensor(hr, device, torch.float64), int(scale), degrade.sigma)).float()
        except ValueError as exc:  # a blur wider than the image
            raise UserError(f"--sigma {degrade.sigma}: {exc}") from None
    if not protocol.pil:
        return make_lr(hr, scale, device)
    s = int(scale)
    lr = Image.fromarray(hr).resize((hr.shape[1] // s, hr.shape[0] // s), Image.BICUBIC)
    return to_tensor(np.asarray(lr), device)


def bicubic_up(lr: torch.Tensor, size: tuple[int, int], protocol: Protocol) -> np.ndarray:
    """The bicubic baseline of the protocol: uint8 HWC of `size` (H, W) from the LR (papers:
    MATLAB's imresize, as `--model bicubic` there; catid: Pillow's)."""
    if not protocol.pil:
        return to_uint8(imresize_any_cpu(lr, size=size))
    img = Image.fromarray(to_uint8(lr)).resize((size[1], size[0]), Image.BICUBIC)
    return np.asarray(img)


def ssim_fits(hw: tuple[int, ...], crop: int, protocol: Protocol = PROTOCOLS["papers"]) -> bool:
    """Whether SSIM's window fits in what the `crop`-pixel border crop leaves of an (H, W) image."""
    return min(hw[:2]) - 2 * crop >= metrics.SSIM_SIDE[protocol.ssim_window]


def measure(out: np.ndarray, hr: np.ndarray, crop: int, y_channel: bool, protocol: Protocol) -> dict:
    side = metrics.SSIM_SIDE[protocol.ssim_window]
    if not ssim_fits(hr.shape, crop, protocol):
        raise UserError(f"an HR image is {hr.shape[1]}x{hr.shape[0]}: after the {crop}-pixel border crop "
                        f"it is under the {side}x{side} pixels SSIM needs; "
                        "remove such small images from --data (or lower --crop)")
    return {"psnr": metrics.psnr(out, hr, crop_border=crop, y_channel=y_channel),
            "ssim": metrics.ssim(out, hr, crop_border=crop, y_channel=y_channel, window=protocol.ssim_window)}


@torch.no_grad()
def upscale_checked(upscaler: Upscaler, lr: torch.Tensor, hr: np.ndarray, scale: float) -> np.ndarray:
    sr = upscaler(lr)
    if sr.shape[-2:] != hr.shape[:2]:
        raise UserError(f"{upscaler.name} produced {tuple(sr.shape[-2:])} for an HR of "
                        f"{hr.shape[:2]}: is --scale {scale} the model's scale?")
    return to_uint8(sr)


@torch.no_grad()
def evaluate_image(upscaler: Upscaler, hr: np.ndarray, scale: float, crop_border: int,
                   y_channel: bool, downscaler=None) -> tuple[float, float, np.ndarray]:
    """The papers' protocol on one HR image: (PSNR, SSIM, output). `downscaler` (see
    `inference.downscale`) makes the LR instead of `make_lr` (a learned one)."""
    hr = modcrop(hr, scale)
    lr = make_lr(hr, scale, upscaler.device) if downscaler is None else downscaler.lr(hr, upscaler.device)
    out = upscale_checked(upscaler, lr, hr, scale)
    m = measure(out, hr, crop_border, y_channel, PROTOCOLS["papers"])
    return m["psnr"], m["ssim"], out


@dataclass
class Run:
    """What one `eval` measures with, shared by every image."""
    upscaler: Upscaler | None  # None: the protocol's own bicubic baseline is the model
    scale: float
    crop: int
    y_channel: bool
    protocol: Protocol
    degrade: Degrade
    device: torch.device
    lpips: object = None       # an `lpips.LPIPS`, or None
    montage: bool = False      # make the montage panels (`--save`)

    def check_size(self, hw: tuple[int, ...]) -> None:
        """UserError where an HR image of `hw` (after `hr_for`) is too small for the scale or SSIM."""
        if min(hw[:2]) < self.scale:  # e.g. a 2x2 image at x3: its LR would be empty
            raise UserError(f"an HR image is {hw[1]}x{hw[0]} after the crop to the scale, "
                            f"smaller than x{self.scale:g} needs: remove such tiny images from --data")
        if not ssim_fits(hw, self.crop, self.protocol):
            side = metrics.SSIM_SIDE[self.protocol.ssim_window]
            raise UserError(f"an HR image is {hw[1]}x{hw[0]}: after the {self.crop}-pixel border crop "
                            f"it is under the {side}x{side} pixels SSIM needs; "
                            "remove such small images from --data (or lower --crop)")
        reach = gaussian_radius(self.degrade.sigma) if self.degrade.kind == "gaussian" else 0
        if reach and reach >= min(hw[:2]):  # gaussian_blur's limit, found before any work
            raise UserError(f"an HR image is {hw[1]}x{hw[0]}: the blur of --sigma {self.degrade.sigma:g} "
                            f"reaches {reach} pixels (3 sigma), and needs sides above that; lower --sigma or "
                            "remove such small images from --data")
        side = getattr(self.lpips, "min_side", 0)
        if min(hw[:2]) - 2 * self.crop < side:  # found here, not when that image is reached
            raise UserError(f"an HR image is {hw[1]}x{hw[0]}: after the {self.crop}-pixel border crop it is "
                            f"under the {side}x{side} pixels LPIPS ({self.lpips.net}) needs; remove such "
                            "small images from --data (or lower --crop)")

    def check_sizes(self, images: list[Path]) -> None:
        """Every image's size checked from its header before the first is evaluated: a small
        picture among many stops the run at once, not after an hour of evaluation."""
        for path in images:
            w, h = upright_size(path)
            try:  # a zero-strided stand-in: hr_for's crop without reading any pixel
                self.check_size(hr_for(np.broadcast_to(np.uint8(0), (h, w)), self.scale, self.protocol).shape)
            except UserError as exc:
                raise UserError(f"{path}: {exc}") from None

    def given_input(self, lr: np.ndarray, hw: tuple[int, ...]) -> torch.Tensor:
        """A given LR (uint8 HWC) as the input tensor, the same floats as `make_input`'s of a made one."""
        want = lr_size(hw, self.scale, self.protocol)
        if lr.shape[:2] != want:  # the header was checked; a file changed since is still refused
            raise UserError(f"the LR is {lr.shape[1]}x{lr.shape[0]}, {want[1]}x{want[0]} needed")
        # papers: make_lr rounds in float64, then to float32; catid: Pillow's uint8 to float32
        return to_tensor(lr, self.device) if self.protocol.pil else to_tensor(lr, self.device, torch.float64).float()

    def image(self, hr: np.ndarray, given_lr: np.ndarray | None = None) -> tuple[dict, list[tuple[str, np.ndarray]]]:
        """One HR image's numbers (the model's and the bicubic baseline's) and the montage panels
        (original, model, bicubic, input); its LR made, or `given_lr` (--lr)."""
        hr = hr_for(hr, self.scale, self.protocol)
        self.check_size(hr.shape)
        lr = (make_input(hr, self.scale, self.protocol, self.degrade, self.device) if given_lr is None
              else self.given_input(given_lr, hr.shape))
        # every protocol reports the bicubic of the same LR beside the model: a gain over bicubic
        # is what compares across runs and papers (papers: `--model bicubic`'s own pixels)
        base = bicubic_up(lr, hr.shape[:2], self.protocol)
        out = base if self.upscaler is None else upscale_checked(self.upscaler, lr, hr, self.scale)
        row = measure(out, hr, self.crop, self.y_channel, self.protocol)
        same = out is base or np.array_equal(out, base)  # `--model bicubic`: measured once
        b = row if same else measure(base, hr, self.crop, self.y_channel, self.protocol)
        row.update(bicubic_psnr=b["psnr"], bicubic_ssim=b["ssim"])
        if self.lpips is not None:
            row["lpips"] = lpips_distance(self.lpips, out, hr, self.crop)
        if not self.montage:
            return row, [("model", out)]
        input_panel = np.zeros_like(hr)
        small = to_uint8(lr)
        input_panel[:small.shape[0], :small.shape[1]] = small
        name = "bicubic" if self.upscaler is None else Path(self.upscaler.name).name
        return row, [("original", hr), (name, out), ("bicubic", base), ("input", input_panel)]


# ------------------------------------------------------------------------------ given LR (--lr)
# Datasets that ship their LR inputs: DIV2K's LR_bicubic/X2/0801x2.png beside HR/0801.png,
# BasicSR's LRbicx2/baby.png, SelfExSR's img_001_SRF_2_LR.png beside _HR, RealSR's NAME_LR2.png
# beside NAME_HR.png. The names are the ones `data.prepare` knows as LR copies (LR_MARK, SRF_HR).

SRF_TAG = re.compile(r"(?i)_srf_\d+$")  # SelfExSR's scale tag, left after its _HR / _LR is taken off
# in an --lr folder any name's x2 is a scale tag (babyx2), not only where LR_MARK takes it as proof
SCALE_TAG = re.compile(r"(?i)[_\- ]?x\d+$")


def hr_keys(stem: str) -> set[str]:
    """The names an HR file's LR may carry before its scale tag: its stem, without _HR or _SRF_k_HR."""
    stem = stem.lower()
    bare = m.group(1) if (m := SRF_HR.match(stem)) else stem[:-3] if stem.endswith("_hr") else stem
    return {stem, bare, SRF_TAG.sub("", bare)}


def lr_keys(stem: str) -> dict[str, str]:
    """{HR name it may belong to: the tag after it} of an LR file: its own stem (tag ""), the stem
    without its LR mark or scale tag (0801x2, babyx2, baby_LR, NAME_LR2, NAME_SRF_2_LR), and
    without an _SRF_k left."""
    stem = stem.lower()
    base = stem[:m.start()] if (m := LR_MARK.search(stem)) else SCALE_TAG.sub("", stem)
    return {k: stem[len(k):] for k in (SRF_TAG.sub("", base), base, stem) if k}


def _tag_scales(tag: str) -> set[int]:
    return {int(d) for d in re.findall(r"\d+", tag)}


def pick_lr(hr: Path, root: Path, lr_root: Path, by_key: dict[str, list[tuple[Path, str]]],
            scale: float) -> Path:
    """The LR file of `hr` (under `root`) among the --lr files `by_key`: one whose name is the HR's
    plus a tag, of the scale where tags name several (X2/0801x2 and X3/0801x3), else in the same
    sub-folder; UserError where none or several are left."""
    found: dict[Path, str] = {}
    itself = hr.resolve()  # --lr may be the --data folder (RealSR: NAME_HR beside NAME_LR2)
    for p, tag in (pt for k in hr_keys(hr.stem) for pt in by_key.get(k, []) if pt[0].resolve() != itself):
        found[p] = max(found.get(p, ""), tag, key=len)  # the whole tag: _srf_2_lr, not _lr
    if len(found) > 1 and float(scale).is_integer():
        of_scale = {p: t for p, t in found.items() if int(scale) in _tag_scales(t)}
        found = of_scale or {p: t for p, t in found.items() if not _tag_scales(t)} or found
    if len(found) > 1:
        rel = hr.relative_to(root).parent
        found = {p: t for p, t in found.items() if p.relative_to(lr_root).parent == rel} or found
    if not found:
        raise UserError(f"{hr}: no LR image for it in --lr {lr_root} (looked for {hr.stem} with or "
                        f"without a tag: {hr.stem}x{scale:g}, {hr.stem}_LR, ...); add it, or take the "
                        "HR image out of --data")
    if len(found) > 1:
        raise UserError(f"{hr}: several LR images in --lr {lr_root} fit it ("
                        f"{', '.join(one_line(p.relative_to(lr_root)) for p in sorted(found))}); keep one")
    return next(iter(found))


def lr_index(lr_root: Path) -> dict[str, list[tuple[Path, str]]]:
    """The images of an --lr folder by each name they may belong to: {key: [(file, tag)]}."""
    images, _ = list_images(lr_root)
    if not images:
        raise UserError(f"--lr {lr_root}: no images in it")
    by_key: dict[str, list[tuple[Path, str]]] = {}
    for p in images:
        for key, tag in lr_keys(p.stem).items():
            by_key.setdefault(key, []).append((p, tag))
    return by_key


def lr_size(hw: tuple[int, ...], scale: float, protocol: Protocol) -> tuple[int, int]:
    """(H, W) of the LR that the protocol makes from a measured HR of `hw` (after `hr_for`)."""
    if protocol.pil:
        return hw[0] // int(scale), hw[1] // int(scale)
    p, q = scale_period(scale)
    return hw[0] * q // p, hw[1] * q // p


def upright_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as `read_rgb` gives it (turned by its EXIF orientation), from
    its header; an unreadable file is a UserError naming it."""
    with open_image(path, decode=False) as img:
        return header_size(path) or img.size


def pair_given_lr(run: Run, folder: str, images: list[Path], lr_root: Path,
                  by_key: dict[str, list[tuple[Path, str]]]) -> dict[Path, Path]:
    """{HR: its LR} of a --data folder; every LR's size checked from its header against its HR's
    before any image is evaluated (a UserError naming the file)."""
    pairs = {}
    for hr in images:
        lr = pick_lr(hr, Path(folder), lr_root, by_key, run.scale)
        w, h = upright_size(hr)
        measured = hr_for(np.broadcast_to(np.uint8(0), (h, w)), run.scale, run.protocol).shape
        want = lr_size(measured, run.scale, run.protocol)
        lw, lh = upright_size(lr)
        if (lh, lw) != want:
            raise UserError(f"{lr}: the LR is {lw}x{lh}, but {hr.name} ({w}x{h}, {measured[1]}x{measured[0]} "
                            f"after the crop to the scale) needs {want[1]}x{want[0]} at x{run.scale:g}: "
                            + _missized_why((lh, lw), (h, w), run.scale))
        pairs[hr] = lr
    return pairs


def _missized_why(lr_hw: tuple[int, int], hr_hw: tuple[int, int], scale: float) -> str:
    """What a given LR of the wrong size most likely is, and what to do."""
    if lr_hw[::-1] == tuple(round(n / scale) for n in hr_hw) and hr_hw[0] != hr_hw[1]:
        return ("it fits the HR turned on its side: the HR carries an EXIF orientation, which eval "
                "applies (as cv2.imread, BasicSR and viewers do), and the LR was made from its stored "
                "pixels (MATLAB, Pillow); turn the LR upright too, or save the HR without its orientation")
    if float(scale).is_integer() and lr_hw == tuple(-(-n // int(scale)) for n in hr_hw):
        # imresize(HR, 1/s) of an HR whose sides are no multiples of s: ceil(side / s) pixels
        return (f"it was made from the whole HR, not from the HR cropped to a multiple of {scale:g} that "
                "is measured (its pixels sit elsewhere); give --data HR images cropped so (BasicSR's "
                "GTmod12/), or leave out --lr and let eval make the LR")
    return "is it the LR of another scale or image?"


def dataset_names(folders: list[str]) -> list[str]:
    """Each folder's name in the report (and under --save): its own name, or where two share it
    (two Set5 folders) as much of its path as tells them apart."""
    parts = [Path(f).resolve().parts[1:] for f in folders]  # without the root: names stay relative
    names = []
    for i, p in enumerate(parts):
        others = [q for j, q in enumerate(parts) if j != i]
        depth = next((d for d in range(1, len(p) + 1) if all(q[-d:] != p[-d:] for q in others)), len(p))
        names.append("/".join(p[-depth:]))
    if len(set(names)) < len(names):
        raise UserError("--data names the same folder twice")
    return names


LR_NOTE = ("eval makes each LR from its HR image (the protocol's bicubic) and takes no LR files from "
           "--data; to measure on the LR images a dataset ships, give their folder as --lr DIR")


def hr_images(folder: str, given_lr: bool = False) -> tuple[list[Path], list[str]]:
    """(the HR images of a --data folder, notes on the files left out): LR copies kept beside the
    HR (`data.prepare.lr_files`) are left out, never measured as HR; a folder that its name and
    its files' names both mark as LR (DIV2K's LR_bicubic/X2/0001x2.png) is a UserError, either
    alone a note. `given_lr`: the LR comes from --lr (the notes say so)."""
    images, notes = _hr_images(folder)
    return images, [n.replace(LR_NOTE, LR_GIVEN_NOTE) for n in notes] if given_lr else notes


LR_GIVEN_NOTE = "the LR images are those of --lr"


def _hr_images(folder: str) -> tuple[list[Path], list[str]]:
    root = Path(folder)
    if root.is_file():
        raise UserError(f"--data {folder} is a file: --data takes folders of HR images; put the "
                        "image in a folder of its own and name that")
    images, skipped = list_images(root)
    images = one_name_each(root, images)  # a file and a link to it: measured once, as check and train count it
    notes = [f"skipping {one_line(s)} ({skip_reason(s)})" for s in skipped]
    left = lr_files(root, images)
    hr = [p for p in images if p not in left]
    if left:
        first = next(iter(left))
        notes.append(f"{folder}: leaving out {len(left)} LR files, e.g. {one_line(first.relative_to(root))} "
                     f"({left[first]}): {LR_NOTE}")
    lr_named = [p for p in hr if LR_MARK.search(p.stem)]
    lr_dir = lr_folder_name(root)
    if hr and lr_dir and len(lr_named) == len(hr):
        raise UserError(f"--data {folder} is a folder of LR images ({lr_dir}: {one_line(hr[0].relative_to(root))}): "
                        "eval makes each LR from its HR; name the folder of the HR images (HR/, GTmod12/ "
                        f"or the like) as --data, and add --lr {folder} to measure on these LR images")
    if hr and (lr_dir or lr_named):
        example = f"folder {lr_dir}" if lr_dir else f"{one_line(lr_named[0].relative_to(root))} ..."
        notes.append(f"{folder}: named as LR images ({example}) but measured as HR images: {LR_NOTE}; "
                     "if these are LR inputs, name the folder of their HR images instead")
    stems: dict[str, list[Path]] = {}
    for p in hr:
        stems.setdefault(p.stem.lower(), []).append(p)
    twice = [ps for ps in stems.values() if len({p.parent for p in ps}) > 1]
    if twice:
        notes.append(f"{folder}: {len(twice)} names are in more than one sub-folder, e.g. "
                     f"{', '.join(one_line(p.relative_to(root)) for p in twice[0])}: each is measured "
                     "as an image of its own (BasicSR's GTmod12/ and original/ are one set: name one of them)")
    return hr, notes


def check_found(found: dict[str, tuple[list[Path], list[str]]]) -> None:
    """A UserError (after its notes) for a --data folder without images, before any folder is
    evaluated: `--data Urban100 empty` stopped after Urban100's evaluation."""
    for folder, (images, notes) in found.items():
        if not images:
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
            raise UserError(f"no images in {folder}")


def evaluate_folder(run: Run, folder: str, found: tuple[list[Path], list[str]], *, name: str,
                    save_dir: str | None, per_image: bool, progress: bool,
                    given: dict[Path, Path] | None = None) -> dict:
    """{"psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "n"} (and "lpips", "images" where asked)
    over a folder, `found`: its `hr_images` (listed once, before the model loaded); `given`: {HR:
    its LR file} where the LR is given (--lr), else each LR is made from its HR."""
    images, notes = found  # never empty: `check_found`
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    rows = []
    bar = progress_bar(len(images), progress, desc=name, unit=" img", leave=False)
    for path in images:
        try:
            row, panels = run.image(read_rgb(path), None if given is None else read_rgb(given[path]))
        except UserError as exc:  # too small for the scale or SSIM: which image (a read error names it)
            raise (exc if str(path) in str(exc) else UserError(f"{path}: {exc}")) from None
        bar.update(1)
        rel = path.relative_to(folder)  # sub-folders kept: a/x.png and b/x.png are two images
        rows.append({"image": rel.as_posix(), **row})
        if save_dir:
            atomic_save(Image.fromarray(panels[1][1]), Path(save_dir) / name / rel.with_suffix(".png"))
            atomic_save(side_by_side(panels), Path(save_dir) / name / rel.with_name(rel.stem + "_sbs.png"))
    bar.close()
    exact = [r["image"] for r in rows if math.inf in (r["psnr"], r["bicubic_psnr"])]
    if exact:  # one such image makes the set's mean PSNR inf: the others' numbers are lost in it
        which = (f"1 output equals its HR ({exact[0]}" if len(exact) == 1
                 else f"{len(exact)} outputs equal their HR (e.g. {exact[0]}")
        print(f"note: {folder}: {which}, a flat picture?): PSNR inf, and so the mean PSNR (null in "
              "the JSON); leave such images out for a finite mean", file=sys.stderr)
    result = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "image"}
    result["n"] = len(images)
    if per_image:
        result["images"] = rows
    return result


def check_saved_names(folder: str, images: list[Path]) -> None:
    """A UserError where two images of `folder` would be saved (`--save`) under one name: x.png
    and x.jpg both as x.png, or x.png's montage x_sbs.png and an image x_sbs.png (the second
    replaced the first, silently)."""
    taken: dict[Path, Path] = {}
    for path in images:
        rel = path.relative_to(folder)
        for name in (rel.with_suffix(".png"), rel.with_name(rel.stem + "_sbs.png")):
            if name in taken:
                raise UserError(f"--save would write {taken[name]} and {path} to one file, {name}: "
                                "rename one of them, or leave out --save")
            taken[name] = path


@torch.no_grad()
def lpips_distance(metric, out: np.ndarray, hr: np.ndarray, crop_border: int) -> float:
    """LPIPS between two uint8 RGB images of one size, `crop_border` pixels cut at each side."""
    c = crop_border
    a, b = (to_tensor(im[c:im.shape[0] - c, c:im.shape[1] - c], metric.shift.device) for im in (out, hr))
    return float(metric(a, b)[0])


def evaluate_model(model: str, folders: list[str], *, scale=None, crop: int | None = None,
                   y_channel: bool | None = None, protocol: str = "papers", degrade: str | None = None,
                   sigma: float | None = None, lr_dirs: list[str] | None = None,
                   save_dir: str | None = None, per_image: bool = False,
                   lpips: bool = False, lpips_weights: str | None = None, lpips_backbone: str | None = None,
                   backend: str = "auto", device: str = "cpu", precision: str = "fp32",
                   threads: int | None = None, progress: bool = True, allow_untrained: bool = False) -> dict:
    """The `eval` report of `model` on the HR `folders`: {"model", "scale", "protocol", "degrade",
    "y_channel", "crop_border", "runtime", "precision" (`ran_on`), "datasets"}; `scale` None = the model's own; `y_channel` and
    `crop` None = the protocol's (papers: Y, the scale rounded up; catid: RGB, 4); `lr_dirs`: the
    LR folder of each of `folders` (the LR given, not made: "lr" in the report), `degrade` None =
    bicubic."""
    proto = check_protocol(protocol)
    scale = check_scale(scale) if scale is not None else None
    # full fp32 on CUDA too (cuDNN convolutions default to TF32, 10-bit mantissas)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    lr_found = check_lr_dirs(lr_dirs, folders, degrade, sigma)  # before loading a model, as the HR
    found = {folder: hr_images(folder, given_lr=lr_dirs is not None) for folder in folders}
    check_found(found)
    if save_dir:
        for folder, (images, _) in found.items():
            check_saved_names(folder, images)
    lpips_metric = None
    if lpips:  # unavailable without its two weight files: one line says which to pass
        from .lpips import load_lpips
        lpips_metric = load_lpips(lpips_weights, lpips_backbone)
    upscaler = _upscaler(model, scale, proto, backend=backend, device=device, precision=precision,
                         threads=threads, allow_untrained=allow_untrained)
    scale = upscaler.scale if upscaler is not None else scale
    if model == "bicubic" and scale == 1:
        raise UserError("bicubic at x1 gives the HR images back: nothing to measure; name a --scale above 1")
    if proto.pil and not float(scale).is_integer():
        raise UserError(f"the catid protocol downscales to (W // s, H // s): the scale must be an integer, not {scale}")
    run = Run(upscaler, scale, _crop(crop, proto, scale), proto.y_channel if y_channel is None else y_channel,
              proto, check_degrade(degrade or "bicubic", sigma, proto, scale),
              upscaler.device if upscaler is not None else torch.device("cpu"), montage=bool(save_dir))
    note = unlearned_degradation(upscaler, run.degrade) if not lr_found else None
    if note:
        print(f"note: {note}", file=sys.stderr)
    if lpips_metric is not None:
        run.lpips = lpips_metric.to(run.device)
    run.check_sizes([path for images, _ in found.values() for path in images])
    given = {f: pair_given_lr(run, f, found[f][0], *lr_found[f]) if lr_found else None for f in folders}
    names = dataset_names(folders)
    datasets = {name: evaluate_folder(run, f, found[f], name=name, save_dir=save_dir, per_image=per_image,
                                      progress=progress, given=given[f]) for f, name in zip(folders, names)}
    if lr_found:  # said in the report: these numbers are never taken for the protocol's own LR's
        for f, name in zip(folders, names):
            datasets[name]["lr"] = f"given from {lr_found[f][0]}"
    how = (run.degrade.kind if run.degrade.sigma is None
           else {"kind": run.degrade.kind, "sigma": run.degrade.sigma})
    return {"model": model, "scale": int(scale) if float(scale).is_integer() else scale,
            "protocol": proto.name, "degrade": "given (--lr)" if lr_found else how,
            "y_channel": run.y_channel, "crop_border": run.crop, **ran_on(model, upscaler),
            "datasets": datasets}


def ran_on(model: str, upscaler: Upscaler | None) -> dict:
    """What computed the outputs, kept in the report: {"runtime", "precision"} (an `auto` run's
    choice is not fp32 on every machine), and "untrained": true for a registered model's random
    weights (`--allow-untrained`), which a saved JSON would otherwise show as a result."""
    core = upscaler.core if upscaler is not None else None
    ran = ({"runtime": "pillow", "precision": "uint8"} if core is None  # catid's bicubic
           else {"runtime": str(core.runtime), "precision": str(core.precision)})
    return {**ran, "untrained": True} if model != "bicubic" and is_untrained(model) else ran


def unlearned_degradation(upscaler: Upscaler | None, degrade: Degrade) -> str | None:
    """A note where a checkpoint of our trainer learned other LR than the evaluation makes (its
    recipe's degrade.kind): Gaussian-blurred LR scored on bicubic, or the other way round."""
    trained = getattr(getattr(upscaler, "model", None), "trained_degrade", None) or {}
    kind, sigma = trained.get("kind"), trained.get("blur_sigma")
    if kind == degrade.kind or kind not in DEGRADES:
        return None
    if kind == "bicubic":
        return (f"{upscaler.name} was trained on bicubic LR (degrade.kind = \"bicubic\"): --degrade "
                "gaussian scores it on blurred LR it never saw")
    lo, hi = (sigma if isinstance(sigma, list) and len(sigma) == 2 else [1.0, 1.0])
    which = f"--sigma {lo:g}" if lo == hi else f"a --sigma within its [{lo:g}, {hi:g}]"
    return (f"{upscaler.name} was trained on Gaussian-blurred LR (degrade.kind = \"gaussian\"), and this "
            f"evaluation makes bicubic LR: add --degrade gaussian and {which} to score it on the LR it learned")


def check_lr_dirs(lr_dirs: list[str] | None, folders: list[str], degrade: str | None,
                  sigma: float | None) -> dict[str, tuple[Path, dict]] | None:
    """{--data folder: (its --lr folder, `lr_index` of it)}, None without --lr; UserError where
    the --lr folders do not pair one to one with the --data folders, or a degradation is asked too."""
    if lr_dirs is None:
        return None
    if degrade is not None or sigma is not None:
        raise UserError("--degrade/--sigma make the LR from the HR, --lr gives it: use one or the other")
    if len(lr_dirs) != len(folders):
        raise UserError(f"{len(lr_dirs)} --lr folders for {len(folders)} --data folders: give one --lr "
                        "per --data, in the same order")
    for lr in lr_dirs:
        if Path(lr).is_file():
            raise UserError(f"--lr {lr} is a file: --lr takes the folder of the LR images of its --data folder")
    return {f: (Path(lr), lr_index(Path(lr))) for f, lr in zip(folders, lr_dirs)}


def _upscaler(model: str, scale, proto: Protocol, **runtime) -> Upscaler | None:
    """The upscaler of `model`; None for bicubic under a protocol with its own (Pillow's)."""
    if model == "bicubic" and proto.pil:
        if scale is None:
            raise UserError("bicubic needs --scale")
        if runtime["backend"] not in ("torch", "auto"):
            raise UserError("bicubic runs on the torch backend only")
        bicubic_device(runtime["device"])  # (Pillow's, on the CPU: a device that is not here said all the same)
        return None
    return load_upscaler(model, scale=scale, **runtime)


def _crop(crop: int | None, proto: Protocol, scale: float) -> int:
    crop = crop if crop is not None else proto.crop if proto.crop is not None else int(math.ceil(scale))
    if crop < 0:
        raise UserError(f"--crop must be >= 0, got {crop}")
    return crop


def format_report(report: dict, lpips: bool = False) -> str:
    """The `eval` report as a table, one row per dataset (an LPIPS column with `lpips`, the
    bicubic baseline's columns where the report has them)."""
    datasets = report["datasets"]
    width = max(8, *(len(k) for k in datasets))
    base = any("bicubic_psnr" in v for v in datasets.values())
    degrade = report.get("degrade", "bicubic")
    lr = ("" if degrade == "bicubic" else ", LR given (--lr), not made from the HR" if isinstance(degrade, str)
          else f", LR gaussian sigma {degrade['sigma']}")
    lines = [f"model {report['model']}  scale x{report['scale']}  protocol {report.get('protocol', 'papers')}  "
             f"{'Y' if report['y_channel'] else 'RGB'} channel, crop {report['crop_border']}{lr}",
             f"{'dataset':<{width}}  {'n':>4}  {'PSNR':>7}  {'SSIM':>6}" + (f"  {'LPIPS':>6}" if lpips else "")
             + ("  bicubic PSNR / SSIM" if base else "")]
    for k, v in datasets.items():
        lines.append(f"{k:<{width}}  {v['n']:>4}  {v['psnr']:>7.2f}  {v['ssim']:>6.4f}"
                     + (f"  {v['lpips']:>6.4f}" if lpips else "")
                     + (f"  {v['bicubic_psnr']:>12.2f} / {v['bicubic_ssim']:.4f}" if base else ""))
    lines += [f"{k}: LR {v['lr']}" for k, v in datasets.items() if "lr" in v]
    return "\n".join(lines)

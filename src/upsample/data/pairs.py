"""Training data: file lists and splits, and the on-the-fly training pairs.

Making the images (`upsample data prepare|check|clean|split`) is in `prepare.py`.

Training pairs (`PairDataset`): every random choice for the sample with global index k (crop,
flips, degradation draws, which image) comes from a generator seeded with (seed, k), and the
batch sampler (`StepBatchSampler`) derives k and the batch's scale from the step number. A run
resumed at step s therefore sees exactly the batches of an uninterrupted run, whatever the number
of DataLoader workers.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import degrade
from ..errors import UserError
from ..media.progress import counted, track
from ..media.imageio import atomic_output, is_image_path, list_images, read_rgb, too_large


# --- file lists and splits -------------------------------------------------------------------

def read_file_list(path: str | os.PathLike) -> list[Path]:
    """Paths from a list file, one a line; relative entries are relative to the list's folder."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p} is a folder: a file list is a .txt of image paths, one a line "
                        "(`upsample data split FOLDER` writes them)")
    if not p.is_file():
        raise UserError(f"file list not found: {p}")
    out = []
    for line in p.read_text(**NAMES_TEXT).removeprefix("\ufeff").splitlines():  # Notepad's BOM
        line = line.strip()
        if line and not line.startswith("#"):
            q = Path(line)
            out.append(q if q.is_absolute() else p.parent / q)
    return out


# File names as the file system has them: a name that is not UTF-8 (Python holds its bytes as
# lone surrogates) is written to and read from lists, and hashed, as those same bytes.
NAMES_TEXT = {"encoding": "utf-8", "errors": "surrogateescape"}


def name_bytes(text: str) -> bytes:
    return text.encode(**NAMES_TEXT)


def file_list_text(paths: list[Path], out: Path) -> str:
    """A file list as written to `out`: entries relative to its folder, one a line, each as
    `read_file_list` reads it back (`list_entry`)."""
    return "".join(list_entry(os.path.relpath(Path(p).resolve(), out.parent.resolve()), p) + "\n" for p in paths)


def list_entry(rel: str, path: Path) -> str:
    """`rel` as a line that `read_file_list` reads back as itself: "./" before a name that starts
    with # (a comment) or a space (stripped); a UserError for a name that no line can hold (a line
    break in it: it was written as two missing entries; a space at its end: stripped)."""
    if len(rel.splitlines()) != 1 or rel != rel.rstrip():
        what = "a line break" if len(rel.splitlines()) != 1 else "a space at its end"
        raise UserError(f"cannot write {str(path)!r} into a file list (one name a line): its name holds {what}; "
                        "rename the file")
    return os.path.join(".", rel) if rel[0] == "#" or rel != rel.lstrip() else rel


def write_file_list(paths: list[Path], out: Path) -> None:
    """Atomic write; entries relative to the list's folder so both can move together."""
    out.parent.mkdir(parents=True, exist_ok=True)
    text = file_list_text(paths, out)
    with atomic_output(out) as tmp:
        tmp.write_text(text, **NAMES_TEXT)


def hash_split(keys: list[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): val = the round(n * fraction) keys (at least 1 when fraction > 0 and
    n > 1) with the smallest sha1(seed:key). Adding files moves old ones only at the margin: a new
    file that hashes lower takes an old one's place in val, and a larger count takes in the next
    old one (its runs' validation sets stay as they were: this is what they were split by)."""
    n = len(keys)
    n_val = 0 if val_fraction <= 0 or n < 2 else min(n - 1, max(1, round(n * val_fraction)))
    order = sorted(range(n), key=lambda i: hashlib.sha1(name_bytes(f"{seed}:{keys[i]}")).hexdigest())
    val = sorted(order[:n_val])
    chosen = set(val)
    return [i for i in range(n) if i not in chosen], val


def copy_of(files: list[Path]) -> list[int]:
    """For each file, the index of the first of `files` with the same bytes (its own where none):
    a picture saved twice (`photo.png`, `photo copy.png`). Only files that agree in size and in
    their first 64 KiB are read whole (a set of uncompressed BMPs is all of one size)."""
    first = list(range(len(files)))
    groups = _same_key(range(len(files)), lambda i: os.stat(files[i]).st_size)
    for group in groups:
        for same in _same_key(group, lambda i: _digest(files[i], 65536)):
            for same_bytes in _same_key(same, lambda i: _digest(files[i])):
                for i in same_bytes[1:]:
                    first[i] = same_bytes[0]
    return first


def _same_key(indices, key) -> list[list[int]]:
    """The groups of two or more of `indices` of one `key` (one that cannot be read: none)."""
    by_key: dict = {}
    for i in indices:
        try:
            by_key.setdefault(key(i), []).append(i)
        except OSError:  # what reads the file later says why
            pass
    return [g for g in by_key.values() if len(g) > 1]


def _digest(path: Path, limit: int | None = None) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha1(fh.read(limit)).hexdigest() if limit else hashlib.file_digest(fh, "sha1").hexdigest()


def split_copies_together(keys: list[str], files: list[Path], val_fraction: float, seed: int
                          ) -> tuple[list[int], list[int]]:
    """`hash_split` of `keys` that keeps the copies of one file (`copy_of`) on one side, by the
    key of the first: else validation would score pictures that are also trained on."""
    first = copy_of(files)
    leaders = sorted(set(first))
    _, val_leaders = hash_split([keys[i] for i in leaders], val_fraction, seed)
    held = {leaders[j] for j in val_leaders}
    val = [i for i in range(len(keys)) if first[i] in held]
    chosen = set(val)
    return [i for i in range(len(keys)) if i not in chosen], val


def folder_key(folder: Path, path: Path) -> str:
    """The split key of a file found under `folder`: its path from the folder's name. Validation
    splits and samples hash it, so it stays as it is."""
    return f"{folder.name}/{path.relative_to(folder).as_posix()}"


def one_name_each(root: Path, files: list[Path]) -> list[Path]:
    """`files` found under `root`, each real file once (sorted), by one of its listed names: its
    own path where listed (no link on the way), else the first name in sorted order. Two names
    of one file would count, split and train it twice, `clean` would move the file and leave its
    other name a broken link, and which name a walk meets first follows the file system's order
    (a copied folder could split differently). A name not listed (a git-annex object under
    `.git`, which the walk leaves out) is never used."""
    real_root = os.path.realpath(root)
    names: dict[str, list[Path]] = {}
    for f in files:
        names.setdefault(os.path.realpath(f), []).append(f)

    def own(f: Path, real: str) -> bool:
        return real == os.path.join(real_root, os.path.relpath(f, root))
    return sorted(min(listed, key=lambda f: (not own(f, real), str(f))) for real, listed in names.items())


def outside(root: Path, path: Path) -> bool:
    """Whether the file `path`, found under `root`, lies outside it (a link points out of it)."""
    return not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))


def missing_text(missing: list[Path], listing: Path) -> str:
    """What to say of the `missing` entries of the file list `listing`: how many, the first three
    (a typo and a trailing comment show as they are), and where relative ones were looked for."""
    shown = ", ".join(os.path.normpath(m) + (" (a folder: a list names files)" if m.is_dir() else "")
                      for m in missing[:3]) + (", ..." if len(missing) > 3 else "")
    are = "is" if len(missing) == 1 else "are"
    return (f"{counted(len(missing), 'file')} in {listing} {are} missing, e.g. {shown} (relative entries are relative to the "
            f"list's folder, {listing.parent}; a line that starts with # is a comment)")


def relative_hint(p: Path) -> str:
    """For a path not found: where a relative one was looked for (nothing for an absolute one)."""
    return "" if p.is_absolute() else f" (paths are relative to {Path.cwd()})"


def collect_images(sources: list[str], what: str) -> list[tuple[Path, str]]:
    """(path, split key) of the images in folders (recursive) and .txt file lists."""
    out = []
    for src in sources:
        p = Path(src)
        if p.suffix.lower() == ".txt":
            files = read_file_list(p)
            missing = [f for f in files if not f.is_file()]
            if missing:
                raise UserError(f"{what}: {missing_text(missing, p)}")
            out += [(f, f"{p.stem}/{f.name}") for f in files if is_image_path(f)]
        else:
            if not p.exists():
                raise UserError(f"{what}: folder not found: {p}{relative_hint(p)}")
            images = one_name_each(p, list_images(p)[0])
            if not images:
                raise UserError(f"{what}: no images in {p}{hidden_hint(p)}")
            out += [(f, folder_key(p, f)) for f in images]
    if not out:
        raise UserError(f"{what}: no images in {', '.join(sources)}")
    return out


def hidden_hint(folder: Path) -> str:
    """For "no images in FOLDER": the hidden files (a leading dot) that were left out, where the
    folder holds any (`.photo.png`, or only the `._photo.png` shadows of a macOS copy whose real
    files did not come along); else nothing."""
    try:
        hidden = sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))
    except OSError:
        return ""
    if not hidden:
        return ""
    example = next((n for n in hidden if is_image_path(n)), hidden[0])
    return (f" ({len(hidden)} hidden files, names starting with a dot, are left out, e.g. {example}: "
            "rename a picture without the dot to use it)")


def check_not_benchmark(paths: list[Path], what: str) -> None:
    for p in paths:
        if "benchmark" in Path(os.path.abspath(p)).parts:
            raise UserError(f"{what}: {p} is a benchmark image; benchmarks are for reporting only, "
                            "validate on a split of the training data")


def train_val_files(train: list[str], val_list: str, val_fraction: float, seed: int,
                    items: list[tuple[Path, str]] | None = None) -> tuple[list[Path], list[Path]]:
    """The training and validation images of a config's [data] section (of `items`, the
    (file, split key) list when given: sources.training_images lists videos' frames too)."""
    items = collect_images(train, "data.train") if items is None else items
    if val_list:
        val = read_file_list(val_list)
        if not val:
            raise UserError(f"data.val_list: no files in {val_list}")
        held = {os.path.realpath(v) for v in val}
        tr = [p for p, _ in items if os.path.realpath(p) not in held]
    else:
        tr_idx, val_idx = split_copies_together([k for _, k in items], [f for f, _ in items], val_fraction, seed)
        tr, val = [items[i][0] for i in tr_idx], [items[i][0] for i in val_idx]
    check_not_benchmark(tr, "data.train")
    check_not_benchmark(val, "validation")
    if not tr:
        raise UserError("data.train: no training images left after holding out validation")
    return tr, val


# --- training pairs --------------------------------------------------------------------------

def rgb_to_y01(x: torch.Tensor) -> torch.Tensor:
    """NCHW RGB in [0, 1] -> N1HW Y in [16/255, 235/255] (BT.601, as metrics.rgb_to_y / 255)."""
    return (16.0 + 65.481 * x[:, 0:1] + 128.553 * x[:, 1:2] + 24.966 * x[:, 2:3]) / 255.0


def uniforms(seed: int, keys, n: int) -> np.ndarray:
    """(len(keys), n) uniform draws in [0, 1): a pure function of (seed, key, j), vectorised
    (splitmix64 of a counter), so that each sample's random choices are fixed by its key."""
    with np.errstate(over="ignore"):
        k = np.asarray(keys, dtype=np.uint64)[:, None]
        j = np.arange(n, dtype=np.uint64)[None, :]
        x = _splitmix64(_splitmix64(np.uint64(seed) ^ (k * np.uint64(0xD1B54A32D192ED03))) + j)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def step_scale(seed: int, step: int, scales: list[int]) -> int:
    """The scale of every sample of a batch (multi-scale training: one scale per batch)."""
    if len(scales) == 1:
        return scales[0]
    return scales[int(np.random.default_rng([int(seed), int(step), 7]).integers(len(scales)))]


class StepBatchSampler:
    """Batches of (global sample index, scale) for steps start..total-1 of this rank.

    Sample k = (step * world + rank) * batch + i: each rank draws distinct samples, a step's
    samples are the same for any number of DataLoader workers, and resuming at `start` continues
    the exact sequence. The effective batch is batch * world."""

    def __init__(self, start: int, total: int, batch: int, scales: list[int], seed: int,
                 rank: int = 0, world: int = 1):
        self.start, self.total, self.batch = start, total, batch
        self.scales, self.seed, self.rank, self.world = list(scales), seed, rank, world

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self):
        for step in range(self.start, self.total):
            s = step_scale(self.seed, step, self.scales)
            base = (step * self.world + self.rank) * self.batch
            yield [(base + i, s) for i in range(self.batch)]


@dataclass
class PairSpec:
    patch: int                    # HR patch side (the target size)
    scales: list[int]
    y_channel: bool
    pre_upsample: bool            # input = imresize(LR) at HR size (VDSR)
    flip: bool = True
    rot90: bool = True
    kind: str = "bicubic"
    blur_sigma: tuple[float, float] = (1.0, 1.0)
    noise_prob: float = 0.0
    noise_sigma: tuple[float, float] = (1.0, 10.0)
    jpeg_prob: float = 0.0
    jpeg_quality: tuple[int, int] = (30, 95)
    dropout_prob: float = 0.0
    dropout_holes: tuple[int, int] = (1, 4)
    dropout_size: tuple[int, int] = (2, 8)   # LR pixels

    def core(self, s: int) -> int:
        """HR side that is degraded: the patch, rounded up to a multiple of s for VDSR."""
        return int(math.ceil(self.patch / s)) * s if self.pre_upsample else self.patch

    def check_patch(self) -> None:
        check_patch_size(self.patch, self.scales, self.pre_upsample)

    def margin(self, s: int) -> int:
        """LR pixels of real context kept around the patch while degrading, so that the patch's
        LR equals a crop of the whole image's LR (the bicubic kernel reaches 2 LR pixels)."""
        radius = 3.0 * self.blur_sigma[1] if self.kind == "gaussian" else 0.0
        return max(3, int(math.ceil(radius / s)) + 1)


def check_patch_size(patch: int, scales: list, pre_upsample: bool, also: int = 1) -> None:
    """The HR patch must split into whole LR pixels at every scale (VDSR's input is HR-sized): else
    one line naming the nearest sizes that do (and are multiples of `also`, a discriminator's
    need). The trainer asks before the training images are decoded (that took minutes)."""
    scales = sorted({int(s) for s in scales})
    if pre_upsample or patch % math.lcm(*scales) == 0:
        return
    step = math.lcm(also, *scales)
    lower, upper = patch // step * step, (patch // step + 1) * step
    near = f"{lower} or {upper}" if lower else str(upper)
    disc = f" (and of {also}, for the discriminator)" if also > 1 else ""
    raise UserError(f"data.patch_size {patch} is not a multiple of scale {'/'.join(map(str, scales))}: the LR "
                    f"patch must be whole pixels; use e.g. {near}{disc}")


def no_image_fits(spec: PairSpec, shorter_sides) -> UserError:
    """The error where no training image holds a patch: the size needed, the largest image's
    shorter side, and the largest data.patch_size that it would hold (whole LR pixels)."""
    need = max(spec.core(s) for s in spec.scales)
    largest = int(max(shorter_sides, default=0))
    if spec.pre_upsample:  # the core, patch rounded up to whole LR pixels, must fit
        fit = min(largest // s * s for s in spec.scales)
    else:
        fit = largest // math.lcm(*spec.scales) * math.lcm(*spec.scales)
    what = (f"set data.patch_size = {fit} or less, or add larger images" if fit
            else f"add images of at least {need}x{need} px")
    return UserError(f"data.train: no training image is at least {need}x{need} px (data.patch_size "
                     f"{spec.patch}); the largest is {largest} px on its shorter side: {what}")


def as_batch(batch):
    """DataLoader collate_fn for datasets whose __getitems__ already returns a batch."""
    return batch


# Columns of `uniforms` per sample.
# New draws get new columns at the end: column j of a sample does not depend on how many there are.
(_Y, _X, _SIGMA, _NOISE, _NOISE_SIGMA, _NOISE_SEED, _JPEG, _QUALITY, _FLIP_W, _FLIP_H, _TRANSPOSE,
 _DROPOUT, _DROPOUT_HOLES, _DROPOUT_SEED, _DROPOUT_BOXES) = range(15)  # _DROPOUT_BOXES: the first of 4 per hole


def jpeg_drawn(lr: torch.Tensor, spec: PairSpec, u: np.ndarray) -> torch.Tensor:
    """The JPEG round trip of the samples of a batch that draw it, each at its drawn quality, in
    one call on lr's device."""
    chosen = np.flatnonzero(u[:, _JPEG] < spec.jpeg_prob)
    if not len(chosen):
        return lr
    lo, hi = spec.jpeg_quality
    quality = torch.from_numpy(lo + (u[chosen, _QUALITY] * (hi - lo + 1)).astype(np.int64))
    index = torch.from_numpy(chosen).to(lr.device)
    return lr.index_copy(0, index, degrade.jpeg(lr.index_select(0, index), quality))


def dropout_drawn(lr: torch.Tensor, spec: PairSpec, u: np.ndarray) -> torch.Tensor:
    """PairDataset's coarse dropout of the samples that draw it: each one's rectangles
    (`degrade.dropout_boxes`, from a generator seeded by the sample) set to black."""
    chosen = np.flatnonzero(u[:, _DROPOUT] < spec.dropout_prob)
    lo, hi = spec.dropout_holes
    if not len(chosen) or hi < 1:
        return lr
    h, w = lr.shape[-2:]
    boxes = np.zeros((len(lr), hi, 4), dtype=np.int64)  # holes not drawn: empty rectangles
    for i in chosen:
        gen = torch.Generator().manual_seed(int(u[i, _DROPOUT_SEED] * 2 ** 53))
        drawn = degrade.dropout_boxes(lo + int(u[i, _DROPOUT_HOLES] * (hi - lo + 1)), spec.dropout_size,
                                      h, w, gen)
        boxes[i, :len(drawn)] = drawn
    return black_out(lr, boxes)


def dropout_columns(spec: PairSpec) -> int:
    """The columns of `uniforms` a batch with `spec` draws: 4 per possible hole after the others
    (`dropout_boxes_drawn`'s), where it drops out."""
    return _DROPOUT_BOXES + (4 * spec.dropout_holes[1] if spec.dropout_prob > 0 else 0)


def dropout_boxes_drawn(spec: PairSpec, u: np.ndarray, h: int, w: int) -> np.ndarray | None:
    """(B, holes, 4) rectangles (y0, x0, height, width; empty where not drawn) of the samples
    that draw coarse dropout, in h x w LR: the law of `degrade.dropout_boxes`, from the draws'
    own columns, vectorised (no generator per sample). None when no sample drops out."""
    chosen = u[:, _DROPOUT] < spec.dropout_prob
    lo, hi = spec.dropout_holes
    if not chosen.any() or hi < 1:
        return None
    draws = u[:, _DROPOUT_BOXES:_DROPOUT_BOXES + 4 * hi].reshape(len(u), hi, 4)
    small, large = spec.dropout_size
    hh, ww = (np.minimum(small + (draws[..., j] * (large - small + 1)).astype(np.int64), n)
              for j, n in ((0, h), (1, w)))
    y0 = (draws[..., 2] * (h - hh + 1)).astype(np.int64)
    x0 = (draws[..., 3] * (w - ww + 1)).astype(np.int64)
    holes = lo + (u[:, _DROPOUT_HOLES] * (hi - lo + 1)).astype(np.int64)
    used = chosen[:, None] & (np.arange(hi) < holes[:, None])
    return np.stack([y0, x0, np.where(used, hh, 0), ww], -1)


def black_out(lr: torch.Tensor, boxes: np.ndarray | None) -> torch.Tensor:
    """`lr` (B, C, h, w) with each sample's rectangles (B, holes, 4: y0, x0, height, width) set to
    black, as one mask on lr's device."""
    if boxes is None:
        return lr
    h, w = lr.shape[-2:]
    y0, x0, hh, ww = torch.from_numpy(boxes).to(lr.device).unsqueeze(-1).unbind(-2)  # (B, holes, 1)
    rows, cols = torch.arange(h, device=lr.device), torch.arange(w, device=lr.device)
    inside_rows = (rows >= y0) & (rows < y0 + hh)                              # (B, holes, h)
    inside_cols = (cols >= x0) & (cols < x0 + ww)
    holes = (inside_rows[..., :, None] & inside_cols[..., None, :]).any(1)      # (B, h, w)
    return lr.masked_fill(holes[:, None], 0.0)


class PairDataset(torch.utils.data.Dataset):
    """(input, target) float pairs made on the fly from HR images; keys are (k, scale).

    `__getitems__` (used by the DataLoader) makes a whole batch at once: the HR regions (patch plus
    `margin` LR pixels of context) are cut from the image mirror-padded as MATLAB's imresize pads
    it, so all regions have one size and go through one batched resize. A sample depends only on
    (seed, k): its image, crop, degradation draws and flips."""

    def __init__(self, files: list[Path], spec: PairSpec, *, seed: int, cache_mb: int = 4096,
                 progress: bool = False):
        self.spec, self.seed = spec, seed
        spec.check_patch()
        need = max(spec.core(s) for s in spec.scales)
        self.pad = max(spec.margin(s) * s for s in spec.scales)
        sizes = []
        for f in files:
            try:
                with Image.open(f) as im:
                    sizes.append(im.size)
            except Image.DecompressionBombError as exc:
                raise too_large(f, exc) from None
            except (OSError, SyntaxError, ValueError) as exc:
                raise UserError(f"cannot read image {f}: {exc}; run `upsample data check`") from None
        keep = [i for i, (w, h) in enumerate(sizes) if min(w, h) >= need]
        self.skipped = len(files) - len(keep)
        if not keep:
            raise no_image_fits(spec, [min(size) for size in sizes])
        self.files = [files[i] for i in keep]
        p2 = 2 * self.pad
        total_mb = sum((sizes[i][0] + p2) * (sizes[i][1] + p2) * 3 for i in keep) / 2 ** 20
        self.cache: list[np.ndarray] | None = None
        if total_mb <= cache_mb:  # decode each image once; forked workers share the pages
            self.cache = [self._load(f) for f in track(self.files, progress, desc="decoding", unit="image")]
        self._perm_epoch, self._perm = -1, None

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, path: Path) -> np.ndarray:
        """uint8 HWC RGB, mirror-padded by `self.pad` (symmetric, edge repeated, as imresize)."""
        p = self.pad
        return np.pad(read_rgb(path), ((p, p), (p, p), (0, 0)), mode="symmetric")

    def image_index(self, k: int) -> int:
        """Epoch e = k // n visits every image once, in a permutation seeded by (seed, e)."""
        n = len(self.files)
        epoch = k // n
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch, 1]).permutation(n)
            self._perm_epoch = epoch
        return int(self._perm[k % n])

    def image(self, i: int) -> np.ndarray:
        return self.cache[i] if self.cache is not None else self._load(self.files[i])

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        inp, hr = self.__getitems__([key])
        return inp[0], hr[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        scales = {int(s) for _, s in keys}
        if len(scales) != 1:
            raise ValueError(f"one scale per batch, got {sorted(scales)}")
        return self.make_batch([int(k) for k, _ in keys], scales.pop())

    def make_batch(self, ks: list[int], s: int) -> tuple[torch.Tensor, torch.Tensor]:
        sp = self.spec
        u = uniforms(self.seed, ks, 14)
        core, m = sp.core(s), sp.margin(s)
        side = core + 2 * m * s
        regions = []
        for i, k in enumerate(ks):
            img = self.image(self.image_index(k))
            h, w = img.shape[0] - 2 * self.pad, img.shape[1] - 2 * self.pad
            y = self.pad - m * s + int(u[i, _Y] * (h - core + 1))
            x = self.pad - m * s + int(u[i, _X] * (w - core + 1))
            regions.append(img[y:y + side, x:x + side])
        regions = torch.from_numpy(np.ascontiguousarray(np.stack(regions).transpose(0, 3, 1, 2)))
        full = regions.double().div_(255.0)
        if sp.kind == "gaussian":
            lo, hi = sp.blur_sigma
            lr = torch.cat([degrade.blur_subsample(full[i:i + 1], s, lo + (hi - lo) * u[i, _SIGMA])
                            for i in range(len(ks))])
        else:
            lr = degrade.imresize(full, 1.0 / s)
        for i in np.flatnonzero(u[:, _NOISE] < sp.noise_prob):
            lo, hi = sp.noise_sigma
            gen = torch.Generator().manual_seed(int(u[i, _NOISE_SEED] * 2 ** 53))
            lr[i:i + 1] = degrade.add_noise(lr[i:i + 1], lo + (hi - lo) * u[i, _NOISE_SIGMA], gen)
        lr = jpeg_drawn(degrade.quantize(lr), sp, u)
        n = core // s
        lr = dropout_drawn(lr[..., m:m + n, m:m + n], sp, u)
        hr = regions[..., m * s:m * s + core, m * s:m * s + core].double() / 255.0
        if sp.y_channel:  # per-pixel and linear: commutes with the flips and the upscale below
            lr, hr = rgb_to_y01(lr), rgb_to_y01(hr)
        lr, hr = lr.float(), hr.float()
        for col, enabled, op in ((_FLIP_W, sp.flip, lambda t: t.flip(-1)),
                                 (_FLIP_H, sp.flip, lambda t: t.flip(-2)),
                                 (_TRANSPOSE, sp.rot90, lambda t: t.transpose(-1, -2))):
            sel = torch.from_numpy(u[:, col] < 0.5) if enabled else None
            if sel is not None and sel.any():
                lr[sel], hr[sel] = op(lr[sel]), op(hr[sel])
        inp = lr
        if sp.pre_upsample:  # in float32 on Y, as the Upscaler does it at evaluation
            inp = degrade.imresize(lr, float(s), size=(core, core))[..., :sp.patch, :sp.patch]
            hr = hr[..., :sp.patch, :sp.patch]
        return inp.contiguous(), hr.contiguous()

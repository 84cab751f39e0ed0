"""`upsample image IN... -o OUT`: the command, torch-free until a model has to be built.

The upscaling itself is `api.ImageUpscaler` (tiled, any image kind), or on a cache hit
`fastpath.FastEngine` (see there); both read and write through `imageio`, never overwrite
without --overwrite, and write to a temporary name that is renamed when complete.
"""

from __future__ import annotations

import argparse
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from ..inference import fastpath
from ..errors import UserError
from ..media.imageio import SAVE_FORMATS, is_image_path, list_images, read_planes, save_planes, storable_path
from ..inference.sizes import MAX_DEFAULT_PAD, parse_count, parse_size
from .options import add_model_options


def collect_inputs(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(source file, path relative to the output folder) for files and folders (recursive)."""
    jobs = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            images, skipped = list_images(p)
            for s in skipped:
                print(f"note: skipping non-image file {s}", file=sys.stderr)
            if not images:
                print(f"note: no images in {p}", file=sys.stderr)
            jobs += [(f, f.relative_to(p)) for f in images]
        elif p.is_file():
            jobs.append((p, Path(p.name)))
        else:
            raise UserError(f"input not found: {p}")
    if not jobs:
        raise UserError("no input images")
    return jobs


def _scale_text(s: float) -> str:
    return str(int(s)) if float(s).is_integer() else f"{s:g}"


def output_path(out: Path, rel: Path, src: Path, suffix: str, ext: str, single_file: bool) -> Path:
    e = src.suffix.lower().lstrip(".") if ext == "same" else ext
    if e not in SAVE_FORMATS:
        e = "png"
    if single_file:
        return out
    return out / rel.parent / f"{rel.stem}{suffix}.{e}"


def run(args: argparse.Namespace) -> int:
    jobs = collect_inputs(args.inputs)
    out = Path(args.output)
    single = (len(jobs) == 1 and len(args.inputs) == 1 and Path(args.inputs[0]).is_file()
              and is_image_path(out) and not out.is_dir())
    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise UserError(f"--quality must be in 1..100, got {args.quality}")
    if args.tile is not None and args.tile < 0:
        raise UserError(f"--tile must be >= 0, got {args.tile}")
    tile_batch = parse_count(args.tile_batch, "--tile-batch")
    max_memory = parse_size(args.max_memory) if args.max_memory else None
    progress = sys.stderr.isatty()
    built, lock = [], threading.Lock()

    def full_engine():
        """The torch path (`api.ImageUpscaler`), built once, when first needed."""
        with lock:
            if not built:
                from ..inference.api import ImageUpscaler, make_upscaler
                up = make_upscaler(args.model, args.scale, backend=args.backend, device=args.device,
                                   half=args.half, outscale=args.outscale, precision=args.precision,
                                   threads=args.threads)
                fastpath.remember(args, up)
                built.append(ImageUpscaler(up, tile=args.tile, tile_pad=args.tile_pad,
                                           max_memory=max_memory, alpha_mode=args.alpha_mode,
                                           jobs=args.jobs, progress=progress, verbose=True,
                                           tile_batch=tile_batch))
            return built[0]

    fast = fastpath.FastEngine.load(args)  # a cache hit: no torch unless an image needs it
    if fast:
        name, final = fast.name, fast.scale
    else:
        engine = full_engine()
        name, final = engine.up.name, engine.scale
    suffix = args.suffix if args.suffix is not None else f"_x{_scale_text(final)}"

    todo, seen = [], {}
    skipped = 0
    for src, rel in jobs:
        dst = output_path(out, rel, src, suffix, args.ext, single)
        if dst.resolve() == src.resolve():
            print(f"upsample image: error: {src}: the output would replace the input; "
                  f"use another -o or --suffix", file=sys.stderr)
            seen[dst] = src
            continue
        if dst in seen:
            raise UserError(f"{src} and {seen[dst]} would both be written to {dst}")
        seen[dst] = src
        if dst.exists() and not args.overwrite:
            print(f"note: {dst} exists, skipped (use --overwrite to replace it)", file=sys.stderr)
            skipped += 1
            continue
        todo.append((src, dst))
    failed = len(jobs) - len(todo) - skipped
    print(f"{name} x{_scale_text(final)}: {len(todo)} image(s) -> {out}", file=sys.stderr)

    def one(item) -> tuple[bool, Path]:
        """(written, path): the image saved, or not because its PNG fallback name exists."""
        src, dst = item
        planes = read_planes(src)
        final = storable_path(planes.mode, dst)
        if final != dst and final.exists() and not args.overwrite:
            return False, final
        result = fast.upscale_planes(planes) if fast else None
        if result is None:  # not a plan hit, or an image the fast path does not take
            result = full_engine().upscale_planes(planes, desc=src.name)
        del planes
        return True, save_planes(result, final, quality=args.quality)

    bar = tqdm(total=len(todo), desc="images", unit="img", file=sys.stderr, disable=not progress)
    written = 0
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for (src, dst), fut in zip(todo, [pool.submit(one, t) for t in todo]):
            try:
                saved, path = fut.result()
            except UserError as exc:
                tqdm.write(f"upsample image: error: {src}: {exc}", file=sys.stderr)
                failed += 1
            except (OSError, RuntimeError, ValueError, MemoryError) as exc:
                tqdm.write(f"upsample image: error: {src}: {type(exc).__name__}: {exc}", file=sys.stderr)
                failed += 1
            else:
                if not saved:
                    tqdm.write(f"note: {path} exists, skipped (use --overwrite to replace it)",
                               file=sys.stderr)
                    skipped += 1
                    bar.update(1)
                    continue
                written += 1
                if path != dst:
                    tqdm.write(f"note: {dst.suffix} cannot hold this image; wrote PNG", file=sys.stderr)
                tqdm.write(f"wrote {path}")
            bar.update(1)
    bar.close()
    print(f"{written} written, {skipped} skipped, {failed} failed -> {out}", file=sys.stderr)
    return 1 if failed else 0


def register(sub) -> None:
    p = sub.add_parser("image", help="upscale image files or folders (tiled, any size)")
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders (recursive)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output folder (keeps sub-folders), or a file name for one input file")
    add_model_options(p)
    p.add_argument("--outscale", default=None, help="final size factor: the model, then a bicubic resize")
    p.add_argument("--tile-pad", type=int, default=None,
                   help=f"overlap of tiles in input pixels (default: receptive field, at most {MAX_DEFAULT_PAD})")
    p.add_argument("--suffix", default=None, help="added to output names (default: _x<outscale>)")
    p.add_argument("--ext", default="png", choices=["png", "jpg", "webp", "same"], help="output format")
    p.add_argument("--quality", type=int, default=None, help="JPEG/WebP quality 1-100 (default 95)")
    p.add_argument("--alpha-mode", default="bicubic", choices=["bicubic", "model"],
                   help="how to upscale transparency")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip)")
    p.add_argument("--jobs", type=int, default=1, help="images processed at once")
    p.set_defaults(func=run)

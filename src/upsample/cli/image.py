"""`upsample image IN... -o OUT`: the command, torch-free until a model has to be built
(`inference.batch`: which files, where each goes, the fast path or the full engine)."""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from ..errors import UserError
from ..inference import batch
from ..inference.sizes import MAX_DEFAULT_PAD, parse_count, parse_size
from .options import add_model_options


def run(args: argparse.Namespace) -> int:
    jobs = batch.collect_inputs(args.inputs)
    out = Path(args.output)
    if args.jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise UserError(f"--quality must be in 1..100, got {args.quality}")
    if args.tile is not None and args.tile < 0:
        raise UserError(f"--tile must be >= 0, got {args.tile}")
    tile_batch = parse_count(args.tile_batch, "--tile-batch")
    max_memory = parse_size(args.max_memory) if args.max_memory else None
    progress = sys.stderr.isatty()
    engines = batch.Engines(args, max_memory=max_memory, tile_batch=tile_batch, progress=progress)
    scale = batch.scale_text(engines.scale)
    todo, skipped, failed = batch.plan_outputs(
        jobs, out, suffix=args.suffix if args.suffix is not None else f"_x{scale}", ext=args.ext,
        single=batch.is_single_file(args.inputs, jobs, out), overwrite=args.overwrite)
    print(f"{engines.name} x{scale}: {len(todo)} image(s) -> {out}", file=sys.stderr)
    bar = tqdm(total=len(todo), desc="images", unit="img", file=sys.stderr, disable=not progress)
    written = 0
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(engines.upscale_file, src, dst, overwrite=args.overwrite,
                               quality=args.quality) for src, dst in todo]
        for (src, dst), fut in zip(todo, futures):
            try:
                saved, path = fut.result()
            except UserError as exc:
                tqdm.write(f"upsample image: error: {src}: {exc}", file=sys.stderr)
                failed += 1
            except (OSError, RuntimeError, ValueError, MemoryError) as exc:
                tqdm.write(f"upsample image: error: {src}: {type(exc).__name__}: {exc}", file=sys.stderr)
                failed += 1
            else:
                if saved:
                    written += 1
                    if path != dst:
                        tqdm.write(f"note: {dst.suffix} cannot hold this image; wrote PNG", file=sys.stderr)
                    tqdm.write(f"wrote {path}")
                else:
                    tqdm.write(f"note: {path} exists, skipped (use --overwrite to replace it)", file=sys.stderr)
                    skipped += 1
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

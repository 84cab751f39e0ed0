"""`upsample image IN... -o OUT`: the command, torch-free until a model has to be built
(`inference.batch`: which files, where each goes, the fast path or the full engine)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import UserError, one_line
from ..inference.sizes import MAX_DEFAULT_PAD, parse_count
from .options import (add_max_pixels_option, add_model_options, add_output_option, add_overwrite_option,
                      check_half, check_scale_text, job_count, memory_limit, path_text, silence)


def run(args: argparse.Namespace) -> int:
    # numpy, Pillow and tqdm here, not at the top: `image --help` needs none of them
    from ..inference import batch
    from ..media.progress import progress_bar
    out = Path(args.output)
    check_half(args)
    check_scale_text(args.scale)  # torch-free: before the model loads
    check_scale_text(args.outscale, "--outscale")
    args.inputs = _distinct(args.inputs)
    jobs, left_out = batch.collect_inputs(args.inputs, out, args.suffix)
    _check_ext(args.ext, out, batch.is_single_file(args.inputs, jobs, out))
    if args.quality is not None and not 1 <= args.quality <= 100:
        raise UserError(f"--quality must be in 1..100, got {args.quality}")
    if args.tile_pad is not None and args.tile_pad < 0:  # the tiler says so too, after the model loads
        raise UserError(f"--tile-pad must be >= 0 (the tiles' overlap in input pixels), got {args.tile_pad}")
    tile_batch = parse_count(args.tile_batch, "--tile-batch")
    max_memory = memory_limit(args.max_memory)
    batch.check_output_location(args.inputs, jobs, out)  # before a model loads
    # tile bars on a terminal, a line every few seconds in a log (one large image takes minutes)
    engines = batch.Engines(args, max_memory=max_memory, tile_batch=tile_batch, progress=True)
    scale = batch.scale_text(engines.scale)
    todo, skipped, failed = batch.plan_outputs(
        jobs, out, suffix=args.suffix if args.suffix is not None else f"_x{scale}", ext=args.ext or "png",
        single=batch.is_single_file(args.inputs, jobs, out), overwrite=args.overwrite, left_out=left_out)
    also = ", ".join(f"{n} {what}" for n, what in ((skipped, "skipped"), (failed, "refused")) if n)
    print(f"{engines.name} x{scale}: {len(todo)} image(s) -> {out}" + (f" ({also})" if also else ""),
          file=sys.stderr)
    counts = {"written": 0, "skipped": skipped, "failed": failed}
    renamed: list[Path] = []  # outputs as PNG, their format unable to hold them
    try:
        _run_all(engines, todo, args, counts, progress_bar(len(todo), True, desc="images", unit=" img"), renamed)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM: what is done stays, the rerun skips it
        print(f"{counts['written']} written before the stop -> {out}; the same command again does the "
              "rest (existing outputs are skipped)", file=sys.stderr)
        raise
    undone = len(todo) - sum(counts.values()) + skipped + failed
    if renamed and out.suffix and len(todo) == 1:  # -o named the file: say the one written
        out = renamed[0]
    print(f"{counts['written']} written, {counts['skipped']} skipped, {counts['failed']} failed"
          f"{f', {undone} not started' if undone else ''} -> {out}", file=sys.stderr)
    if counts["failed"] or undone:
        return 2 if not counts["written"] and not counts["skipped"] else 1  # nothing done: as any user error
    return 0


class _Stop(Exception):
    """The output's file system is full or read-only: every image after would fail the same way."""


# Errors of the output's disk, not of one image
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _run_all(engines: "batch.Engines", todo: list, args: argparse.Namespace, counts: dict, bar,
             renamed: list) -> None:
    """Upscale `todo` in order, counting each outcome in `counts` (and in `renamed` the outputs
    as PNG under another name); stops at a full or read-only disk."""
    with bar, contextlib.closing(_outcomes(engines, todo, args)) as outcomes:
        for src, dst, result in outcomes:
            try:
                saved, path = _report(src, dst, result)
            except _Stop:
                counts["failed"] += 1
                return
            counts["failed"] += path is None
            counts["written"] += bool(saved)
            counts["skipped"] += path is not None and not saved
            if path is not None and path != dst:  # written, or there already
                renamed.append(path)
            bar.update(1)


def _check_ext(ext: str | None, out: Path, single: bool) -> None:
    """--ext against an -o that names one file of another format (`-o a.png --ext jpg` wrote a
    PNG without a word): one of them is a mistake."""
    named = {"jpeg": "jpg"}.get(out.suffix.lower().lstrip("."), out.suffix.lower().lstrip("."))
    if named not in ("png", "jpg", "webp"):
        return  # an -o this tool cannot write at all: said by the output check, whatever --ext is
    if single and ext not in (None, "same") and ext != named:
        raise UserError(f"-o {out} names a .{named} file but --ext is {ext}: name a .{ext} file, or leave "
                        "--ext out (it picks the format of outputs written into a folder)")


def _distinct(inputs: list[str]) -> list[str]:
    """`inputs` less a path named again (`a.png ./a.png`, `*.png a.png`): one input file named
    twice is still one input, written to an -o that names a file (it was "1 images need a folder")."""
    import os
    seen, kept = set(), []
    for item in inputs:
        key = os.path.normpath(os.path.abspath(item))  # (a link is a name of its own, as its output is)
        if key not in seen:
            seen.add(key)
            kept.append(item)
    return kept


def _outcomes(engines: "batch.Engines", todo: list, args: argparse.Namespace):
    """(source, destination, a call that returns upscale_file's result or raises) in order. One
    job runs in this thread, so that Ctrl-C stops the image being written (its temporary file
    goes); with more, Ctrl-C cancels the images not started."""
    def one(src, dst):
        return engines.upscale_file(src, dst, overwrite=args.overwrite, quality=args.quality)
    if args.jobs == 1:
        for src, dst in todo:
            yield src, dst, (lambda s=src, d=dst: one(s, d))
        return
    pool = ThreadPoolExecutor(max_workers=args.jobs)
    try:
        futures = [pool.submit(one, src, dst) for src, dst in todo]
        for (src, dst), fut in zip(todo, futures):
            yield src, dst, fut.result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _report(src: Path, dst: Path, result) -> tuple[bool, Path | None]:
    """Run `result()` and say what happened in one line: (written, path; None when it failed)."""
    from tqdm import tqdm
    try:
        saved, path = result()
    except UserError as exc:  # one line per file, and the batch goes on
        where = "" if str(src) in str(exc) else f"{src}: "
        tqdm.write(f"upsample image: error: {one_line(f'{where}{exc}')}", file=sys.stderr)
        return False, None
    except OSError as exc:
        if exc.errno not in _DISK_ERRORS:
            return _failed(src, exc)
        where = one_line(exc.filename or dst.parent)
        tqdm.write(f"upsample image: error: {one_line(src)}: cannot write {where}: {exc.strerror}; the batch "
                   "stops here: free space (or choose another -o), then run the same command again (the "
                   "images written are skipped)", file=sys.stderr)
        raise _Stop from None
    except (RuntimeError, ValueError, MemoryError) as exc:
        return _failed(src, exc)
    if not saved:
        tqdm.write(f"note: {one_line(path)} exists, skipped (use --overwrite to replace it)", file=sys.stderr)
        return False, path
    if path != dst:  # named: in a batch, the line of "wrote" that follows is on stdout
        tqdm.write(f"note: {one_line(src)}: {dst.suffix} cannot hold its upscale (transparency, 16 bits or "
                   "a side over the format's limit); wrote PNG", file=sys.stderr)
    _say(f"wrote {one_line(path)}")
    return True, path


def _failed(src: Path, exc: Exception) -> tuple[bool, None]:
    """One error line for an image that failed; the batch goes on."""
    from tqdm import tqdm
    text = " ".join(str(exc).split())  # one line: a runtime's message may span several
    tqdm.write(f"upsample image: error: {one_line(src)}: {type(exc).__name__}: {one_line(text)[:400]}",
               file=sys.stderr)
    return False, None


def _say(line: str) -> None:
    """`line` on stdout. When its reader has gone (`upsample image ... | head`), the lines that
    follow go nowhere and the batch goes on: the images are the output, not these lines."""
    from tqdm import tqdm
    try:
        tqdm.write(line)
    except BrokenPipeError:
        silence(sys.stdout)


def register(sub) -> None:
    p = sub.add_parser("image", help="upscale image files or folders (tiled, any size)")
    p.add_argument("inputs", nargs="+", metavar="IN", type=path_text, help="image files or folders (recursive)")
    add_output_option(p, help="output folder (keeps sub-folders), or a file name for one input file")
    add_model_options(p)
    p.add_argument("--outscale", default=None, help="final size factor: the model, then a bicubic resize (default: the model's scale)")
    p.add_argument("--tile-pad", type=int, default=None,
                   help=f"overlap of tiles in input pixels (default: receptive field, at most {MAX_DEFAULT_PAD})")
    p.add_argument("--suffix", default=None, help="added to output names (default: _x<outscale>)")
    p.add_argument("--ext", default=None, choices=["png", "jpg", "webp", "same"],
                   help="output format of the files written into a folder (default: png; an -o file "
                        "name's own)")
    p.add_argument("--quality", type=int, default=None, help="JPEG/WebP quality 1-100 (default 95)")
    p.add_argument("--alpha-mode", default="bicubic", choices=["bicubic", "model"],
                   help="how to upscale transparency")
    add_overwrite_option(p, help="replace existing outputs (default: skip them)")
    p.add_argument("--jobs", type=job_count, default=1, help="images processed at once")
    add_max_pixels_option(p)
    p.set_defaults(func=run)

"""`upsample data prepare|check|clean|split`: the training-image tools of data/prepare.py."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import UserError, one_line
from ..media.progress import counted
from .options import add_max_pixels_option, add_output_option, add_overwrite_option, path_text

# data.prepare.PROBLEM_KINDS (a test checks it), here so that `data --help` needs no torch
PROBLEM_KINDS = ("unreadable", "truncated", "too-small", "grayscale", "cmyk", "alpha", "duplicate")


def _summary(n: int, problems: list) -> str:
    files = len({p.path for p in problems})
    by_kind = {k: sum(1 for p in problems if p.kind == k) for k in PROBLEM_KINDS}
    parts = ", ".join(f"{v} {k}" for k, v in by_kind.items() if v)
    return f"{counted(n, 'image')}, {files} with problems" + (f" ({parts})" if parts else "")


def _check_folder_writable(folder: str, option: str) -> None:
    """One clear line, before any work, where the output folder cannot be made or written (a
    file's name, a read-only place), instead of the OSError of the first file written there."""
    from ..inference.batch import check_writable
    check_writable(Path(folder), folder, option)


def _check_no_dead_link(folder: str, option: str) -> None:
    """One clear line where the output folder is a link that leads nowhere: one that leads to
    itself made Path.resolve() raise a RuntimeError traceback."""
    if os.path.islink(folder) and not os.path.exists(folder):
        raise UserError(f"{option} {folder} is a link that leads nowhere (or to itself): remove it, "
                        "or name another folder")


def _check_out_holds_no_source(out: str, sources: list[str]) -> None:
    """-o a folder above a source (`data prepare imgs -o .`): every file in it is skipped as a
    crop made before, and the error said "no images or videos in imgs" of a full folder."""
    made_here = Path(out).resolve()
    for src in sources:
        if made_here in Path(src).resolve().parents:
            raise UserError(f"-o {out} holds the source {src}: name a folder for the crops outside it")


def _check_sources_exist(sources: list[str]) -> None:
    """A missing source named before any path is resolved: a link that leads to itself made
    Path.resolve() raise a RuntimeError traceback."""
    for src in sources:
        if not os.path.exists(src):
            dead = " (a link that leads nowhere)" if os.path.islink(src) else ""
            raise UserError(f"source not found: {src}{dead}")


def run_prepare(args: argparse.Namespace) -> int:
    from ..data import prepare
    _check_sources_exist(args.src)
    _check_no_dead_link(args.out, "-o")
    _check_out_holds_no_source(args.out, args.src)
    _check_folder_writable(args.out, "-o")
    c = prepare.prepare(args.src, args.out, size=args.size, stride=args.stride, min_rest=args.min_size,
                        every=args.every_n_frames, progress=True)
    print(f"{counted(c['sources'], 'source')}: {c['crops']} crops ({c['written']} written now) in {args.out}; "
          f"{c['skipped_done']} already done, {counted(c['too_small'], 'source')} smaller than {args.size}, "
          f"{c['unreadable']} unreadable")
    return 0


def _check_min_size(n: int) -> None:
    if n < 1:
        raise UserError(f"--min-size must be >= 1 pixel, got {n}")


def run_check(args: argparse.Namespace) -> int:
    from ..data import prepare
    from ..data.pairs import hidden_hint
    _check_min_size(args.min_size)
    images, problems = prepare.scan(args.dir, args.min_size, progress=True)
    if not images and not problems:  # as `train` and `eval` take it: nothing to train or measure on
        raise UserError(f"no images in {args.dir}{hidden_hint(Path(args.dir))}")
    for pr in problems:
        print(one_line(f"{pr.path}: {pr.kind}: {pr.detail}"))  # one line a file: scripts read them
    print(_summary(len(images), problems))
    return 1 if problems else 0  # non-zero: scripts can stop on a dirty folder


def run_clean(args: argparse.Namespace) -> int:
    from ..data import prepare
    _check_min_size(args.min_size)
    if not os.path.exists(args.dir):  # before resolve(), which raised a RuntimeError on a link to itself
        raise UserError(f"folder not found: {args.dir}")
    _check_no_dead_link(args.quarantine, "--quarantine")
    if Path(args.quarantine).resolve() in Path(args.dir).resolve().parents:  # was "no images in DIR"
        raise UserError(f"--quarantine {args.quarantine} holds {args.dir}: name a folder outside it")
    _check_folder_writable(args.quarantine, "--quarantine")
    n, problems, moved, left = prepare.clean(args.dir, args.quarantine, min_size=args.min_size,
                                             keep=args.keep, progress=True)
    for src, dst in moved:
        print(one_line(f"moved {src} -> {dst}"))
    for src, why in left:
        print(one_line(f"left {src} where it is: {why}"))
    undo = f" ({Path(args.quarantine) / 'QUARANTINE.tsv'} lists where each came from and why)" if moved else ""
    rest = f"; left {len(left)} files that lie outside {args.dir}" if left else ""
    print(f"{_summary(n, problems)}; moved {counted(len(moved), 'file')} to {args.quarantine}{undo}{rest}")
    return 1 if left else 0  # files with problems are still there for training to find


def run_split(args: argparse.Namespace) -> int:
    from ..data import prepare
    if args.out is not None:  # else DIR itself, which `split` checks
        _check_no_dead_link(args.out, "-o")
        _check_folder_writable(args.out, "-o")
    n_train, n_val, out = prepare.split(args.dir, args.val, args.seed, args.out, overwrite=args.overwrite)
    print(f"{n_train} train, {n_val} val images: {out / 'train.txt'}, {out / 'val.txt'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("data", help="prepare, check, clean and split training images")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    pp = dsub.add_parser("prepare", help="cut images and videos into square HR PNG crops")
    pp.add_argument("src", nargs="+", type=path_text,
                    help="image folders (recursive), image or video files, or .txt lists of them (data split's train.txt)")
    add_output_option(pp, dest="out", metavar="DIR", help="folder for the crops")
    pp.add_argument("--size", type=int, default=512, help="crop side in pixels (default 512)")
    pp.add_argument("--stride", type=int, default=None, help="crop step (default: --size)")
    pp.add_argument("--min-size", type=int, default=0, metavar="N",
                    help="add a crop flush with the right/bottom edge when the stride leaves at "
                         "least N pixels uncovered (default 0: cover every image completely)")
    pp.add_argument("--every-n-frames", type=int, default=1, metavar="K", help="video: keep every K-th frame (default 1)")
    add_max_pixels_option(pp)
    pp.set_defaults(func=run_prepare)
    pc = dsub.add_parser("check", help="report unreadable, small, odd-mode and duplicate images",
                         description="Report unreadable, small, odd-mode and duplicate images, one line "
                                     "each; moves nothing (`data clean` does). Exit status: 0 all fine, "
                                     "1 problems found, 2 no folder or no images.")
    pc.add_argument("dir", type=path_text, help="folder of training images (recursive)")
    pc.add_argument("--min-size", type=int, default=96, help="smallest acceptable side (default 96)")
    add_max_pixels_option(pc)
    pc.set_defaults(func=run_check)
    pl = dsub.add_parser("clean", help="move the images `check` reports into a quarantine folder",
                         description="Move the images `data check DIR` reports (run it first to see them: it "
                                     "moves nothing) into a quarantine folder; nothing is deleted. Files that "
                                     "a linked folder leads to outside DIR are left where they are, named, "
                                     "and the exit status is then 1.")
    pl.add_argument("dir", type=path_text, help="folder of training images (recursive)")
    pl.add_argument("--quarantine", required=True, metavar="DIR2", type=path_text,
                    help="folder the problem files are moved to (QUARANTINE.tsv there says where each came from)")
    pl.add_argument("--min-size", type=int, default=96, help="smallest acceptable side (default 96)")
    pl.add_argument("--keep", action="append", default=[], choices=PROBLEM_KINDS,
                    help="leave files with this kind of problem in place (repeatable; default: move all)")
    add_max_pixels_option(pl)
    pl.set_defaults(func=run_clean)
    ps = dsub.add_parser("split", help="deterministic train.txt / val.txt file lists")
    ps.add_argument("dir", type=path_text, help="folder of training images (recursive)")
    ps.add_argument("--val", type=float, default=0.01, help="validation fraction (default 0.01)")
    ps.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    add_output_option(ps, dest="out", metavar="DIR", required=False,
                      help="folder for train.txt and val.txt (default: the input folder)")
    add_overwrite_option(ps, help="replace train.txt / val.txt that hold another split (default: refuse)")
    add_max_pixels_option(ps)
    ps.set_defaults(func=run_split)

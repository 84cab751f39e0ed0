"""`upsample cache info|clear [PART ...]`: what the cache folder holds, and emptying it: the
runtimes' exports, compiled blobs and precision checks, the decoded training images and the
frames sampled from training videos. Everything in it is remade when needed."""

from __future__ import annotations

from ..errors import UserError
from ..media.cache import PARTS, cache_root, clear_part, files_size, part_dir, part_files


def run(args) -> int:
    # clear alone empties the exports only: a training run may be reading the other parts
    if "all" in args.parts and args.parts != ["all"]:
        raise UserError(f"`all` goes alone: `upsample cache {args.action} all`, or name parts ({', '.join(PARTS)})")
    parts = list(PARTS) if args.parts == ["all"] else args.parts or (list(PARTS) if args.action == "info" else ["export"])
    parts = list(dict.fromkeys(parts))  # `info export export`: once
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise UserError(f"no cache part {unknown[0]!r}: the parts are {', '.join(PARTS)}")
    if args.action == "info":
        print(f"{cache_root()} (set UPSAMPLE_CACHE to move it):")
        if cache_root().exists() and not cache_root().is_dir():  # runs then cache nothing between them
            print(f"  note: {cache_root()} is a file, not a folder: each run makes and drops a temporary "
                  "cache; set UPSAMPLE_CACHE to a folder")
        for part in parts:
            files = part_files(part)
            size = files_size(files)
            print(f"  {part}: {len(files)} files, {size / 1e6:.1f} MB ({PARTS[part]})")
        return 0
    for part in parts:
        n, size = clear_part(part)
        where = part_dir(part)
        where = f"{where} -> {where.resolve()} (its contents; the link kept)" if where.is_symlink() else where
        print(f"cleared {where} ({n} files, {size / 1e6:.1f} MB)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("cache", help="what the cache holds (exports, decoded training images, video frames): info or clear")
    p.add_argument("action", choices=["info", "clear"],
                   help="info: the cache folder and each part's size; clear: delete the parts' files "
                        "(all are made again when needed)")
    p.add_argument("parts", nargs="*", default=[], metavar="PART",  # a default: argparse no longer calls it required
                   help=f"these parts: {', '.join(PARTS)}, or all (default: all for info, export for clear)")
    p.set_defaults(func=run)

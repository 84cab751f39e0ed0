"""`upsample cache info|clear`: the exports, compiled blobs and precision checks of the runtimes."""

from __future__ import annotations

from ..runtime import cache


def run(args) -> int:
    if args.action == "info":
        files = cache.cache_files()
        size = sum(p.stat().st_size for p in files)
        print(f"{cache.cache_dir()}: {len(files)} files, {size / 1e6:.1f} MB (exports, OpenVINO compiled "
              "blobs, precision checks; set UPSAMPLE_CACHE to move it)")
        return 0
    root, n, size = cache.clear()
    print(f"cleared {root} ({n} files, {size / 1e6:.1f} MB)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("cache", help="the export cache of the auto and runtime backends: info or clear")
    p.add_argument("action", choices=["info", "clear"])
    p.set_defaults(func=run)

"""The one cache folder of upsample: `$UPSAMPLE_CACHE`, else `$XDG_CACHE_HOME/upsample`, else
`~/.cache/upsample`. The export cache, the training store and the video-frame cache are folders
in it (the datasets and videos they are made from may lie on read-only media)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    root = os.environ.get("UPSAMPLE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                    Path.home() / ".cache") / "upsample"
    return Path(root)

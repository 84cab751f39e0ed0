"""The one cache folder of upsample: `$UPSAMPLE_CACHE`, else `$XDG_CACHE_HOME/upsample`, else
`~/.cache/upsample`. The export cache, the training store and the video-frame cache are folders
in it (the datasets and videos they are made from may lie on read-only media)."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import errno
import fcntl
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

# The folders of the cache, and what each holds (`upsample cache info|clear`)
PARTS = {"export": "ONNX/IR exports, OpenVINO compiled blobs, precision checks, image plans",
         "train-store": "training images decoded once",
         "video-frames": "frames sampled from training videos"}


def cache_root() -> Path:
    root = os.environ.get("UPSAMPLE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                    Path.home() / ".cache") / "upsample"
    return Path(root)


def part_dir(part: str) -> Path:
    return cache_root() / part


_OWN_DIRS: dict[str, Path] = {}  # part -> this process's folder for it, where the cache's is unwritable
_OWN_LOCK = threading.Lock()


def own_dir(part: str) -> Path:
    """A temporary folder of this process for the cache `part` (one per process, removed when it
    exits): where the cache folder cannot be written (read-only, a full disk, a file where it
    should be), a batch of runs fills no /tmp with copies."""
    with _OWN_LOCK:  # two threads (API users', video's workers) make one folder, not two
        if part not in _OWN_DIRS:
            _OWN_DIRS[part] = Path(tempfile.mkdtemp(prefix=f"upsample-{part}-"))
            atexit.register(shutil.rmtree, _OWN_DIRS[part], True)
        return _OWN_DIRS[part]


def own_dir_instead(part: str, what: str, where: Path, exc: OSError, note: bool) -> Path:
    """`own_dir(part)`, where `what` (e.g. "video frames") cannot be written to `where` for `exc`;
    said in a note (with `note`: the process that shows progress)."""
    own = own_dir(part)
    if note:
        print(f"note: cannot write {what} to {where} ({exc.strerror or exc}); decoding into {own} for "
              "this run (set UPSAMPLE_CACHE to a writable folder)", file=sys.stderr)
    return own


def has_own_dir(part: str) -> Path | None:
    """`own_dir(part)` where this process made one, else None."""
    return _OWN_DIRS.get(part)


_HELD_LOCKS: set[int] = set()  # the descriptors of the entry locks this process holds


def _drop_locks_in_child() -> None:
    """A forked child (OpenVINO's telemetry sender, a worker) gets a copy of each lock held here,
    which kept the lock held after this process dropped it, until the child ended: closed there."""
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)


QUIET_WAIT_S = 1.0  # how long `entry_lock` waits for a lock before it says it is waiting


def _got_within(fd: int, seconds: float) -> bool:
    """Whether the exclusive lock on `fd` was got within `seconds` (tried every 20 ms)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.02)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            continue
    return False


@dataclasses.dataclass
class LockState:
    """What `entry_lock` got: `held`, the lock (False where the file system has no locks:
    Lustre without flock, some NFS mounts); `said`, whether it waited long enough to say so."""
    held: bool = False
    said: bool = False


@contextlib.contextmanager
def entry_lock(lock_file: Path, waiting: str | None = None):
    """Hold an exclusive lock on `lock_file` (made if needed) while the cache entry it stands for
    is checked and made: another run making the same entry waits (saying `waiting` on stderr), then
    finds it whole. The system drops the lock when its holder dies; where the file system has no
    locks, each run makes the entry, renamed into place whole. Yields a `LockState`."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    _HELD_LOCKS.add(fd)
    state = LockState()
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            state.held = True
        except BlockingIOError:
            state.held = _got_within(fd, QUIET_WAIT_S)  # a holder about to let go is not worth a note
            if not state.held:
                if waiting:
                    print(f"note: {waiting}", file=sys.stderr)
                    state.said = True
                with contextlib.suppress(OSError):  # ENOLCK, EDEADLK: on without it
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    state.held = True
        except OSError:
            pass
        yield state
    finally:
        if fd in _HELD_LOCKS:  # (not in a forked child, which closed it)
            _HELD_LOCKS.discard(fd)
            os.close(fd)


def part_files(part: str) -> list[Path]:
    root = part_dir(part)
    if not root.is_dir():
        return []
    # os.walk leaves out a folder removed meanwhile (a running process's temporary one), where
    # rglob raised FileNotFoundError
    return sorted(p for folder, _, names in os.walk(root) for p in (Path(folder) / n for n in names) if p.is_file())


def files_size(files: list[Path]) -> int:
    """The bytes of `files`; one removed meanwhile (a running process renamed its temporary file
    into place, or cleared the cache) counts nothing."""
    size = 0
    for p in files:
        try:
            size += p.stat().st_size
        except OSError:
            pass
    return size


def clear_part(part: str) -> tuple[int, int]:
    """Empty one folder of the cache; (files removed, bytes freed). A training run that has a
    store mapped keeps reading it (the data stay until it ends); the next one decodes again.
    A process writing into it meanwhile (`upsample image` in another terminal) makes again what
    it needs."""
    files = part_files(part)
    size = files_size(files)
    root = part_dir(part)
    for tries in range(5):
        try:
            _empty(root)
            break
        except OSError as exc:  # a file added or removed by a running process while the folder was emptied
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT) or tries == 4:
                raise
    return len(files), size


def _empty(root: Path) -> None:
    if root.is_symlink():  # the part moved elsewhere (another disk): empty it there, keep the link
        for entry in root.iterdir() if root.is_dir() else ():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
    elif root.is_dir():
        shutil.rmtree(root)
    elif root.exists():  # a file where the folder should be: the folder is made again when needed
        root.unlink()

"""Progress that reaches the user also when stderr is no terminal (a pipe, a log file, CI): on a
terminal a tqdm bar; elsewhere one whole line every `LINE_INTERVAL` seconds (done/total, rate,
ETA), instead of tqdm's carriage-return redraws or nothing at all."""

from __future__ import annotations

import re
import sys

from tqdm import tqdm

LINE_INTERVAL = 5.0  # seconds between progress lines when stderr is no terminal
# terminal control sequences: tqdm moves the cursor up (ESC [A) around nested bars
_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _Lines:
    """A text stream for tqdm that turns its redraws ("\\r" + status) into whole lines: one line
    per refresh, and not the same count twice (tqdm's close redraws the last one)."""

    def __init__(self, stream):
        self.stream, self.last = stream, None

    def write(self, text: str) -> None:
        line = _CONTROL.sub("", text.replace("\r", "")).strip()  # a log holds no cursor moves
        count = line.split(",")[0]  # "frames 12/200 (6%)"
        if line and count != self.last:
            self.stream.write(line + "\n")
            self.last = count

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


def progress_bar(total: int | None, enabled: bool, *, desc: str, unit: str, stream=None,
                 leave: bool = True, initial: int = 0, interval: float | None = None,
                 unit_scale: bool = False) -> tqdm:
    """A bar on a terminal; elsewhere a line every `interval` s (`LINE_INTERVAL` by default), the
    first after that long (so short runs stay quiet), with the bar's postfix (e.g. a loss);
    nothing when not `enabled`. `initial`: the count already done (a resumed run); `unit_scale`:
    counts as 1.2M rather than 1234567 (pixels)."""
    stream = stream or sys.stderr
    if not enabled or stream.isatty():
        return tqdm(total=total, desc=desc, unit=unit, file=stream, disable=not enabled, leave=leave,
                    initial=initial, dynamic_ncols=True, unit_scale=unit_scale)
    interval = LINE_INTERVAL if interval is None else interval
    fmt = ("{desc} {n_fmt}/{total_fmt} ({percentage:.0f}%), {rate_fmt}, ETA {remaining}{postfix}" if total
           else "{desc} {n_fmt}, {rate_fmt}, {elapsed} elapsed{postfix}")
    # maxinterval too: else tqdm's monitor thread forces a line 10 s after the last one once the
    # updates are slow (a training step of a second: lines at 30, 50, 60 s for a 30 s interval)
    return tqdm(total=total, desc=desc, unit=unit, file=_Lines(stream), bar_format=fmt,
                mininterval=interval, maxinterval=max(interval, 10.0), delay=interval, initial=initial,
                unit_scale=unit_scale)


def track(items, enabled: bool, *, desc: str, unit: str, total: int | None = None):
    """`items` (a list, or any iterable: then no total unless `total` gives it) one by one,
    counted on a `progress_bar` (lines when stderr is no terminal)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    bar = progress_bar(total, enabled, desc=desc, unit=unit)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """"1 file", "3 files" (`plural` where adding an s is wrong)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"

"""The files of a codec study: its -o folder, checked before any work, and the study.json of an
earlier run, read for `--merge`."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError
from ..inference.batch import check_writable

OUTPUT_NAMES = ("summary.md", "study.json", "points.csv", "curves.csv")  # and rd_*.png
# the keys `merge_studies` reads, and what each holds
STUDY_KEYS = {"pipelines": list, "scale": (int, float), "border": int, "ladders": dict,
              "sources": list, "points": list, "title": str, "command": str, "hardware": str}


def is_output_name(name: str) -> bool:
    """A file name a study writes into its -o folder."""
    return name in OUTPUT_NAMES or (name.startswith("rd_") and name.endswith(".png"))


def check_study_output(out: Path, inputs: list[str], *, overwrite: bool) -> None:
    """Before any model loads: -o is a folder that can be written, outside every input folder
    (its pictures would be read as inputs next time), holding no input file it would replace
    (not even with `overwrite`), and no earlier study's outputs unless `overwrite`."""
    target = out.resolve()
    for item in inputs:
        path = Path(item).resolve()
        if path.is_dir() and (target == path or path in target.parents):
            raise UserError(f"-o {out} lies in the input folder {item}: name a folder outside it")
        if path.is_file() and path.parent == target and is_output_name(path.name):
            raise UserError(f"-o {out} holds the input {item}, which the study would replace: name "
                            "another folder (inputs are never replaced)")
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out} is an existing file; the study writes a folder (summary.md, "
                        "study.json, CSV, plots): name a folder")
    check_writable(out, out)
    taken = sorted(p.name for p in out.iterdir() if is_output_name(p.name)) if out.is_dir() else []
    if taken and not overwrite:
        more = f" and {len(taken) - 3} more" if len(taken) > 3 else ""
        raise UserError(f"-o {out} holds an earlier study's {', '.join(taken[:3])}{more}; pass "
                        "--overwrite to replace them, or name another folder")


def earlier_plots(out: Path) -> set[str]:
    """The plots the study.json in `out` says its study wrote (none if it cannot be read): only
    these may go when a new study replaces it, never a file of the user's named alike."""
    try:
        results = json.loads((out / "study.json").read_text()).get("results", [])
        names = {r.get("plot") for r in results if isinstance(r, dict)}
    except (OSError, ValueError, AttributeError):
        return set()
    return {n for n in names if isinstance(n, str) and Path(n).name == n and is_output_name(n)}


@contextmanager
def staged_outputs(out: Path) -> Iterator[Path]:
    """Yield a hidden folder in `out` to write a study's files into. On success they replace
    the earlier study there at once (its plots this study does not make removed: they belong to
    other codecs or inputs), summary.md and study.json last; on an error or Ctrl-C the hidden
    folder goes and `out` is as it was, never half old and half new."""
    from ..runtime.export import interrupts_deferred
    made_out = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".codec-study.", suffix=".part", dir=out))
    try:
        yield stage
        stale = earlier_plots(out)
        last = ("study.json", "summary.md")  # a summary.md in place means the rest is too
        made = sorted(stage.iterdir(), key=lambda f: (f.name in last and last.index(f.name) + 1, f.name))
        with interrupts_deferred():  # Ctrl-C between two renames would leave half of each study
            for f in made:
                os.replace(f, out / f.name)
            for name in stale - {f.name for f in made}:
                (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if made_out and not any(out.iterdir()):  # stopped: no empty folder left for a study
            out.rmdir()


# JSON has no NaN or infinity (Python writes them bare, which strict parsers - JavaScript's, jq -
# refuse): they are written as these strings, which JavaScript's Number() also reads
NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _finite_or_named(value):
    """`value` with every non-finite float in it replaced by its `NON_FINITE` name."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite_or_named(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_named(v) for v in value]
    return value


def study_json(study: dict) -> str:
    """A study as strict JSON (lossless PSNR is infinite, a BD-rate without overlap NaN)."""
    return json.dumps(_finite_or_named(study), indent=1, allow_nan=False) + "\n"


def _number_back(value):
    """`value` with the `NON_FINITE` names in it (in lists too: a dict's were read by the hook) as floats."""
    if isinstance(value, str):
        return NON_FINITE.get(value, value)
    return [_number_back(v) for v in value] if isinstance(value, list) else value


def _numbers_back(pairs: list) -> dict:
    return {k: _number_back(v) for k, v in pairs}


def read_study(item: str) -> dict:
    """The study.json of an earlier run (`item`: it or its -o folder), checked to be one."""
    f = Path(item) / "study.json" if Path(item).is_dir() else Path(item)
    try:
        study = json.loads(f.read_text(), object_pairs_hook=_numbers_back)
    except (OSError, ValueError) as exc:
        raise UserError(f"--merge: cannot read {f}: {exc}") from None
    if not isinstance(study, dict) or not all(isinstance(study.get(k), t) for k, t in STUDY_KEYS.items()):
        raise UserError(f"--merge: {f} is not a codec-study study.json; give the -o folder (or its "
                        "study.json) of an earlier `upsample codec-study` run")
    return study

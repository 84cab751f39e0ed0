"""The files of a codec study: its -o folder, checked before any work, and the study.json of an
earlier run, read for `--merge`."""

from __future__ import annotations

import json
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


def read_study(item: str) -> dict:
    """The study.json of an earlier run (`item`: it or its -o folder), checked to be one."""
    f = Path(item) / "study.json" if Path(item).is_dir() else Path(item)
    try:
        study = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--merge: cannot read {f}: {exc}") from None
    if not isinstance(study, dict) or not all(isinstance(study.get(k), t) for k, t in STUDY_KEYS.items()):
        raise UserError(f"--merge: {f} is not a codec-study study.json; give the -o folder (or its "
                        "study.json) of an earlier `upsample codec-study` run")
    return study

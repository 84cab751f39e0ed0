"""The run directory: when it may be used (--resume / --reset) and rank 0's files in it
(config.toml, metrics.jsonl, tb/); last_state.pt belongs to state.py, the .safetensors to loop.py.
Kept apart from the loop so that these file rules read in one place."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from ..errors import UserError
from . import config as config_mod

RUN_FILES = ("config.toml", "last.safetensors", "last_state.pt", "best.safetensors", "metrics.jsonl")


def check_run_dir(run_dir: Path, resume: bool, reset: bool) -> bool:
    """True when there is a run to resume. Raises for a used run dir without --resume/--reset."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is a file; name a folder for the run")
    if (run_dir / LOCK_FILE).exists():  # a live run's files say nothing yet of how it ends: "in use" first
        hold_run_dir(run_dir, probe=True).release()  # (no lock file made in a folder that is no run's)
    used = run_dir.is_dir() and any((run_dir / f).exists() for f in RUN_FILES)
    saved = (run_dir / "last_state.pt").exists()
    if run_dir.is_dir() and not used:
        check_holds_nothing_else(run_dir)
    if resume and saved:
        return True
    if used and not reset:  # with or without --resume: the one way on for this run dir
        if not saved:
            raise UserError(f"run dir {run_dir} holds a run that stopped before its first checkpoint "
                            "(no last_state.pt): --reset to start it over, or --run-dir for a new one")
        raise UserError(f"run dir {run_dir} already holds a run: use --resume to continue it, "
                        "--reset to start over, or --run-dir for a new one")
    if resume and not reset:
        raise UserError(f"--resume: {run_dir} holds no run to resume; start without --resume")
    return False


def check_holds_nothing_else(run_dir: Path) -> None:
    """A folder that holds no run must hold no pictures or videos: `--run-dir photos` mixed the
    run's files into the user's pictures (a log file a user tees there is welcome)."""
    from ..media.imageio import is_image_path
    from ..data.prepare import is_video_path
    media = sorted(p.name for p in run_dir.iterdir() if p.is_file() and (is_image_path(p) or is_video_path(p)))
    if media:
        raise UserError(f"--run-dir {run_dir} holds {len(media)} picture(s) or video(s) (e.g. {media[0]}) and "
                        "no run: name a new or empty folder for the run")


LOCK_FILE = ".lock"  # held by the `upsample train` writing the run dir (filelock: freed at exit)


def hold_run_dir(run_dir: Path, probe: bool = False):
    """The run dir's lock, taken for this run: a second `upsample train` on it (another --reset,
    --resume) is refused before it changes a file; two wrote one dir into a mix of both runs.
    `probe`: only to see that it is free (a folder this user cannot lock is left to the run)."""
    import filelock
    lock = filelock.FileLock(str(run_dir / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:  # (an OSError too: first)
        raise UserError(f"run dir {run_dir} is in use by another `upsample train` (it holds "
                        f"{run_dir / LOCK_FILE}); wait for it to end, or name another --run-dir") from None
    except OSError:
        if not probe:
            raise
    return lock


def reset_run_dir(run_dir: Path) -> None:
    for f in RUN_FILES:
        (run_dir / f).unlink(missing_ok=True)
    for folder in ("tb", "deepspeed"):  # TensorBoard's events; DeepSpeed's checkpoints (engines.py)
        shutil.rmtree(run_dir / folder, ignore_errors=True)


class RunLog:
    """Rank 0's record of a run: config.toml (what the run trains with), metrics.jsonl (one JSON
    object per log / validation line) and TensorBoard events in tb/. Opening it claims the run
    dir: with `reset` it first clears the old run; a resumed run drops the lines logged after
    its checkpoint at step `start`, which the resumed steps log again."""

    def __init__(self, run_dir: Path, cfg: config_mod.Config, *, resuming: bool, reset: bool,
                 start: int, config_text: str | None):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        self.lock = hold_run_dir(run_dir)
        try:
            if reset:
                reset_run_dir(run_dir)
            write_config(run_dir, cfg, resuming=resuming, config_text=config_text)
            keep_metrics_until(run_dir / "metrics.jsonl", start if resuming else None)
            self.metrics = open(run_dir / "metrics.jsonl", "a")
            from torch.utils.tensorboard import SummaryWriter
            # resuming: events past the checkpoint (a killed run wrote them) go; its own step stays
            self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=start + 1 if resuming else None)
        except BaseException:
            self.lock.release()
            raise

    def record(self, obj: dict) -> None:
        # a NaN or inf (an fp16 step that overflowed) as null: JSON has no NaN, and readers refuse it
        obj = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in obj.items()}
        self.metrics.write(json.dumps(obj) + "\n")
        self.metrics.flush()

    def close(self) -> None:
        self.writer.close()
        self.metrics.close()
        self.lock.release()


def write_config(run_dir: Path, cfg: config_mod.Config, *, resuming: bool,
                 config_text: str | None) -> None:
    """config.toml: `config_text` (the recipe as resolved) for a new run. A resumed run whose
    --set changed a value (e.g. train.steps) records it too, so that config.toml always says
    what the run continues with."""
    path = run_dir / "config.toml"
    if not resuming or config_mod.load_config(path, []) != cfg:
        tmp = path.with_name(f"config.toml.{os.getpid()}.tmp")
        tmp.write_text(config_text if config_text and not resuming else config_mod.to_toml(cfg))
        os.replace(tmp, path)


def keep_metrics_until(path: Path, step: int | None) -> None:
    """Keep the lines of metrics.jsonl up to `step` (None: none, a new run)."""
    kept = []
    if step is not None and path.exists():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                pass
    tmp = path.with_name(".metrics.jsonl.part")
    tmp.write_text("".join(kept))
    os.replace(tmp, path)

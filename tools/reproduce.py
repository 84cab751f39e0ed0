"""Retrain a shipped model from scratch and package it: `python tools/reproduce.py MODEL` (what
`make reproduce MODEL=...` runs).

The recipe is the resolved config shipped beside the weights (else configs/MODEL.toml). A recipe
whose `train.init` is another run's output, `runs/STAGE/...`, is a later stage of a chain (a
fine-tune, ESRGAN's GAN stage): `configs/STAGE.toml` is trained first into `runs/STAGE` (continued
with --resume when that run exists), and so on back to a recipe that starts from scratch. The
model itself trains into `runs/reproduce-MODEL` (continued likewise): never into a run dir of the
user's own, such as the `runs/MODEL` that `upsample train configs/MODEL.toml` uses by default.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "src" / "upsample" / "weights"


def recipe(model: str) -> Path:
    shipped = WEIGHTS / f"{model}.toml"
    return shipped if shipped.is_file() else ROOT / "configs" / f"{model}.toml"


def stages(config: Path, run_dir: str) -> list[tuple[Path, str]]:
    """(config, run dir) of every training run, earliest first, that `config` (trained into
    `run_dir`) needs: a chain through `train.init = "runs/STAGE/..."`."""
    chain, seen = [(config, run_dir)], {run_dir}
    while True:
        init = tomllib.loads(chain[0][0].read_text()).get("train", {}).get("init", "")
        parts = Path(init).parts
        if len(parts) < 3 or parts[0] != "runs":
            return chain
        stage = parts[1]
        earlier = ROOT / "configs" / f"{stage}.toml"
        if not earlier.is_file():
            raise SystemExit(f"reproduce: {chain[0][0]} starts from {init}, but there is no "
                             f"configs/{stage}.toml to train it with")
        if f"runs/{stage}" in seen:
            raise SystemExit(f"reproduce: the chain of train.init loops at runs/{stage}")
        seen.add(f"runs/{stage}")
        chain.insert(0, (earlier, f"runs/{stage}"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args()
    config = recipe(args.model)
    if not config.is_file():
        raise SystemExit(f"reproduce: no shipped {args.model}.toml and no configs/{args.model}.toml")
    up = [sys.executable, "-m", "upsample", "train"]
    chain = stages(config, f"runs/reproduce-{args.model}")
    commands = [up + [str(c), "--run-dir", d] + (["--resume"] if (ROOT / d / "last_state.pt").exists() else [])
                for c, d in chain]
    commands.append([sys.executable, str(ROOT / "tools" / "ship.py"), args.model, chain[-1][1]])
    for cmd in commands:
        print("+", " ".join(Path(c).name if c == sys.executable else c for c in cmd), flush=True)
        if not args.dry_run and subprocess.call(cmd, cwd=ROOT) != 0:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Package a finished training run as shipped weights: `python tools/ship.py MODEL RUN_DIR`.

Writes, under src/upsample/weights/: MODEL.safetensors (fp16 when every benchmark PSNR stays
within 0.01 dB of fp32, else fp32), MODEL.toml (the run's resolved config), MODEL.log.json
(steps, training hours, hardware, best validation PSNR) and MODEL.eval.json (`upsample eval`
on Set5, Set14, B100 and Urban100 for each scale the model serves, beside bicubic).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

import torch

from upsample.models import registry
from upsample.models.checkpoint import load_checkpoint, save_checkpoint
from upsample.evaluation.evaluate import evaluate_model
from upsample.runtime.hardware import hardware_name

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "datasets" / "benchmark"
SETS = ["Set5", "Set14", "B100", "Urban100"]


def evaluate(spec: str, scale: int, backend: str = "torch", sets: list[str] = SETS) -> dict:
    """{set: {"psnr", "ssim", "n"}}: `upsample eval` (the papers' protocol, exact fp32) of `spec`."""
    report = evaluate_model(spec, [str(BENCH / s) for s in sets], scale=scale, crop=scale,
                            backend=backend if spec != "bicubic" else "torch", precision="fp32",
                            progress=False)
    return {name: {k: row[k] for k in ("psnr", "ssim", "n")} for name, row in report["datasets"].items()}


def train_threads(run_dir: Path) -> int:
    cfg = tomllib.loads((run_dir / "config.toml").read_text())
    return int(cfg.get("train", {}).get("threads") or 0)


def hardware(rows: list[dict], run_dir: Path) -> str:
    """Where the run trained: the trainer's own record, else (older runs) this machine."""
    for r in rows:
        if "hardware" in r:
            world = f"{r['world']} processes x " if r.get("world", 1) > 1 else ""
            return f"{world}{r['hardware']}, torch {r['torch']}"
    return f"{hardware_name(torch.device('cpu'), train_threads(run_dir))}, torch {torch.__version__}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--backend", default="torch",
                    help="runtime for the evaluations (openvino is ~2.5x faster on CPU for dense nets)")
    ap.add_argument("--check-sets", default=",".join(SETS),
                    help="benchmarks on which fp16 storage is checked against fp32 (default: all)")
    args = ap.parse_args()
    check_sets = [s for s in args.check_sets.split(",") if s]
    if not check_sets or set(check_sets) - set(SETS):
        sys.exit(f"ship: --check-sets takes names from {','.join(SETS)}")
    spec = registry.get_spec(args.model)
    best = args.run_dir / "best.safetensors"
    if not best.is_file():
        sys.exit(f"ship: {best} not found; train first (make reproduce MODEL={args.model})")
    scales = [spec.scale] if spec.scale else [2, 3, 4]
    model, meta = load_checkpoint(best)
    out_dir = registry.WEIGHTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        half = Path(tmp) / "half.safetensors"
        save_checkpoint(model, half, config=meta.get("config"), fp16=True)
        # fp16 storage is kept only if no checked benchmark moves by more than 0.01 dB
        check = {p: {s: evaluate(str(w), s, args.backend, check_sets) for s in scales}
                 for p, w in (("fp32", best), ("fp16", half))}
        worst = max(abs(check["fp16"][s][d]["psnr"] - check["fp32"][s][d]["psnr"])
                    for s in scales for d in check_sets)
        use_half = worst <= 0.01
        chosen_file = half if use_half else best
        rest = [d for d in SETS if d not in check_sets]  # the checked sets are measured already
        chosen = {}
        for s in scales:
            got = {**check["fp16" if use_half else "fp32"][s],
                   **(evaluate(str(chosen_file), s, args.backend, rest) if rest else {})}
            chosen[s] = {d: got[d] for d in SETS}
        report = {"model": args.model, "storage": "float16" if use_half else "float32",
                  "fp16_worst_psnr_change_db": worst, "fp16_checked_on": check_sets,
                  "backend": args.backend,
                  "scales": {str(s): {"model": chosen[s], "bicubic": evaluate("bicubic", s)}
                             for s in scales}}
        save_checkpoint(model, Path(tmp) / "w.safetensors", config=meta.get("config"), fp16=use_half,
                        extra={"eval": {str(s): {d: round(v["psnr"], 4) for d, v in chosen[s].items()}
                                        for s in scales}})
        shutil.copyfile(Path(tmp) / "w.safetensors", out_dir / f"{args.model}.safetensors")
    shutil.copyfile(args.run_dir / "config.toml", out_dir / f"{args.model}.toml")
    rows = [json.loads(line) for line in (args.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    vals = [r for r in rows if "val_psnr" in r]
    log = {"steps": steps[-1]["step"] if steps else 0,
           "train_hours": round(steps[-1]["time"] / 3600, 3) if steps else 0,
           "hardware": hardware(rows, args.run_dir),
           "best_val_psnr": max((r["val_psnr"] for r in vals), default=None),
           "val_bicubic_psnr": next((r["val_bicubic_psnr"] for r in rows if "val_bicubic_psnr" in r), None),
           "final_loss": steps[-1]["loss"] if steps else None}
    (out_dir / f"{args.model}.log.json").write_text(json.dumps(log, indent=2) + "\n")
    (out_dir / f"{args.model}.eval.json").write_text(json.dumps(report, indent=2) + "\n")
    for s in scales:
        print(f"{args.model} x{s}: " + "  ".join(
            f"{d} {chosen[s][d]['psnr']:.2f}" for d in SETS) + f"  ({report['storage']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

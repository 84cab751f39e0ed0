"""The zoo campaign's learning curves: validation PSNR (training split) against steps for every run
under weights/wip/, as one PNG: `python tools/campaign_plot.py [OUT.png]` (default docs/campaign.png).

Each run's metrics.jsonl holds its validation lines across all its chunks (a resumed chunk drops
the lines after its checkpoint), and the bicubic baseline of the same images, drawn dashed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def curves(wip: Path = ROOT / "weights" / "wip") -> dict[str, dict]:
    """run name -> {"steps": [...], "psnr": [...], "bicubic": float | None}."""
    out = {}
    for metrics in sorted(wip.glob("*/metrics.jsonl")):
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        vals = [r for r in rows if "val_psnr" in r]
        base = next((r["val_bicubic_psnr"] for r in rows if "val_bicubic_psnr" in r), None)
        if vals:
            out[metrics.parent.name] = {"steps": [r["step"] for r in vals],
                                        "psnr": [r["val_psnr"] for r in vals], "bicubic": base}
    return out


def recent_slope(c: dict, window: int = 5000) -> float | None:
    """Least-squares slope of validation PSNR over the last `window` steps, in dB per 1k steps:
    what projects the steps a target needs (None with fewer than three points there)."""
    last = c["steps"][-1]
    pts = [(s, p) for s, p in zip(c["steps"], c["psnr"]) if s > last - window]
    if len(pts) < 3:
        return None
    mean_s = sum(s for s, _ in pts) / len(pts)
    mean_p = sum(p for _, p in pts) / len(pts)
    cov = sum((s - mean_s) * (p - mean_p) for s, p in pts)
    return 1000 * cov / sum((s - mean_s) ** 2 for s, _ in pts)


def plot(runs: dict[str, dict], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for i, (name, c) in enumerate(runs.items()):
        line, = ax.plot(c["steps"], c["psnr"], marker=".", label=name)
        if c["bicubic"] is not None:
            ax.axhline(c["bicubic"], color=line.get_color(), ls="--", lw=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation PSNR, Y (dB)")
    ax.set_title("zoo campaign: validation PSNR (dashed: bicubic on the same images)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", type=Path, default=ROOT / "docs" / "campaign.png",
                    help="the PNG to write (default docs/campaign.png)")
    target = ap.parse_args().out
    found = curves()
    if not found:
        sys.exit("campaign_plot: no run with validation lines under weights/wip/")
    plot(found, target)
    for name, c in found.items():
        slope = recent_slope(c)
        trend = f", {slope:+.4f} dB per 1k steps over the last 5k" if slope is not None else ""
        print(f"{name}: step {c['steps'][-1]}, val PSNR {c['psnr'][-1]:.3f} dB (best {max(c['psnr']):.3f}, "
              f"bicubic {c['bicubic']:.2f}){trend}")
    print(f"wrote {target}")

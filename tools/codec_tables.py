"""Markdown tables for docs/codec-study from `upsample codec-study` outputs (curves.csv).

    python tools/codec_tables.py joint docs/codec-study/set14 docs/codec-study/b100
        PSNR (and bpp) of each pipeline without a codec (png) and at JPEG quality 50 and 80
    python tools/codec_tables.py bd docs/codec-study/b100 docs/codec-study/clip
        BD-rate / BD-PSNR of each down-up pipeline against full resolution, with the ranges
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def joint_table(dirs: list[str]) -> str:
    lines = ["| data | pipeline | no codec: PSNR | JPEG q50: bpp | PSNR | SSIM | JPEG q80: bpp | PSNR | SSIM |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for d in dirs:
        rows = list(csv.DictReader(open(Path(d) / "curves.csv")))
        get = {(r["codec"], r["pipeline"], r["q"]): r for r in rows}
        labels = list(dict.fromkeys(r["pipeline"] for r in rows if r["pipeline"] != "full"))
        for lab in labels:
            png = get.get(("png", lab, "100"))
            cells = [f"{float(png['psnr']):.2f}" if png else "-"]
            for q in ("50", "80"):
                r = get.get(("jpeg", lab, q))
                cells += ([f"{float(r['bpp']):.3f}", f"{float(r['psnr']):.2f}", f"{float(r['ssim']):.4f}"]
                          if r else ["-"] * 3)
            lines.append(f"| {rows[0]['source']} | {lab} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bd_table(dirs: list[str]) -> str:
    lines = ["| data | codec | pipeline | BD-rate PCHIP | BD-rate Akima | BD-PSNR PCHIP | PSNR range | rate range | crossover |",
             "|---|---|---|---:|---:|---:|---|---|---|"]
    for d in dirs:
        study = json.loads((Path(d) / "study.json").read_text())
        for res in study["results"]:
            unit = "kbit/s" if res["rate_key"] == "kbps" else "bpp"
            fmt = (lambda v: f"{v:.0f}") if unit == "kbit/s" else (lambda v: f"{v:.3f}")
            for lab, m in res["pipelines"].items():
                if not m["overlap"]:
                    continue
                c = m["crossover"]
                if c["status"] == "below":
                    cross = f"below {fmt(c['rates'][0])} {unit}"
                elif c["status"] == "none-downup-wins":
                    cross = "down-up wins over the whole range"
                elif c["status"] == "none-full-wins":
                    cross = "none (full wins)"
                else:
                    cross = ", ".join(fmt(r) for r in c["rates"]) + f" {unit}" if c["rates"] else c["status"]
                pr, rr = m["psnr_range"], m["rate_range"]
                lines.append(f"| {res['source']} | {res['codec']} | {lab} | {m['bd_rate_pchip']:+.1f}% "
                             f"| {m['bd_rate_akima']:+.1f}% | {m['bd_psnr_pchip']:+.2f} dB "
                             f"| {pr[0]:.2f}-{pr[1]:.2f} dB | {fmt(rr[0])}-{fmt(rr[1])} {unit} | {cross} |")
    return "\n".join(lines)


if __name__ == "__main__":
    kind, *dirs = sys.argv[1:]
    print({"joint": joint_table, "bd": bd_table}[kind](dirs))

"""`upsample codec-study`: rate-distortion of ML upscaling inside image and video codecs.

For every input (an image folder, or a video clip), codec and rate point it measures
  full:     HR -> encode -> decode                                   (the anchor)
  down-up:  HR -> downscale by s -> encode -> decode -> upscale by s  (one per --pipeline)
where the downscaler is MATLAB bicubic or a learned one (`inference.downscale`) and the upscaler is
bicubic or any model on any backend (`inference.load.load_upscaler`). Measured per point: the real
encoded size (bits per full-resolution pixel; kbit/s of the video bitstream for clips), Y-PSNR and
SSIM at full resolution with the `eval` protocol (HR modcropped to the scale, `scale` pixels of
border cut, `metrics.psnr/ssim` on uint8), and the down / encode / decode / upscale seconds.

Per codec the points are averaged over the images (or frames) at each rate point, and each down-up
curve is compared with the full-resolution one: BD-rate and BD-PSNR with the `bjontegaard`
package (PCHIP, and Akima for comparison), integrated over the overlapping PSNR (rate) range only,
which is reported; the convex hull of all pipelines' points (the best pipeline at each rate); and
the crossover rate below which down-up is better, found where the PCHIP curves (PSNR over
log-rate) cross. Output: points.csv (every image/clip point), curves.csv (averages), study.json
(all of it), one RD plot per input and codec (rd_<input>_<codec>.png), summary.md.
"""

from __future__ import annotations

import csv
import math
import shlex
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..evaluation import metrics
from .codec import (CODECS, ClipInfo, Codec, check_frame_size, decode_image, decode_video, did_you_mean,
                    encode_image, encode_video, get_codec, parse_ladder, probe_clip, read_frames)
from .study_files import check_study_output, read_study, staged_outputs, study_json
from ..data.prepare import is_video_path
from ..inference.downscale import Downscaler, load_downscaler
from ..errors import UserError
from ..data.degrade import modcrop, scale_period
from ..data.colour import to_tensor, to_uint8
from ..media.progress import progress_bar, track
from ..media.imageio import atomic_write, list_images, open_image, read_rgb
from ..inference.upscaler import Upscaler
from ..inference.load import check_scale, load_upscaler
from ..runtime.hardware import hardware_name
from ..runtime.kinds import BACKENDS, Backend

FULL = "full"  # the anchor pipeline's label
SSIM_WINDOW = 11  # `metrics.ssim`'s Gaussian window: the least side left after the border cut


@dataclass
class Pipeline:
    label: str
    down: Downscaler
    up: Upscaler


@dataclass
class Source:
    """One input: an image folder (items = images) or a clip (one item of many frames)."""
    name: str
    kind: str               # "image" or "video"
    paths: list[Path]
    fps: float = 0.0
    clip: ClipInfo | None = None  # a clip's header
    root: Path | None = None      # an image folder: items are named relative to it

    def item(self, path: Path) -> str:
        """An image's name in the points: its path in the folder (sub/a.png and a.png differ)."""
        return path.relative_to(self.root).as_posix() if self.root else path.name


# ------------------------------------------------------------------------------ measurement

def quality(out: np.ndarray, ref: np.ndarray, border: int) -> tuple[float, float]:
    """Y-PSNR and SSIM as `upsample eval` measures them."""
    return (metrics.psnr(out, ref, crop_border=border, y_channel=True),
            metrics.ssim(out, ref, crop_border=border, y_channel=True))


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def upscale_uint8(up: Upscaler, lr: np.ndarray) -> np.ndarray:
    return to_uint8(up(to_tensor(lr, up.device)))


def downscale_uint8(down: Downscaler, hr: np.ndarray) -> np.ndarray:
    return to_uint8(down.lr(hr))


def measure_image(hr: np.ndarray, codec: Codec, ladder, pipelines: list[Pipeline], scale: float,
                  border: int) -> list[dict]:
    """All points of one (modcropped) HR image for one codec."""
    pixels = hr.shape[0] * hr.shape[1]
    downs = {}  # one LR per downscaler, shared by the pipelines that use it
    for p in pipelines:
        if p.down not in downs:
            downs[p.down] = _timed(downscale_uint8, p.down, hr)
    points = []
    for q in ladder:
        data, t_enc = _timed(encode_image, codec, hr, q)
        dec, t_dec = _timed(decode_image, data)
        ps, ss = quality(dec, hr, border)
        points.append({"pipeline": FULL, "q": q, "bytes": len(data), "pixels": pixels,
                       "bpp": 8.0 * len(data) / pixels, "psnr": ps, "ssim": ss,
                       "t_down": 0.0, "t_enc": t_enc, "t_dec": t_dec, "t_up": 0.0})
        coded = {}
        for p in pipelines:
            lr, t_down = downs[p.down]
            if p.down not in coded:
                data, t_enc = _timed(encode_image, codec, lr, q)
                coded[p.down] = (data, t_enc, *_timed(decode_image, data))
            data, t_enc, dec, t_dec = coded[p.down]
            out, t_up = _timed(upscale_uint8, p.up, dec)
            if out.shape != hr.shape:
                raise UserError(f"pipeline {p.label}: {p.up.name} made {out.shape[1]}x{out.shape[0]} "
                                f"from {dec.shape[1]}x{dec.shape[0]}; is it a x{scale:g} model?")
            ps, ss = quality(out, hr, border)
            points.append({"pipeline": p.label, "q": q, "bytes": len(data), "pixels": pixels,
                           "bpp": 8.0 * len(data) / pixels, "psnr": ps, "ssim": ss,
                           "t_down": t_down, "t_enc": t_enc, "t_dec": t_dec, "t_up": t_up})
    return points


def _clip_point(label: str, q: int, outs, frames, nbytes: int, fps: float, border: int,
                **times) -> dict:
    if len(outs) != len(frames):
        raise UserError(f"pipeline {label}: the decoder gave {len(outs)} frames for {len(frames)}")
    qs = [quality(o, f, border) for o, f in zip(outs, frames)]
    pixels = frames[0].shape[0] * frames[0].shape[1] * len(frames)
    return {"pipeline": label, "q": q, "bytes": nbytes, "pixels": pixels,
            "bpp": 8.0 * nbytes / pixels, "kbps": 8.0 * nbytes * fps / len(frames) / 1000.0,
            "psnr": float(np.mean([a for a, _ in qs])), "ssim": float(np.mean([b for _, b in qs])),
            **times}


def measure_clip(frames: list[np.ndarray], fps: float, codec: Codec, ladder,
                 pipelines: list[Pipeline], border: int, threads: int = 1) -> list[dict]:
    """All points of one clip (frames modcropped) for one video codec: the rate is the video
    bitstream's (packet bytes, container left out), PSNR/SSIM the means over the frames."""
    downs = {}
    for p in pipelines:
        if p.down not in downs:
            downs[p.down] = _timed(lambda d: [downscale_uint8(d, f) for f in frames], p.down)
    sources = [(None, frames, 0.0)] + [(d, lr, t) for d, (lr, t) in downs.items()]
    points = []
    for q in ladder:
        coded = {}
        for down, src, t_down in sources:
            (blob, nbytes), t_enc = _timed(encode_video, codec, src, q, fps, threads)
            dec, t_dec = _timed(decode_video, blob)
            coded[down] = (nbytes, dec, dict(t_down=t_down, t_enc=t_enc, t_dec=t_dec))
        nbytes, dec, times = coded[None]
        points.append(_clip_point(FULL, q, dec, frames, nbytes, fps, border, **times, t_up=0.0))
        for p in pipelines:
            nbytes, dec, times = coded[p.down]
            outs, t_up = _timed(lambda: [upscale_uint8(p.up, f) for f in dec])
            points.append(_clip_point(p.label, q, outs, frames, nbytes, fps, border, **times, t_up=t_up))
    return points


# ---------------------------------------------------------------------------------- analysis

def average_curves(points: list[dict]) -> list[dict]:
    """Mean of every field over the items of each (source, codec, pipeline, q)."""
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((p["source"], p["codec"], p["pipeline"], p["q"]), []).append(p)
    curves = []
    for (src, codec, pipe, q), ps in groups.items():
        row = {"source": src, "codec": codec, "pipeline": pipe, "q": q, "n": len(ps)}
        for k in ("bpp", "kbps", "psnr", "ssim", "t_down", "t_enc", "t_dec", "t_up"):
            if k in ps[0]:
                row[k] = float(np.mean([p[k] for p in ps]))
        curves.append(row)
    return curves


def rd_curve(rows: list[dict], rate_key: str) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(rates, psnrs, rows) sorted by rate, keeping only points that raise both rate and PSNR
    (the BD interpolators need strictly monotone curves)."""
    rows = sorted(rows, key=lambda r: r[rate_key])
    kept = []
    for r in rows:
        if not kept or (r[rate_key] > kept[-1][rate_key] and r["psnr"] > kept[-1]["psnr"]):
            kept.append(r)
    return (np.array([r[rate_key] for r in kept]), np.array([r["psnr"] for r in kept]), kept)


def bd_metrics(anchor: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> dict:
    """BD-rate (%) and BD-PSNR (dB) of `test` against `anchor`, PCHIP and Akima, over the
    overlapping PSNR range (BD-rate) and log-rate range (BD-PSNR), which are returned too."""
    import bjontegaard as bd
    (ra, da), (rt, dt) = anchor, test
    out = {"psnr_range": [max(da.min(), dt.min()), min(da.max(), dt.max())],
           "rate_range": [max(ra.min(), rt.min()), min(ra.max(), rt.max())]}
    for method in ("pchip", "akima"):
        for key, fn, lo_hi in (("bd_rate", bd.bd_rate, out["psnr_range"]),
                               ("bd_psnr", bd.bd_psnr, out["rate_range"])):
            value = float("nan")
            if len(ra) >= 2 and len(rt) >= 2 and lo_hi[0] < lo_hi[1]:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    value = float(fn(ra, da, rt, dt, method, require_matching_points=False,
                                     min_overlap=0))
            out[f"{key}_{method}"] = value
    out["overlap"] = bool(out["psnr_range"][0] < out["psnr_range"][1])
    out["points"] = [len(ra), len(rt)]  # a curve of one point has no BD, whatever its ranges
    return out


def _pchip(rates: np.ndarray, psnrs: np.ndarray):
    from scipy.interpolate import PchipInterpolator
    if len(rates) < 2:
        return None
    return PchipInterpolator(np.log10(rates), psnrs, extrapolate=False)


def crossover(anchor: tuple[np.ndarray, np.ndarray], tests: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Where the best of `tests` (their PCHIP PSNR over log-rate, maximum at each rate) crosses
    the anchor, within the rates both cover: {"status", "rates": [crossings], "range": [lo, hi]}.
    status: "below" (down-up wins below the crossing), "none-downup-wins" (wins over the whole
    overlap), "none-full-wins" (never wins there), "no-overlap", or "mixed" (several crossings)."""
    fa = _pchip(*anchor)
    fts = [(_pchip(*t), t) for t in tests if len(t[0]) >= 2]
    if fa is None or not fts:
        return {"status": "no-overlap", "rates": [], "range": None}
    lo = max(np.log10(anchor[0]).min(), min(np.log10(t[0]).min() for _, t in fts))
    hi = min(np.log10(anchor[0]).max(), max(np.log10(t[0]).max() for _, t in fts))
    if not lo < hi:
        return {"status": "no-overlap", "rates": [], "range": None}
    x = np.linspace(lo, hi, 4001)
    with warnings.catch_warnings():  # rates between two down-up curves' ranges: NaN, left out below
        warnings.simplefilter("ignore", RuntimeWarning)
        best = np.nanmax(np.stack([f(x) for f, _ in fts]), axis=0)
    d = best - fa(x)
    ok = np.flatnonzero(np.isfinite(d))  # NaN: rates between two down-up curves' ranges
    if not ok.size:  # one down-up curve below the full one's rates, the other above them
        return {"status": "no-overlap", "rates": [], "range": None}
    x, d = x[ok[0]:ok[-1] + 1], d[ok[0]:ok[-1] + 1]
    rng = [float(10 ** x[0]), float(10 ** x[-1])]
    rates = [float(10 ** v) for v in _sign_changes(x, d)]
    known = d[np.isfinite(d)]
    first = known[np.flatnonzero(known)[0]] if known.any() else 0.0  # the side down-up starts on
    if not rates:
        status = "none-downup-wins" if known.mean() > 0 else "none-full-wins"
    elif len(rates) == 1 and first > 0:
        status = "below"
    else:
        status = "mixed"
    return {"status": status, "rates": rates, "range": rng}


def _sign_changes(x: np.ndarray, d: np.ndarray) -> list[float]:
    """The x where `d` changes sign: between two samples of opposite sign (linear
    interpolation), in the middle of a run of exact zeros between them (curves that meet on a
    grid point cross there too), or across NaN (no down-up curve there): at the edge of the
    known rates where down-up still wins, never at a rate made up inside the gap."""
    nz = np.flatnonzero(np.isfinite(d) & (d != 0))
    out = []
    for i, j in zip(nz[:-1], nz[1:]):
        if d[i] * d[j] > 0:
            continue
        if j == i + 1:
            out.append(x[i] - d[i] * (x[j] - x[i]) / (d[j] - d[i]))
        elif np.isnan(d[i + 1:j]).any():
            out.append(x[i] if d[i] > 0 else x[j])
        else:
            out.append(x[(i + j) // 2])
    return out


def convex_hull(rows: list[dict], rate_key: str) -> list[dict]:
    """The upper convex hull of all points in (rate, PSNR), from the lowest rate up to the highest
    PSNR: the best pipeline and rate point at each rate (rates between two hull points are
    reached by switching between them)."""
    pts = sorted(rows, key=lambda r: (r[rate_key], -r["psnr"]))
    hull: list[dict] = []

    def cross(o, a, b):
        ox, ax, bx = (r[rate_key] for r in (o, a, b))
        return (ax - ox) * (b["psnr"] - o["psnr"]) - (a["psnr"] - o["psnr"]) * (bx - ox)

    for r in pts:
        while len(hull) >= 2 and cross(hull[-2], hull[-1], r) >= 0:
            hull.pop()
        hull.append(r)
    top = max(range(len(hull)), key=lambda i: hull[i]["psnr"])
    return hull[:top + 1]


def analyse(curves: list[dict], rate_key_of: dict[str, str], pairs: list[tuple[str, str]] = ()) -> list[dict]:
    """Per (source, codec): BD metrics of each down-up pipeline against full, the hull, the
    crossover of the best down-up pipeline, and BD metrics of each (test, anchor) in `pairs`."""
    results = []
    for src, codec in dict.fromkeys((c["source"], c["codec"]) for c in curves):
        rows = [c for c in curves if c["source"] == src and c["codec"] == codec]
        rk = rate_key_of[src]
        labels = list(dict.fromkeys(r["pipeline"] for r in rows))
        curve = {lab: rd_curve([r for r in rows if r["pipeline"] == lab], rk) for lab in labels}
        anchor = curve[FULL][:2]
        per = {}
        for lab in labels:
            if lab == FULL:
                continue
            per[lab] = {**bd_metrics(anchor, curve[lab][:2]),
                        "crossover": crossover(anchor, [curve[lab][:2]]),
                        "dropped": sum(r["pipeline"] == lab for r in rows) - len(curve[lab][2])}
        downups = [curve[lab][:2] for lab in labels if lab != FULL]
        hull = convex_hull(rows, rk)
        vs = [{"test": t, "anchor": a, **bd_metrics(curve[a][:2], curve[t][:2])}
              for t, a in pairs if t in curve and a in curve]
        results.append({"source": src, "codec": codec, "rate_key": rk, "pipelines": per, "pairs": vs,
                        "best_downup_crossover": crossover(anchor, downups) if downups else None,
                        "hull": [{"pipeline": h["pipeline"], "q": h["q"], rk: h[rk], "psnr": h["psnr"]}
                                 for h in hull]})
    return results


# ---------------------------------------------------------------------------------- outputs

def _rate_label(rk: str) -> str:
    return "kbit/s (video bitstream)" if rk == "kbps" else "bits per pixel (full resolution)"


def _fmt_rate(v: float, rk: str) -> str:
    return f"{v:.0f}" if rk == "kbps" else f"{v:.3f}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def plot_rd(curves: list[dict], result: dict, path: Path) -> None:
    """PSNR and SSIM over rate (log axis) for every pipeline, the hull, the crossover."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    src, codec, rk = result["source"], result["codec"], result["rate_key"]
    rows = [c for c in curves if c["source"] == src and c["codec"] == codec]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for lab in dict.fromkeys(r["pipeline"] for r in rows):
        rs = sorted((r for r in rows if r["pipeline"] == lab), key=lambda r: r[rk])
        style = dict(marker="o", lw=2.2, color="black") if lab == FULL else dict(marker="s", lw=1.5)
        for ax, key in zip(axes, ("psnr", "ssim")):
            ax.plot([r[rk] for r in rs], [r[key] for r in rs], label=lab, ms=4, **style)
    hull = result["hull"]
    axes[0].plot([h[rk] for h in hull], [h["psnr"] for h in hull], "--", color="gray", lw=1,
                 label="convex hull")
    cross = result.get("best_downup_crossover") or {}
    for r in cross.get("rates", []):
        axes[0].axvline(r, ls=":", color="red", lw=1)
        axes[0].annotate(f"crossover {_fmt_rate(r, rk)}", (r, axes[0].get_ylim()[0]),
                         rotation=90, va="bottom", ha="right", fontsize=8, color="red")
    for ax, key in zip(axes, ("Y-PSNR (dB)", "SSIM (Y)")):
        ax.set_xscale("log")
        ax.set_xlabel(_rate_label(rk))
        ax.set_ylabel(key)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{src}: {codec}")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def _cross_text(c: dict | None, rk: str) -> str:
    if not c or c["status"] == "no-overlap":
        return "no overlapping rates"
    lo, hi = (_fmt_rate(v, rk) for v in c["range"])
    if c["status"] == "none-downup-wins":
        return f"none: down-up better over all of {lo}-{hi}"
    if c["status"] == "none-full-wins":
        return f"none: full resolution better over all of {lo}-{hi}"
    rates = ", ".join(_fmt_rate(v, rk) for v in c["rates"])
    return f"down-up better below {rates}" if c["status"] == "below" else f"crossings at {rates} (in {lo}-{hi})"


def _num(v: float, fmt: str, unit: str = "") -> str:
    return "n/a" if v is None or not np.isfinite(v) else format(v, fmt) + unit


def _bd_lines(res: dict, unit: str, rk: str) -> list[str]:
    """The BD tables of one (source, codec) result: each pipeline vs full, then the --vs pairs."""
    lines = [f"| pipeline vs full | BD-rate PCHIP | BD-rate Akima | BD-PSNR PCHIP | BD-PSNR Akima "
             f"| PSNR range (BD-rate) | {unit} range (BD-PSNR) | crossover ({unit}) |",
             "|---|---:|---:|---:|---:|---|---|---|"]
    for lab, m in res["pipelines"].items():
        pr = m["psnr_range"]
        rr = m["rate_range"]
        prange = f"{pr[0]:.2f}-{pr[1]:.2f} dB" if pr[0] < pr[1] else "no overlap"
        rrange = f"{_fmt_rate(rr[0], rk)}-{_fmt_rate(rr[1], rk)}" if rr[0] < rr[1] else "no overlap"
        # points that do not raise both rate and PSNR are left out of BD and crossover: say so
        dropped = f" ({m['dropped']} point(s) left out: PSNR not rising with rate)" if m.get("dropped") else ""
        lines.append(f"| {lab}{dropped} | {_num(m['bd_rate_pchip'], '+.1f', '%')} "
                     f"| {_num(m['bd_rate_akima'], '+.1f', '%')} "
                     f"| {_num(m['bd_psnr_pchip'], '+.2f', ' dB')} | {_num(m['bd_psnr_akima'], '+.2f', ' dB')} "
                     f"| {prange} | {rrange} | {_cross_text(m['crossover'], rk)} |")
    if len(res["pipelines"]) > 1:
        lines.append(f"| best down-up | | | | | | | {_cross_text(res['best_downup_crossover'], rk)} |")
    if res.get("pairs"):
        lines += ["", f"| test vs anchor (both down-up) | BD-rate PCHIP | BD-rate Akima | BD-PSNR PCHIP "
                  f"| BD-PSNR Akima | PSNR range (BD-rate) | {unit} range (BD-PSNR) |",
                  "|---|---:|---:|---:|---:|---|---|"]
        for m in res["pairs"]:
            pr, rr = m["psnr_range"], m["rate_range"]
            lines.append(f"| {m['test']} vs {m['anchor']} | {_num(m['bd_rate_pchip'], '+.1f', '%')} "
                         f"| {_num(m['bd_rate_akima'], '+.1f', '%')} | {_num(m['bd_psnr_pchip'], '+.2f', ' dB')} "
                         f"| {_num(m['bd_psnr_akima'], '+.2f', ' dB')} "
                         f"| {f'{pr[0]:.2f}-{pr[1]:.2f} dB' if pr[0] < pr[1] else 'no overlap'} "
                         f"| {f'{_fmt_rate(rr[0], rk)}-{_fmt_rate(rr[1], rk)}' if rr[0] < rr[1] else 'no overlap'} |")
    return lines + [""]


def summary_markdown(study: dict) -> str:
    lines = [f"# Codec study: {study['title']}", "", "```", study["command"], "```", "",
             f"Scale x{study['scale']:g}; Y-PSNR and SSIM at full resolution, {study['border']} px "
             "border cut, as `upsample eval`. Rates from the real encoded sizes: images in bits per "
             "full-resolution pixel (file bytes), clips in kbit/s of the video bitstream. "
             "BD-rate: negative = down-up needs fewer bits than full resolution for the same PSNR; "
             "computed only over the PSNR range both curves cover (shown). BD-PSNR likewise over "
             "the common rate range.", ""]
    for s in study["sources"]:
        desc = (f"{s['items']} images of {s['path']}" if s["kind"] == "image" else
                f"clip {s['path']}: {s['frames']} frames of {s['size']} at {s['fps']:g} fps")
        lines.append(f"- **{s['name']}**: {desc}")
    lines.append("- pipelines: " + ", ".join(f"`{p['label']}` = {p['down']} down, {p['up']} up"
                                            f" ({p['backend']})" for p in study["pipelines"]))
    lines.append("")
    for res in study["results"]:
        src, codec, rk = res["source"], res["codec"], res["rate_key"]
        unit = "kbit/s" if rk == "kbps" else "bpp"
        setting = CODECS[codec].setting
        lines += [f"## {src} / {codec}", "", f"![RD {src} {codec}]({res['plot']})", ""]
        points = [c for c in study["curves"] if c["source"] == src and c["codec"] == codec]
        if sum(c["pipeline"] == FULL for c in points) >= 2:  # BD and hull need curves
            hull = ", ".join(f"{h['pipeline']} {setting} {h['q']} ({_fmt_rate(h[rk], rk)}, {h['psnr']:.2f})"
                             for h in res["hull"])
            lines += _bd_lines(res, unit, rk) + [f"Convex hull ({unit}, dB): {hull}", ""]
        lines += [
                  f"| pipeline | {setting} | {unit} | Y-PSNR | SSIM | down s | enc s | dec s | up s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for c in points:
            lines.append(f"| {c['pipeline']} | {c['q']} | {_fmt_rate(c[rk], rk)} | {c['psnr']:.2f} "
                         f"| {c['ssim']:.4f} | {c['t_down']:.3f} | {c['t_enc']:.3f} "
                         f"| {c['t_dec']:.3f} | {c['t_up']:.3f} |")
        lines.append("")
    lines.append("Times are seconds per image (per clip for video), averaged; " + study["hardware"])
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    atomic_write(path, write)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# ------------------------------------------------------------------------------- options

def _short(spec: str) -> str:
    p = Path(spec)
    if p.suffix.lower() in (".safetensors", ".pth", ".pt", ".ckpt", ".onnx", ".xml"):
        return p.parent.name if p.stem in ("best", "last") and p.parent.name else p.stem
    return spec


def parse_pipeline(text: str) -> tuple[str, str, str]:
    """"[LABEL=]DOWN:UP" -> (label, down spec, up spec)."""
    label, sep, rest = text.partition("=")
    if not sep:
        label, rest = "", text
    parts = rest.split(":")
    if len(parts) != 2 or not all(parts):
        raise UserError(f"--pipeline expects [LABEL=]DOWN:UP such as bicubic:vdsr, got {text!r}")
    down, up = parts
    label = label or f"{_short(down)}>{_short(up)}"
    if label == FULL:
        raise UserError(f"--pipeline label {FULL!r} is the full-resolution anchor's; pick another")
    return label, down, up


def parse_pairs(items: list[str] | None, labels: list[str]) -> list[list[str]]:
    """--vs TEST:ANCHOR items checked against the pipeline labels."""
    pairs = []
    for item in items or []:
        test, sep, anchor = item.partition(":")
        if not sep or test not in labels or anchor not in labels:
            raise UserError(f"--vs expects TEST:ANCHOR with two pipeline labels of {', '.join(labels)}; "
                            f"got {item!r}")
        pairs.append([test, anchor])
    return pairs


def least_side(scale: float, multiple: int) -> int:
    """The least picture side a study at `scale` measures: cropped to a multiple of `multiple`
    (the scale's period; twice it for 4:2:0 clips), SSIM's window is left after the border cut."""
    need = SSIM_WINDOW + 2 * math.ceil(scale)
    return -(-need // multiple) * multiple


def _too_small(scale: float, multiple: int) -> str:
    least = least_side(scale, multiple)
    return (f"smaller than {least}x{least}, the least a x{scale:g} study measures (SSIM's "
            f"{SSIM_WINDOW}x{SSIM_WINDOW} window after the {math.ceil(scale)} px border cut)")


def check_size(what, width: int, height: int, scale: float, multiple: int) -> None:
    """A UserError for a picture or clip frame of `width` x `height` too small to measure."""
    if min(width, height) < least_side(scale, multiple):
        raise UserError(f"{what} is {width}x{height}, {_too_small(scale, multiple)}: use larger pictures")


def usable_images(folder: Path, images: list[Path], scale: float) -> list[Path]:
    """The images of a folder large enough to measure (their headers read, not their pixels); a
    note names those left out, as a folder's odd thumbnail should not stop a study, and a
    UserError when none is left."""
    multiple = scale_period(scale)[0]
    kept, small = [], []
    for p in images:
        with open_image(p, decode=False) as img:
            w, h = img.size
        if min(w, h) < least_side(scale, multiple):
            small.append(f"{p.name} ({w}x{h})")
        else:
            kept.append(p)
    listed = ", ".join(small[:3]) + (f" and {len(small) - 3} more" if len(small) > 3 else "")
    if not kept:
        raise UserError(f"{folder}: every image is {_too_small(scale, multiple)}: {listed}; use larger pictures")
    if small:
        print(f"note: {folder}: skipped {len(small)} image(s) {_too_small(scale, multiple)}: {listed}",
              file=sys.stderr)
    return kept


def collect_sources(inputs: list[str], max_images: int, scale: float) -> list[Source]:
    """The inputs as sources, their images' and clips' headers checked before any work."""
    sources, names = [], set()
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            images, others = list_images(path)
            if not images:
                clips = [p for p in others if is_video_path(p)]
                hint = (f" (its {len(clips)} video clip(s) are studied when named one by one, e.g. "
                        f"{clips[0]})" if clips else "")
                raise UserError(f"no images in {path}{hint}")
            images = usable_images(path, images, scale)
            if max_images and len(images) > max_images:  # evenly spaced in name order
                idx = np.unique(np.linspace(0, len(images) - 1, max_images).round().astype(int))
                images = [images[i] for i in idx]
            src = Source(path.resolve().name, "image", images, root=path)
        elif path.is_file() and is_video_path(path):
            clip = probe_clip(path)
            check_size(f"{path}: its frame", clip.width, clip.height, scale, 2 * scale_period(scale)[0])
            src = Source(path.stem, "video", [path], clip=clip)
        elif not path.exists():
            raise UserError(f"input not found: {path}")
        else:
            raise UserError(f"{path} is neither an image folder nor a video clip")
        while src.name in names:
            src.name += "_"
        names.add(src.name)
        sources.append(src)
    return sources


def study_command(inputs: list[str], out: str, *, scale: str, codecs: list[str],
                  pipelines: list[str] | None, ladders: list[str] | None, vs: list[str] | None,
                  max_images: int, max_frames: int, threads: int, backend: str, title: str,
                  allow_untrained: bool = False) -> str:
    """The `upsample codec-study` command line of a run, recorded in its outputs."""
    parts = ["upsample", "codec-study", *inputs, "-o", out, "--scale", f"{scale}",
             "--codecs", *codecs]
    for p in pipelines or []:
        parts += ["--pipeline", p]
    for lad in ladders or []:
        parts += ["--ladder", lad]
    for v in vs or []:
        parts += ["--vs", v]
    for flag, value in (("max-images", max_images), ("max-frames", max_frames), ("threads", threads)):
        if value:
            parts += [f"--{flag}", str(value)]
    if backend != Backend.TORCH:
        parts += ["--backend", backend]
    if title:
        parts += ["--title", title]
    return shlex.join(parts + (["--allow-untrained"] if allow_untrained else []))


def parse_ladders(codecs: list[Codec], items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """--ladder CODEC=Q,Q,... items -> {codec name: rate points}, the default for the others."""
    ladders = {}
    for item in items or []:
        name, sep, values = item.partition("=")
        if not sep or name not in CODECS:
            hint = did_you_mean(name).strip() if sep else ""
            raise UserError(f"--ladder expects CODEC=Q,Q,... with a codec of {', '.join(CODECS)}, got {item!r}"
                            + (f"; {hint}" if hint else ""))
        if not values.replace(",", "").strip():  # parse_ladder reads "" as the default ladder
            raise UserError(f"--ladder {item}: an empty ladder; give rate points such as {name}="
                            f"{','.join(map(str, CODECS[name].ladder[:3]))}, or leave --ladder {name} out "
                            "for the default")
        ladders[name] = values
    for name in ladders:
        if name not in [c.name for c in codecs]:
            raise UserError(f"--ladder {name}: {name} is not in --codecs")
    return {c.name: parse_ladder(c, ladders.get(c.name)) for c in codecs}


def check_codecs_fit_sources(codecs: list[Codec], sources: list[Source]) -> None:
    """Every codec has an input of its kind, and every input a codec of its kind."""
    kinds = {s.kind for s in sources}
    for c in codecs:
        if c.kind not in kinds:
            raise UserError(f"{c.name} is a{'n image' if c.kind == 'image' else ' video'} codec but no "
                            f"{'image folder' if c.kind == 'image' else 'video clip'} was given")
    for s in sources:
        if not any(c.kind == s.kind for c in codecs):
            want = "jpeg, webp, avif or png" if s.kind == "image" else "x264, x265 or av1"
            raise UserError(f"{s.name} is a{'n image folder' if s.kind == 'image' else ' clip'}: "
                            f"add a codec for it ({want})")


def check_clip_frame_sizes(codecs: list[Codec], sources: list[Source], scale: float) -> None:
    """Before any model loads: every video codec can code each clip's frames at full resolution
    and at 1/scale (as `measure_clip_source` crops them), or a UserError naming the size."""
    m = 2 * scale_period(scale)[0]
    for src in (s for s in sources if s.kind == "video"):
        w, h = src.clip.width // m * m, src.clip.height // m * m
        for c in (c for c in codecs if c.kind == "video"):
            check_frame_size(c, w, h, f"the frames of {src.paths[0]}")
            check_frame_size(c, round(w / scale), round(h / scale),
                             f"the x{scale:g} down-scaled frames of {src.paths[0]}")


def upscaler_backend(up_spec: str, backend: str) -> str:
    """Bicubic runs on torch whatever --backend says (it has no other runtime)."""
    return backend if up_spec != "bicubic" else Backend.TORCH


def load_pipelines(specs: list[tuple[str, str, str]], scale: float, backend: str,
                   device: str, allow_untrained: bool = False) -> list[Pipeline]:
    """The (label, down, up) specs loaded; pipelines with one downscaler share it. Registered
    models without trained weights, down or up, only with `allow_untrained`."""
    downs: dict[str, Downscaler] = {}
    pipelines = []
    for label, d, u in specs:
        if d not in downs:
            downs[d] = load_downscaler(d, scale=scale, device=device, allow_untrained=allow_untrained)
        up = load_upscaler(u, scale=scale, backend=upscaler_backend(u, backend), device=device,
                           allow_untrained=allow_untrained)
        if abs(up.scale - scale) > 1e-9:
            raise UserError(f"pipeline {label}: {u} upscales x{up.scale:g}, not x{scale:g}")
        pipelines.append(Pipeline(label, downs[d], up))
    return pipelines


def measure_image_source(src: Source, codecs: list[Codec], ladders: dict, pipelines: list[Pipeline],
                         scale: float, border: int) -> list[dict]:
    """The points of every image of a folder, for each image codec. Progress counts rate points,
    not images: one large image through a slow model and AVIF's seven is minutes."""
    points, used = [], [c for c in codecs if c.kind == "image"]
    bar = progress_bar(len(src.paths) * sum(len(ladders[c.name]) for c in used), True, desc=src.name,
                       unit="rate point")
    try:
        for path in src.paths:
            img = read_rgb(path)
            check_size(path, img.shape[1], img.shape[0], scale, scale_period(scale)[0])
            hr = modcrop(img, scale)
            for c in used:
                for pt in measure_image(hr, c, _counted(ladders[c.name], bar), pipelines, scale, border):
                    points.append({"source": src.name, "item": src.item(path), "codec": c.name, **pt})
    finally:
        bar.close()
    return points


def _counted(ladder, bar):
    """The rate points of `ladder`, each counted on `bar` once measured."""
    for q in ladder:
        yield q
        bar.update(1)


def measure_clip_source(src: Source, codecs: list[Codec], ladders: dict, pipelines: list[Pipeline],
                        scale: float, border: int, max_frames: int,
                        threads: int, limit: int = 0) -> tuple[list[dict], dict]:
    """The points of a clip for each video codec, and the clip's entry of the study's sources
    (`limit`: the most frames the free memory holds, for a clip that does not tell its count)."""
    frames, fps = read_frames(src.paths[0], max_frames, limit=limit)
    m = 2 * scale_period(scale)[0]  # 4:2:0 needs even sizes at both resolutions
    check_size(f"{src.paths[0]}: its frame", frames[0].shape[1], frames[0].shape[0], scale, m)
    h, w = frames[0].shape[0] // m * m, frames[0].shape[1] // m * m
    frames = [np.ascontiguousarray(f[:h, :w]) for f in frames]
    info = {"name": src.name, "kind": "video", "path": str(src.paths[0]),
            "frames": len(frames), "size": f"{w}x{h}", "fps": float(fps)}
    points = []
    for c in (c for c in codecs if c.kind == "video"):
        print(f"{src.name}: {c.name} ({c.encoder}), {len(ladders[c.name])} rate points", file=sys.stderr)
        ladder = track(ladders[c.name], True, desc=f"{src.name} {c.name}", unit="rate point")  # minutes each
        for pt in measure_clip(frames, fps, c, ladder, pipelines, border, threads or 1):
            points.append({"source": src.name, "item": src.paths[0].name, "codec": c.name, **pt})
    return points, info


def measure_sources(sources: list[Source], inputs: list[str], codecs: list[Codec], ladders: dict,
                    pipelines: list[Pipeline], scale: float, border: int, *, max_frames: int,
                    threads: int, limits: dict | None = None) -> tuple[list[dict], list[dict]]:
    """Every point of every source (`inputs` are the paths they came from, in order), and the
    study's description of each source (`limits`: `clip_frame_limits`)."""
    points, source_info = [], []
    for src, text in zip(sources, inputs):
        if src.kind == "image":
            source_info.append({"name": src.name, "kind": "image", "items": len(src.paths),
                                "path": str(Path(text))})
            points += measure_image_source(src, codecs, ladders, pipelines, scale, border)
        else:
            clip_points, info = measure_clip_source(src, codecs, ladders, pipelines, scale, border,
                                                    max_frames, threads, (limits or {}).get(src.name, 0))
            source_info.append(info)
            points += clip_points
    return points, source_info


def clip_frame_limits(sources: list[Source], max_frames: int, downs: int, scale: float) -> dict[str, int]:
    """Before any model loads: a UserError for a clip whose frames (as many as its header tells,
    or --max-frames) outgrow the free memory while studied - they are held with one LR per
    downscaler, their decoded copies at a rate point and one upscaled output, about
    3 + 2 x downs / scale^2 copies. Returns, for clips that do not tell their count, the most
    frames that fit (for `read_frames` to stop at); 0 for the others."""
    from ..inference.memory import free_memory
    free = free_memory(torch.device("cpu"))
    limits = {}
    for src in (s for s in sources if s.kind == "video"):
        w, h = src.clip.width, src.clip.height
        per_frame = w * h * 3 * (3 + 2 * downs / scale ** 2)
        fit = max(int(free // per_frame), 1)
        wanted = min((v for v in (max_frames, src.clip.frames) if v), default=0)
        if wanted > fit:
            raise UserError(f"{src.paths[0]}: {wanted} frames of {w}x{h} take about "
                            f"{wanted * per_frame / 1e9:.1f} GB while studied, more than the "
                            f"{free / 1e9:.1f} GB of free memory: pass --max-frames {fit} (or fewer)")
        limits[src.name] = 0 if wanted else fit
    return limits


def check_options(backend: str, scale: str, codecs: list[str]) -> float:
    """The options checked before any file is read; returns the scale."""
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend!r}: use one of {', '.join(BACKENDS)}")
    factor = check_scale(scale, "--scale")
    if factor <= 1:
        raise UserError(f"--scale must be > 1 (the down-up factor), got {scale}")
    if not codecs:
        raise UserError("--codecs: name at least one codec: " + ", ".join(CODECS))
    return factor


def run_study(inputs: list[str], out: str, *, codecs: list[str], pipelines: list[str] | None = None,
              scale: str = "2", ladders: list[str] | None = None, max_images: int = 0,
              max_frames: int = 0, backend: str = "torch", device: str = "cpu", threads: int = 0,
              title: str = "", vs: list[str] | None = None, overwrite: bool = False,
              allow_untrained: bool = False) -> list[dict]:
    """Measure, analyse and write a study of `inputs` into `out` (the options are those of
    `upsample codec-study`, as text); returns the analysis results (`analyse`). Options, inputs
    and the output folder are checked before any model loads."""
    factor = check_options(backend, scale, codecs)
    used = [get_codec(c) for c in dict.fromkeys(codecs)]
    rate_points = parse_ladders(used, ladders)
    check_study_output(Path(out), inputs, overwrite=overwrite)
    sources = collect_sources(inputs, max_images, factor)
    check_codecs_fit_sources(used, sources)
    check_clip_frame_sizes(used, sources, factor)
    specs = [parse_pipeline(p) for p in (pipelines or ["bicubic:bicubic"])]
    if len({lab for lab, _, _ in specs}) != len(specs):
        raise UserError("--pipeline labels must differ; name them LABEL=DOWN:UP")
    pairs = parse_pairs(vs, [lab for lab, _, _ in specs])
    limits = clip_frame_limits(sources, max_frames, len({d for _, d, _ in specs}), factor)
    if threads:
        torch.set_num_threads(threads)
    # full fp32 on CUDA too (cuDNN convolutions default to TF32), as `upsample eval`
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    loaded = load_pipelines(specs, factor, backend, device, allow_untrained)
    border = int(math.ceil(factor))
    points, source_info = measure_sources(sources, inputs, used, rate_points, loaded, factor, border,
                                          max_frames=max_frames, threads=threads, limits=limits)
    command = study_command(inputs, out, scale=scale, codecs=codecs, pipelines=pipelines,
                            ladders=ladders, vs=vs, max_images=max_images, max_frames=max_frames,
                            threads=threads, backend=backend, title=title, allow_untrained=allow_untrained)
    study = {"title": title or ", ".join(s["name"] for s in source_info), "command": command,
             "scale": factor, "border": border, "sources": source_info,
             "pipelines": [{"label": lab, "down": d, "up": u, "backend": upscaler_backend(u, backend)}
                           for lab, d, u in specs],
             "ladders": rate_points, "hardware": hardware_name(torch.device(device), torch.get_num_threads()),
             "pairs": pairs}
    return report(study, points, Path(out))


def report(study: dict, points: list[dict], out: Path) -> list[dict]:
    """Average, analyse, plot and write every output of a study; returns the analysis results."""
    curves = average_curves(points)
    rate_key = {s["name"]: "kbps" if s["kind"] == "video" else "bpp" for s in study["sources"]}
    results = analyse(curves, rate_key, [tuple(x) for x in study.get("pairs", [])])
    with staged_outputs(out) as stage:  # all of the new study replaces the old, or none of it
        for res in results:
            res["plot"] = f"rd_{_slug(res['source'])}_{res['codec']}.png"
            plot_rd(curves, res, stage / res["plot"])
        study = {**study, "results": results, "curves": curves}
        write_csv(stage / "points.csv", points)
        write_csv(stage / "curves.csv", curves)
        write_text(stage / "study.json", study_json({**study, "points": points}))
        write_text(stage / "summary.md", summary_markdown(study))
    return results


def bd_summary(results: list[dict], out: Path) -> str:
    """The BD lines of each pipeline of each result, and what was written into `out`."""
    lines = []
    for res in results:
        for lab, m in res["pipelines"].items():
            lines.append(f"{res['source']} {res['codec']} {lab}: {_bd_text(m, res['rate_key'])}")
        for m in res.get("pairs", []):  # --vs: both down-up, no crossover
            pair = f"{m['test']} vs {m['anchor']}"
            lines.append(f"{res['source']} {res['codec']} {pair}: {_bd_text(m, res['rate_key'])}")
    lines.append(f"wrote {out / 'summary.md'}, study.json, points.csv, curves.csv and {len(results)} plot(s)")
    return "\n".join(lines)


def _bd_text(m: dict, rk: str) -> str:
    """BD-rate and BD-PSNR with the ranges they cover (a BD-rate over 0.02 dB says little), or
    why there is none; then the crossover."""
    unit = "kbit/s" if rk == "kbps" else "bpp"
    (plo, phi), (rlo, rhi) = m["psnr_range"], m["rate_range"]
    few = min(m.get("points", [2])) < 2  # else a missing BD means the ranges do not overlap
    if np.isfinite(m["bd_rate_pchip"]):
        rate = (f"BD-rate {_num(m['bd_rate_pchip'], '+.1f', '%')} (akima {_num(m['bd_rate_akima'], '+.1f', '%')})"
                f" over {plo:.2f}-{phi:.2f} dB")
    else:
        rate = "BD-rate n/a (" + ("under 2 points on a curve" if few else "no PSNR range in common") + ")"
    if np.isfinite(m["bd_psnr_pchip"]):
        psnr = (f"BD-PSNR {_num(m['bd_psnr_pchip'], '+.2f', ' dB')} "
                f"over {_fmt_rate(rlo, rk)}-{_fmt_rate(rhi, rk)} {unit}")
    else:
        psnr = "BD-PSNR n/a (" + ("under 2 points on a curve" if few else "no rates in common") + ")"
    if "crossover" not in m:
        return f"{rate}, {psnr}"
    cross = _cross_text(m["crossover"], rk)
    return f"{rate}, {psnr}; crossover: {cross}" + ("" if m["crossover"]["status"] == "no-overlap" else f" {unit}")


def merge_studies(inputs: list[str], out: str, *, vs: list[str] | None = None,
                  title: str = "", overwrite: bool = False) -> list[dict]:
    """Re-analyse the points of earlier runs together (e.g. one folder split over processes):
    `inputs` are their --out folders or study.json files; returns the analysis results."""
    check_study_output(Path(out), inputs, overwrite=overwrite)
    studies = [read_study(d) for d in inputs]
    first = studies[0]
    ladders: dict[str, list] = {}
    for item, st in zip(inputs, studies):
        if (st["pipelines"], st["scale"]) != (first["pipelines"], first["scale"]):
            raise UserError(f"--merge: {item} ({_pipelines_text(st)}) and {inputs[0]} "
                            f"({_pipelines_text(first)}) differ in pipelines or scale; merge runs of the "
                            "same --pipeline, --scale and --backend")
        for name, lad in st["ladders"].items():
            if ladders.setdefault(name, lad) != lad:
                raise UserError(f"--merge: the runs differ in the {name} ladder")
    check_distinct_runs(studies, inputs)
    sources: dict[str, dict] = {}
    for st in studies:
        for src in st["sources"]:
            if src["name"] in sources and src["kind"] == "image":
                merged = sources[src["name"]]
                merged["items"] += src["items"]
                if src["path"] not in merged["path"].split(" + "):  # shards of one folder, kept apart
                    merged["path"] += " + " + src["path"]
            else:
                sources.setdefault(src["name"], dict(src))
    points = [p for st in studies for p in st["points"]]
    study = {k: first[k] for k in ("scale", "border", "pipelines")}
    study.update(pairs=parse_pairs(vs, [p["label"] for p in first["pipelines"]]) or first.get("pairs", []))
    study.update(ladders=ladders, title=title or first["title"], sources=list(sources.values()),
                 command="\n".join(st["command"] for st in studies) + "\n" + merge_command(inputs, out, vs, title),
                 hardware=first["hardware"] + f" (merged from {len(studies)} runs)")
    return report(study, points, Path(out))


def _pipelines_text(study: dict) -> str:
    return f"x{study['scale']:g}: " + ", ".join(f"{p['label']}={p['down']}:{p['up']} on {p['backend']}"
                                                for p in study["pipelines"])


def check_distinct_runs(studies: list[dict], inputs: list[str]) -> None:
    """A UserError when two runs measured the same item with the same codec: a run named twice
    (or a shard run again) would count its images twice in every average."""
    seen: dict[tuple, int] = {}
    for i, st in enumerate(studies):
        for p in st["points"]:
            key = (p["source"], p["item"], p["codec"])
            if seen.setdefault(key, i) != i:
                raise UserError(f"--merge: {inputs[seen[key]]} and {inputs[i]} both hold {p['source']}/"
                                f"{p['item']} with {p['codec']}; merge each run once (its points would "
                                "count twice in the averages)")


def merge_command(inputs: list[str], out: str, vs: list[str] | None, title: str) -> str:
    """The `upsample codec-study --merge` command line, recorded in the merged outputs."""
    parts = ["upsample", "codec-study", "--merge", *inputs, "-o", out]
    for v in vs or []:
        parts += ["--vs", v]
    return shlex.join(parts + (["--title", title] if title else []))

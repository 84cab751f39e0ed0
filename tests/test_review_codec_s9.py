"""Review of `codec-study` / `make-clip` as a compression researcher uses them: the BD numbers
against hand computations, crossovers, stale and half-written outputs, merges, clip sizes."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from upsample import cli
from upsample.studies import codec, codec_study

JPEG = ["--codecs", "jpeg", "--ladder", "jpeg=30,60"]


def picture(path: Path, h: int = 40, w: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255.0 / w, y * 255.0 / h, 128 + 60 * np.sin(x / 3.0)], -1) + rng.normal(0, 10, (h, w, 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
    return path


def run(capsys, *args: str) -> tuple[int, str]:
    rc = cli.main([str(a) for a in args])
    return rc, capsys.readouterr().err.strip()


def test_bd_rate_sign_and_overlap_match_a_hand_computation():
    from scipy.integrate import quad
    from scipy.interpolate import PchipInterpolator
    ra = np.array([1.0, 2.0, 4.0, 8.0])
    da = 30 + 2 * np.log2(ra)
    half = codec_study.bd_metrics((ra, da), (ra / 2, da))  # same PSNR at half the bits
    assert half["bd_rate_pchip"] == pytest.approx(-50) and half["bd_psnr_pchip"] == pytest.approx(2)
    # a test curve that only reaches 30.5 dB: integrated over 30-30.5 dB, never extrapolated
    rt, dt = np.array([0.25, 0.5, 1.0]), np.array([26.0, 28.0, 30.5])
    m = codec_study.bd_metrics((ra, da), (rt, dt))
    fa, ft = PchipInterpolator(da, np.log10(ra)), PchipInterpolator(dt, np.log10(rt))
    hand = (10 ** ((quad(ft, 30, 30.5)[0] - quad(fa, 30, 30.5)[0]) / 0.5) - 1) * 100
    assert m["psnr_range"] == [30.0, 30.5] and m["bd_rate_pchip"] == pytest.approx(hand)
    assert np.isnan(m["bd_psnr_pchip"])  # the rates share one point only


def test_crossover_where_the_curves_meet_on_a_grid_sample():
    ra = np.array([1.0, 2.0, 4.0, 8.0])
    da = 30 + 2 * np.log2(ra)
    test = da + 1 - np.log2(ra) * 2 / 3  # +1 dB at 1, -1 dB at 8: equal at 2 ** 1.5, mid-grid
    c = codec_study.crossover((ra, da), [(ra, test)])
    assert c["status"] == "below" and c["rates"] == [pytest.approx(2 ** 1.5, rel=1e-3)]
    c = codec_study.crossover((ra, da), [(ra, da + 1 - np.log2(ra) / 3)])  # crosses at 8: none
    assert c["status"] == "none-downup-wins" and not c["rates"]


def test_overwrite_drops_the_earlier_studys_other_plots_only(tmp_path, capsys):
    picture(tmp_path / "imgs" / "a.png")
    out = tmp_path / "o"
    assert run(capsys, "codec-study", tmp_path / "imgs", "-o", out, "--codecs", "jpeg", "webp",
               "--ladder", "jpeg=30,60", "--ladder", "webp=30,60")[0] == 0
    assert (out / "rd_imgs_webp.png").exists()
    (out / "rd_mine.png").write_text("the user's")
    (out / "notes.txt").write_text("notes")
    assert run(capsys, "codec-study", tmp_path / "imgs", "-o", out, *JPEG, "--overwrite")[0] == 0
    assert not (out / "rd_imgs_webp.png").exists()  # a plot the new summary does not show
    assert (out / "rd_imgs_jpeg.png").exists() and (out / "rd_mine.png").read_text() == "the user's"
    assert (out / "notes.txt").exists() and not [p for p in out.iterdir() if p.name.startswith(".")]


def test_an_interrupt_while_writing_leaves_the_earlier_study_whole(tmp_path, capsys, monkeypatch):
    picture(tmp_path / "imgs" / "a.png")
    out = tmp_path / "o"
    assert run(capsys, "codec-study", tmp_path / "imgs", "-o", out, *JPEG)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(study):
        raise KeyboardInterrupt
    monkeypatch.setattr(codec_study, "summary_markdown", interrupted)  # written last
    assert run(capsys, "codec-study", tmp_path / "imgs", "-o", out, "--codecs", "jpeg",
               "--ladder", "jpeg=20,80", "--overwrite")[0] != 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_merge_refuses_a_run_twice_and_names_every_folder(tmp_path, capsys):
    picture(tmp_path / "a" / "imgs" / "x.png")
    picture(tmp_path / "b" / "imgs" / "y.png", seed=1)
    for s in "ab":
        assert run(capsys, "codec-study", tmp_path / s / "imgs", "-o", tmp_path / f"r{s}", *JPEG)[0] == 0
    rc, err = run(capsys, "codec-study", "--merge", tmp_path / "ra", tmp_path / "ra", "-o", tmp_path / "m")
    assert rc == 2 and "both hold imgs/x.png" in err and "\n" not in err
    assert run(capsys, "codec-study", "--merge", tmp_path / "ra", tmp_path / "rb", "-o", tmp_path / "m")[0] == 0
    text = (tmp_path / "m" / "summary.md").read_text()
    assert "2 images of" in text and str(tmp_path / "b" / "imgs") in text


def test_images_in_subfolders_keep_their_path_as_item(tmp_path, capsys):
    picture(tmp_path / "imgs" / "a.png")
    picture(tmp_path / "imgs" / "sub" / "a.png", seed=1)
    assert run(capsys, "codec-study", tmp_path / "imgs", "-o", tmp_path / "o", *JPEG)[0] == 0
    points = json.loads((tmp_path / "o" / "study.json").read_text())["points"]
    assert {p["item"] for p in points} == {"a.png", "sub/a.png"}


def clip(path: Path, w: int, h: int, n: int = 4) -> Path:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=Fraction(25))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            f = av.VideoFrame.from_ndarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), format="rgb24")
            f.pts = i
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def test_x265_frames_it_would_crash_on_are_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    # 68x48 is fine, its x2 LR 34x24 aborted the process (libx265 heap corruption)
    monkeypatch.setattr(codec_study, "load_pipelines", lambda *a, **k: pytest.fail("models loaded"))
    rc, err = run(capsys, "codec-study", clip(tmp_path / "c.mp4", 70, 50), "-o", tmp_path / "o",
                  "--codecs", "x265", "--ladder", "x265=40")
    assert rc == 2 and "34x24" in err and "leave x265 out" in err and "\n" not in err
    x265 = codec.get_codec("x265")
    with pytest.raises(codec.UserError):  # the encoder itself is guarded too
        codec.encode_video(x265, [np.zeros((24, 48, 3), np.uint8)] * 2, 40, Fraction(25))


def test_the_bd_line_shows_its_ranges_and_says_why_there_is_none():
    ra = np.array([1.0, 2.0, 4.0])
    da = 30 + 2 * np.log2(ra)
    apart = (ra / 100, da - 10)  # no PSNR or rate in common
    def entry(test):
        return {**codec_study.bd_metrics((ra, da), test), "crossover": codec_study.crossover((ra, da), [test])}
    res = {"source": "s", "codec": "jpeg", "rate_key": "bpp",
           "pipelines": {"near": entry((ra / 2, da)), "far": entry(apart)}}
    near, far, _ = codec_study.bd_summary([res], Path("o")).splitlines()
    assert "BD-rate -50.0%" in near and "over 30.00-34.00 dB" in near and "over 1.000-2.000 bpp" in near
    assert "no PSNR range in common" in far and far.endswith("no overlapping rates")


def test_points_left_out_of_bd_are_noted_in_the_summary_table():
    ra = np.array([1.0, 2.0, 4.0])
    m = {**codec_study.bd_metrics((ra, 30 + ra), (ra, 29 + ra)), "dropped": 1,
         "crossover": {"status": "none-full-wins", "rates": [], "range": [1.0, 4.0]}}
    lines = codec_study._bd_lines({"pipelines": {"p": m}}, "bpp", "bpp")
    assert any(line.startswith("| p (1 point(s) left out") for line in lines)


def test_a_one_point_curve_says_so_rather_than_no_overlap():
    one = (np.array([1.0]), np.array([30.0]))
    m = {**codec_study.bd_metrics(one, one), "crossover": codec_study.crossover(one, [one])}
    res = {"source": "s", "codec": "jpeg", "rate_key": "bpp", "pipelines": {"p": m}}
    assert "BD-rate n/a (under 2 points on a curve)" in codec_study.bd_summary([res], Path("o"))


def test_make_clip_at_ntsc_rate_is_lossless_and_has_every_frame(tmp_path, capsys):
    src = picture(tmp_path / "big.png", 60, 80)
    out = tmp_path / "c.mkv"
    assert run(capsys, "make-clip", src, "-o", out, "--size", "32x24", "--seconds", "1",
               "--fps", "30000/1001")[0] == 0
    with av.open(str(out)) as c:
        assert c.streams.video[0].average_rate == Fraction(30000, 1001)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    img = np.asarray(Image.open(src).convert("RGB"))
    y0 = round((60 - 24) * 0.25)  # pan: from the left edge, a quarter down
    assert len(frames) == 30 and np.array_equal(frames[0], img[y0:y0 + 24, :32])


def test_a_codec_missing_here_names_those_that_are_usable(monkeypatch):
    monkeypatch.setattr(codec, "_av1_encoder", lambda: None)
    with pytest.raises(codec.UserError, match=r"no libsvtav1.*leave av1 out \(usable here: jpeg, .*x265\)$"):
        codec.get_codec("av1")
    with pytest.raises(codec.UserError, match=r"unknown codec 'jxl'.*\(usable here: .*x265\)$"):
        codec.get_codec("jxl")


def test_vs_pairs_are_printed_with_the_pipelines():
    ra = np.array([1.0, 2.0, 4.0])
    da = 30 + 2 * np.log2(ra)
    pair = {"test": "t", "anchor": "a", **codec_study.bd_metrics((ra, da), (ra / 2, da))}
    res = {"source": "s", "codec": "jpeg", "rate_key": "bpp", "pipelines": {}, "pairs": [pair]}
    assert "s jpeg t vs a: BD-rate -50.0%" in codec_study.bd_summary([res], Path("o"))


def test_a_folder_of_clips_says_to_name_them(tmp_path, capsys):
    (tmp_path / "clips").mkdir()
    clip(tmp_path / "clips" / "a.mp4", 64, 64)
    rc, err = run(capsys, "codec-study", tmp_path / "clips", "--codecs", "x264", "-o", tmp_path / "o")
    assert rc == 2 and "named one by one" in err and "a.mp4" in err and "\n" not in err


def test_best_down_up_crossover_is_never_made_up_between_two_curves():
    ra = np.array([1.0, 2.0, 4.0, 8.0])
    da = 30 + 2 * np.log2(ra)
    low = (np.array([0.5, 1.2]), np.array([29.0, 31.0]))   # above full up to 1.2
    high = (np.array([5.0, 9.0]), np.array([34.0, 35.0]))  # below full from 5; nothing between
    c = codec_study.crossover((ra, da), [low, high])
    assert c["status"] == "below" and c["rates"] == [pytest.approx(1.2, rel=1e-3)]
    both_above = (np.array([5.0, 9.0]), np.array([36.0, 38.0]))
    assert codec_study.crossover((ra, da), [low, both_above])["status"] == "none-downup-wins"
    outside = [(np.array([0.1, 0.5]), np.array([20.0, 25.0])), (np.array([10.0, 20.0]), np.array([37.0, 39.0]))]
    assert codec_study.crossover((ra, da), outside)["status"] == "no-overlap"  # was an IndexError


def test_study_json_is_strict_json_and_merges_back_its_non_finite_numbers(tmp_path):
    from upsample.studies.study_files import read_study, study_json
    study = {"title": "t", "command": "c", "hardware": "h", "scale": 2, "border": 2, "ladders": {},
             "sources": [], "pipelines": [], "pairs": [["a", "b"]], "note": None, "name": "Infinity.png",
             "points": [{"psnr": math.inf, "bd": math.nan, "low": -math.inf, "grid": [1.0, math.nan]}]}
    text = study_json(study)
    json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in study.json"))
    (tmp_path / "study.json").write_text(text)
    back = read_study(str(tmp_path))
    p = back["points"][0]
    assert p["psnr"] == math.inf and p["low"] == -math.inf and math.isnan(p["bd"]) and math.isnan(p["grid"][1])
    assert back["note"] is None and back["name"] == "Infinity.png" and back["pairs"] == [["a", "b"]]

"""What a new user met in an end-to-end walkthrough (session 9): where a run writes, a run dir
full of photos, a validation image too small before any crop, a run folder given as a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from upsample import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"


def _photos(folder: Path, n: int = 2, size=(40, 48)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def _train(photos: Path, run: Path, *extra: str) -> list[str]:
    return ["train", str(TINY), "--run-dir", str(run), "--device", "cpu", "--set", f'data.train=["{photos}"]',
            "--set", "train.steps=2", "--set", "data.batch_size=2", *extra]


def test_a_run_says_where_it_writes_at_its_start(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(_train(_photos(tmp_path / "photos"), run, "--set", "data.val_fraction=0")) == 0
    out = capsys.readouterr()
    first = (out.out + out.err).split("train ")[0]  # the lines before the progress
    assert f"run dir {run}" in first and f"tensorboard --logdir {run / 'tb'}" in first


def test_a_folder_of_photos_is_no_run_dir(tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    for extra in ([], ["--reset"]):
        assert cli.main(_train(photos, photos, "--set", "data.val_fraction=0", *extra)) == 2
        err = capsys.readouterr().err
        assert "holds 2 picture(s) or video(s) (e.g. p0.png) and no run" in err and "Traceback" not in err
    assert sorted(p.name for p in photos.iterdir()) == ["p0.png", "p1.png"]  # nothing written there
    (tmp_path / "empty" / ".DS_Store").parent.mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"x")  # hidden files are no reason to refuse
    assert cli.main(_train(photos, tmp_path / "empty", "--set", "data.val_fraction=0")) == 0
    (tmp_path / "logged").mkdir()
    (tmp_path / "logged" / "train.log").write_text("tee'd here\n")  # `... 2>&1 | tee RUN/train.log`
    assert cli.main(_train(photos, tmp_path / "logged", "--set", "data.val_fraction=0")) == 0


def test_a_validation_image_small_before_any_crop_is_not_told_to_raise_the_crop(tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    small = _photos(tmp_path / "val", n=1, size=(7, 5))
    (tmp_path / "val.txt").write_text(str(small / "p0.png") + "\n")
    assert cli.main(_train(photos, tmp_path / "run", "--set", f'data.val_list="{tmp_path / "val.txt"}"',
                           "--set", "val.crop=64")) == 2
    err = capsys.readouterr().err
    assert "is 5x7: too small" in err and "val.crop" not in err, err


def test_a_run_folder_given_as_a_model_names_its_weights(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(_train(_photos(tmp_path / "photos"), run, "--set", "data.val_fraction=0")) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--model", str(run), "--scale", "2", "--data", str(tmp_path / "photos")]) != 0
    err = capsys.readouterr().err
    assert f"{run} is a folder" in err and "last.safetensors" in err and "Traceback" not in err, err


def test_progress_lines_in_a_log_hold_no_cursor_moves_of_nested_bars():
    import io

    from upsample.media.progress import progress_bar
    log = io.StringIO()
    outer = progress_bar(3, True, desc="images", unit="image", stream=log, interval=0)
    inner = progress_bar(4, True, desc="tiles", unit="tile", stream=log, interval=0, leave=False)
    for _ in range(4):
        inner.update(1)
    inner.close()
    outer.update(1)
    outer.close()
    text = log.getvalue()
    assert "\x1b" not in text and "tiles 4/4" in text and "images 1/3" in text, repr(text)


def test_a_checkpoint_exports_beside_itself_by_default(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    assert cli.main(_train(_photos(tmp_path / "photos"), run, "--set", "data.val_fraction=0")) == 0
    monkeypatch.chdir(tmp_path / "photos")  # not where the export goes
    assert cli.main(["export", str(run / "last.safetensors")]) == 0
    assert (run / "last.onnx").is_file() and not list((tmp_path / "photos").glob("*.onnx"))


def test_a_video_without_sound_says_no_other_stream_was_copied(tmp_path, capsys):
    import av
    clip = tmp_path / "c.mp4"
    with av.open(str(clip), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 32, 24, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 40 * i, np.uint8), format="rgb24")
            out.mux(s.encode(frame))
        out.mux(s.encode(None))
    assert cli.main(["video", str(clip), "-o", str(tmp_path / "o.mp4"), "--model", "bicubic"]) == 0
    out = capsys.readouterr().out
    assert "no other stream copied" in out and "0 packets" not in out, out


def test_read_rgb_takes_16_bit_rgb_to_8_bits_as_im2uint8(tmp_path):
    # training, bench --image and quantize's calibration read through read_rgb, as eval does
    import av

    from upsample.media.imageio import read_rgb
    levels = np.random.default_rng(4).integers(0, 65536, (6, 7, 3), dtype=np.uint16)
    frame = av.VideoFrame.from_ndarray(levels, format="rgb48le")
    with av.open(str(tmp_path / "d.png"), "w", format="image2") as out:  # a 16-bit RGB PNG
        s = out.add_stream("png", rate=1)
        s.width, s.height, s.pix_fmt = 7, 6, "rgb48be"
        out.mux(s.encode(frame))
        out.mux(s.encode(None))
    expected = np.clip(np.round(levels / 257.0), 0, 255).astype(np.uint8)
    assert np.array_equal(read_rgb(tmp_path / "d.png"), expected)


def test_prepare_takes_splits_train_list_so_no_validation_image_is_cropped(tmp_path, capsys):
    photos = _photos(tmp_path / "photos", n=12, size=(64, 64))
    assert cli.main(["data", "split", str(photos), "--val", "0.25", "-o", str(tmp_path / "lists")]) == 0
    val = {p.strip() for p in (tmp_path / "lists" / "val.txt").read_text().splitlines() if p.strip()}
    assert val
    assert cli.main(["data", "prepare", str(tmp_path / "lists" / "train.txt"), "-o", str(tmp_path / "crops"),
                     "--size", "32"]) == 0
    crops = [p.name for p in (tmp_path / "crops").rglob("*.png")]
    val_stems = {Path(v).stem for v in val}
    assert crops and not [c for c in crops if any(f"_{s}_" in c or c.startswith(f"{s}_") for s in val_stems)], crops
    assert all(c.startswith("photos__p") for c in crops), crops  # named as from the folder, none hidden
    (tmp_path / "bad.txt").write_text("nowhere.png\n")
    assert cli.main(["data", "prepare", str(tmp_path / "bad.txt"), "-o", str(tmp_path / "c2")]) == 2
    assert "missing, e.g." in capsys.readouterr().err


def test_calibration_passes_over_a_damaged_image_and_spreads_over_the_folder(tmp_path, capsys):
    from upsample.models.registry import create_model
    from upsample.runtime.quantize import calibration_inputs
    folder = _photos(tmp_path / "frames", n=12, size=(40, 40))
    (folder / "p5.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    found = calibration_inputs(create_model("espcn-x2"), 2, str(folder), samples=4, size=16)
    assert len(found) == 4 and "skipped 1 unreadable image(s)" in capsys.readouterr().err
    every = calibration_inputs(create_model("espcn-x2"), 2, str(folder), samples=11, size=16)
    firsts = [np.array_equal(found[0], e) for e in every]
    assert firsts.index(True) == 0 and len(every) == 11  # the same order each time, all 11 readable


def test_bench_refuses_an_int8_file_of_other_weights_of_the_architecture(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert cli.main(_train(_photos(tmp_path / "photos", size=(64, 64)), run, "--set", "data.val_fraction=0")) == 0
    calib = _photos(tmp_path / "calib", n=2, size=(64, 64))
    q = tmp_path / "q.onnx"
    assert cli.main(["quantize", str(run / "last.safetensors"), "--backend", "onnxruntime", "--calib", str(calib),
                     "--size", "16", "-o", str(q)]) == 0
    capsys.readouterr()
    assert cli.main(["bench", "--model", "espcn-x2", "--int8", str(q), "--size", "32x24", "--backend", "torch"]) == 2
    err = capsys.readouterr().err
    assert "quantized from other weights" in err and str(run / "last.safetensors") in err, err
    assert cli.main(["bench", "--model", str(run / "last.safetensors"), "--int8", str(q), "--size", "32x24",
                     "--backend", "torch", "--runs", "1"]) == 0


def test_a_cameras_mpo_jpeg_and_a_multi_page_tiff_are_stills_to_the_data_tools(tmp_path, capsys):
    folder = tmp_path / "mp"
    folder.mkdir()
    rng = np.random.default_rng(5)
    pictures = [Image.fromarray(rng.integers(0, 256, (120, 120, 3), dtype=np.uint8)) for _ in range(2)]
    small = pictures[0].resize((30, 30))
    pictures[0].save(folder / "scan.tif", save_all=True, append_images=[small])  # two pages
    pictures[1].save(folder / "photo.jpg", format="MPO", save_all=True, append_images=[small])  # a camera's
    assert cli.main(["data", "check", str(folder), "--min-size", "64"]) == 0
    out = capsys.readouterr()
    assert "animation" not in out.out + out.err, out
    cli.main(["data", "clean", str(folder), "--quarantine", str(tmp_path / "q"), "--min-size", "64"])
    assert (folder / "scan.tif").exists() and (folder / "photo.jpg").exists()

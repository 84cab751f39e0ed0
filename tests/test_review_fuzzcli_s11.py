"""A systematic fuzz of the CLI's arguments (review s11): bicubic on a --device torch does not
have; a --max-memory or --max-pixels without its unit; a huge video --batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_checks import one_error_line
from upsample import cli


def _png(path: Path, side: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((side, side, 3), 90, np.uint8)).save(path)
    return path


def _clip(path: Path) -> Path:
    import av
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width = s.height = 16
        s.pix_fmt = "yuv420p"
        for _ in range(2):
            for p in s.encode(av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _argv(command: str, tmp_path: Path) -> list[str]:
    if command == "image":
        return ["image", str(_png(tmp_path / "a.png")), "-o", str(tmp_path / "o.png")]
    if command == "video":
        return ["video", str(_clip(tmp_path / "a.mp4")), "-o", str(tmp_path / "o.mp4")]
    return ["eval", "--data", str(_png(tmp_path / "hr" / "a.png").parent)]


@pytest.mark.parametrize("command", ["image", "video", "eval"])
@pytest.mark.parametrize("device, needle", [
    ("abc", "device"), ("GPU", "device"), ("0", "device"), ("", "device"), ("cuda", "--device cuda"),
])
def test_bicubic_on_a_device_torch_lacks_is_one_line(command, device, needle, tmp_path, capsys):
    """Before: torch's RuntimeError traceback ("Expected one of cpu, cuda, ipu ...") from
    BicubicUpscaler, or "AssertionError: Torch not compiled with CUDA enabled"."""
    import torch
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    argv = [*_argv(command, tmp_path), "--model", "bicubic", "--scale", "2", "--device", device]
    assert cli.main(argv) == 2
    one_error_line(capsys, needle, "cpu")
    assert not list(tmp_path.glob("o.*"))


@pytest.mark.parametrize("command", ["image", "video"])
@pytest.mark.parametrize("value", ["1.5", "512", "999999"])
def test_a_memory_limit_without_its_unit_is_refused_before_the_model(command, value, tmp_path, capsys, no_model):
    """Before: `--max-memory 1.5` (meant as GB) was 1 byte: the model loaded and ran, then
    "over --max-memory 0 KB" per image."""
    assert cli.main([*_argv(command, tmp_path), "--model", "bicubic", "--max-memory", value]) == 2
    one_error_line(capsys, f"--max-memory {value} is", "write the unit")
    assert not list(tmp_path.glob("o.*"))


def test_a_memory_limit_with_its_unit_passes():
    from upsample.cli.options import memory_limit
    assert memory_limit("2GB") == 2_000_000_000
    assert memory_limit("1M") == 1_000_000
    assert memory_limit("8KB") == 8_000  # a unit: meant (tests force streaming with it)
    assert memory_limit("2000000") == 2_000_000
    assert memory_limit(None) is None


@pytest.mark.parametrize("value", ["0.5", "0.0004K", ".1"])
def test_max_pixels_that_rounds_to_none_is_refused_not_unlimited(value, tmp_path, capsys, no_model):
    """Before: `--max-pixels 0.5` was int(0.5) = 0, "no limit": the decompression-bomb guard off."""
    assert cli.main([*_argv("image", tmp_path), "--model", "bicubic", "--max-pixels", value]) == 2
    one_error_line(capsys, "--max-pixels must be a number of pixels")


@pytest.mark.parametrize("value, pixels", [("0", 0), ("0.0M", 0), ("1.5M", 1_500_000), ("40", 40)])
def test_max_pixels_zero_and_counts_pass(value, pixels):
    from upsample.cli.options import parse_pixels
    assert parse_pixels(value) == pixels


@pytest.mark.parametrize("where, needle", [("in", "input -: standard input is not read"),
                                           ("out", "-o/--output: standard output is not written")])
def test_video_dash_is_said_as_image_says_it(where, needle, tmp_path, capsys, no_model, monkeypatch):
    """Before: "file not found: -", and "-o - has no extension: name the container, e.g. -.mp4"."""
    monkeypatch.chdir(tmp_path)
    src = "-" if where == "in" else str(_clip(tmp_path / "a.mp4"))
    dst = "-" if where == "out" else "o.mp4"
    try:  # -o -: argparse's type check (SystemExit 2), as every -o
        status = cli.main(["video", src, "-o", dst, "--model", "bicubic"])
    except SystemExit as exc:
        status = exc.code
    assert status == 2
    one_error_line(capsys, needle)
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "-.mp4").exists()


@pytest.mark.parametrize("option", ["--json", "--save"])
def test_eval_an_empty_json_or_save_is_an_unset_variable(option, tmp_path, capsys, monkeypatch):
    """Before: `--json ""` printed the table and wrote no JSON, `--save ""` saved nothing, both
    with status 0 (the empty value read as not given)."""
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "hr" / "a.png", side=32)
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", "--data", "hr", "--scale", "2", option, ""])
    assert exc.value.code == 2
    one_error_line(capsys, f"argument {option}: an empty path")


def test_eval_json_named_as_a_folder_is_refused(tmp_path, capsys, monkeypatch):
    """Before: `--json newdir/` wrote the JSON to a file named "newdir"."""
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "hr" / "a.png", side=32)
    assert cli.main(["eval", "--data", "hr", "--scale", "2", "--json", "newdir/"]) == 2
    one_error_line(capsys, "--json newdir/: a folder", "name a .json file")
    assert not (tmp_path / "newdir").exists()


@pytest.mark.parametrize("argv", [
    ["data", "check", ""], ["data", "split", ""], ["data", "clean", "", "--quarantine", "q"],
    ["data", "clean", "hr", "--quarantine", ""], ["prune", "", "-o", "p.safetensors"],
    ["quantize", "", "--backend", "onnxruntime", "--calib", "hr", "-o", "q.onnx"],
    ["quantize", "espcn-x2", "--backend", "onnxruntime", "--calib", "", "-o", "q.onnx"],
    ["make-clip", "", "-o", "c.mp4"], ["tune", ""],
])
def test_an_empty_path_is_an_unset_variable_not_the_current_folder(argv, tmp_path, capsys, monkeypatch):
    """Before: `data split ""` wrote train.txt / val.txt of the current folder into it, `data
    check ""` scanned it; prune / quantize said ". is a folder, not a checkpoint file"."""
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "hr" / "a.png")
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    one_error_line(capsys, "an empty path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hr"]


@pytest.mark.parametrize("out", [".", ".."])
def test_prepare_into_a_folder_above_the_source_says_so(out, tmp_path, capsys, monkeypatch):
    """Before: `data prepare imgs -o .` said "no images or videos in imgs" of a full folder (every
    file under -o is skipped as a crop made before)."""
    (tmp_path / "w").mkdir()
    monkeypatch.chdir(tmp_path / "w")
    _png(tmp_path / "w" / "imgs" / "a.png", side=32)
    assert cli.main(["data", "prepare", "imgs", "-o", out, "--size", "16"]) == 2
    one_error_line(capsys, f"-o {out} holds the source imgs", "outside it")
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["imgs"]


@pytest.mark.parametrize("out", ["/dev/null", ".", "p.pth"])
def test_prune_output_that_is_no_safetensors_file_is_refused_first(out, tmp_path, capsys, monkeypatch):
    """Before: after the model's load, "name it *.safetensors, not null" (of /dev/null), "not " (of .)."""
    from upsample.inference import load
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(load, "check_trained", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    assert cli.main(["prune", "espcn-x2", "-o", out]) == 2
    one_error_line(capsys, f"-o {out}: the pruned model is a safetensors checkpoint")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, needle", [
    (["export", "espcn-x2", "-o", "/dev/null"], "not /dev/null: name a .onnx file"),
    (["export", "espcn-x2", "-o", "."], "not .: name a .onnx file"),
    (["interpolate", "espcn-x2", "espcn-x2", "--alpha", "0.5", "-o", "/dev/null"], "not /dev/null"),
    (["quantize", "espcn-x2", "--backend", "onnxruntime", "--calib", "hr", "-o", "."], "got ."),
])
def test_an_output_of_the_wrong_kind_is_named_as_given(argv, needle, tmp_path, capsys, monkeypatch, no_model):
    """Before: the name alone: "writes a .onnx file, not null" of /dev/null, "not " of -o ."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    one_error_line(capsys, needle)


@pytest.mark.parametrize("quarantine", [".", ".."])
def test_clean_into_a_quarantine_above_the_folder_says_so(quarantine, tmp_path, capsys, monkeypatch):
    """Before: `data clean imgs --quarantine .` said "no images in imgs" of a full folder."""
    (tmp_path / "w").mkdir()
    monkeypatch.chdir(tmp_path / "w")
    _png(tmp_path / "w" / "imgs" / "a.png", side=8)
    assert cli.main(["data", "clean", "imgs", "--quarantine", quarantine]) == 2
    one_error_line(capsys, f"--quarantine {quarantine} holds imgs", "outside it")
    assert (tmp_path / "w" / "imgs" / "a.png").exists()


@pytest.mark.parametrize("command", ["train", "tune"])
def test_an_empty_run_dir_is_an_unset_variable(command, tmp_path, capsys, monkeypatch):
    """Before: `train tiny.toml --run-dir ""` trained into runs/<stem>, the default run's folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "recipe.toml", "--run-dir", ""])
    assert exc.value.code == 2
    one_error_line(capsys, "argument --run-dir: an empty path")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("option", ["--image", "--calib", "--int8"])
def test_bench_an_empty_file_option_is_an_unset_variable(option, capsys):
    """Before: `bench --image ""` timed random pixels without a word."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--model", "bicubic", "--scale", "2", option, ""])
    assert exc.value.code == 2
    one_error_line(capsys, f"argument {option}: an empty path")


@pytest.mark.parametrize("command", ["image", "video"])
def test_the_default_bicubic_on_a_device_torch_lacks_is_one_line(command, tmp_path, capsys):
    """`--scale 1.5` without --model is bicubic (no shipped x1.5 model): the same traceback."""
    assert cli.main([*_argv(command, tmp_path), "--scale", "1.5", "--device", "abc"]) == 2
    one_error_line(capsys, "device", "abc")
    assert not list(tmp_path.glob("o.*"))


def test_quantize_a_bad_scale_names_the_option(tmp_path, capsys, monkeypatch, no_model):
    """Before: "scale must be a positive number, got 'abc'" (no --), said by the model's loader."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["quantize", "espcn-x2", "--backend", "onnxruntime", "--calib", "hr", "-o", "q.onnx",
                     "--scale", "abc"]) == 2
    one_error_line(capsys, "--scale must be a positive number")

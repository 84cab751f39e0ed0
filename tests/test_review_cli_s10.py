"""A sweep of the CLI under what a hurried user types wrong (review s10): a --scale that is no
number or out of range refused while parsing, not after the model loads; --half against
--precision; one input named twice with a file -o; export's -o of the other --format's kind."""

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


def _parse_error(argv: list[str], capsys, *needles: str) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    return one_error_line(capsys, *needles)


@pytest.mark.parametrize("command", [
    ["image", "{a}", "-o", "{o}", "--model", "bicubic"],
    ["eval", "--data", "{d}", "--model", "bicubic"],
    ["bench", "--model", "bicubic"],
    ["export", "espcn-x2", "-o", "{d}/m.onnx"],
])
@pytest.mark.parametrize("value, needle", [
    ("abc", "--scale must be a positive number"), ("nan", "--scale must be a positive number"),
    ("inf", "--scale must be a positive number"), ("0", "--scale must be a positive number"),
    ("1e9", "--scale 1e+09 is over the 32x"), ("1e-9", "under the 0.001"),
])
def test_a_bad_scale_is_refused_before_torch_and_the_model(command, value, needle, tmp_path, capsys,
                                                            monkeypatch):
    """Before: `scale must be a positive number, got 'abc'` after torch's import and the model's
    load (7 s); --scale 1e9 with bicubic printed "bicubic x1000000000", then failed the image."""
    import sys
    for module in ("upsample.inference.load", "upsample.evaluation.bench", "upsample.evaluation.evaluate"):
        monkeypatch.setitem(sys.modules, module, None)  # importing one fails the test
    a = _png(tmp_path / "a.png")
    argv = [w.format(a=a, o=tmp_path / "o.png", d=tmp_path) for w in command]
    assert cli.main([*argv, f"--scale={value}"]) == 2
    one_error_line(capsys, needle)
    assert not (tmp_path / "o.png").exists()


def test_a_bad_outscale_is_refused_before_the_model(tmp_path, capsys, no_model):
    assert cli.main(["image", str(_png(tmp_path / "a.png")), "-o", str(tmp_path / "o.png"),
                     "--outscale", "nan"]) == 2
    one_error_line(capsys, "--outscale must be a positive number")


def test_a_good_scale_passes():
    from upsample.cli import options
    for text in ("1.5", "32", "0.001", None):
        options.check_scale_text(text)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_half_against_an_explicit_precision_is_refused(precision, tmp_path, capsys, no_model):
    """Before: `--half --precision fp32` ran in bf16 without a word (--half replaced it)."""
    assert cli.main(["image", str(_png(tmp_path / "a.png")), "-o", str(tmp_path / "o.png"),
                     "--model", "espcn-x2", "--half", "--precision", precision]) == 2
    one_error_line(capsys, "--half", f"--precision {precision}", "give one")
    assert not (tmp_path / "o.png").exists()


def test_one_input_named_twice_writes_the_file_named(tmp_path, capsys, monkeypatch):
    """Before: `image a.png ./a.png -o out.png` was refused with "1 images need a folder"."""
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "a.png")
    assert cli.main(["image", "a.png", "./a.png", str(tmp_path / "a.png"), "-o", "out.png",
                     "--model", "bicubic"]) == 0
    assert Image.open(tmp_path / "out.png").size == (16, 16)
    assert "1 written" in capsys.readouterr().err


@pytest.mark.parametrize("output, fmt, needle", [
    ("m.xml", "onnx", "add --format openvino"),
    ("m.onnx", "openvino", "add --format onnx"),
    ("m.pt", "onnx", "name a .onnx file"),
])
def test_export_output_of_another_kind_says_which_format(output, fmt, needle, tmp_path, capsys, no_model):
    """Before: "--format onnx writes a .onnx file, not m.xml", after the model loaded."""
    assert cli.main(["export", "espcn-x2", "--format", fmt, "-o", str(tmp_path / output)]) == 2
    one_error_line(capsys, needle)
    assert not list(tmp_path.iterdir())


def test_export_to_an_existing_output_is_refused_before_the_model_loads(tmp_path, capsys, no_model):
    """Before: "m.onnx exists; pass --overwrite" after the model's load."""
    (tmp_path / "m.onnx").write_bytes(b"kept")
    assert cli.main(["export", "espcn-x2", "-o", str(tmp_path / "m.onnx")]) == 2
    one_error_line(capsys, "exists", "--overwrite")
    assert (tmp_path / "m.onnx").read_bytes() == b"kept"


def test_interpolate_a_mistyped_model_name_suggests_the_close_one(tmp_path, capsys, monkeypatch):
    """Before: "checkpoint not found: espnc-x2", as if a file were meant."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["interpolate", "espcn-x2", "espnc-x2", "--alpha", "0.5", "-o", "i.safetensors"]) == 2
    one_error_line(capsys, "unknown model 'espnc-x2'", "did you mean espcn-x2", "checkpoint file")
    assert not list(tmp_path.iterdir())


def test_interpolate_a_missing_checkpoint_path_is_still_not_found(tmp_path, capsys):
    out = tmp_path / "i.safetensors"
    assert cli.main(["interpolate", "espcn-x2", str(tmp_path / "b.safetensors"), "--alpha", "0.5",
                     "-o", str(out)]) == 2
    one_error_line(capsys, "not found", "b.safetensors")
    assert not out.exists()


@pytest.mark.parametrize("argv, needle", [
    ([], "give --model MODEL"),
    (["--model", "bicubic", "--train", "espcn-x2"], "give one of them"),
])
def test_bench_without_a_model_says_so_before_importing_torch(argv, needle, capsys, monkeypatch):
    """Before: 20 s of imports on a busy CPU, then "upsample bench: error: bench: give --model"."""
    import sys
    monkeypatch.setitem(sys.modules, "upsample.evaluation.bench", None)  # importing it fails the test
    assert cli.main(["bench", *argv]) == 2
    err = one_error_line(capsys, needle)
    assert "bench: bench:" not in err.replace("error: ", "")


@pytest.mark.parametrize("sigma", ["inf", "nan", "0", "-1", "x"])
def test_eval_sigma_is_checked_while_parsing(sigma, tmp_path, capsys):
    """Before: --sigma inf passed the check (`> 0`) and failed inside the blur."""
    _parse_error(["eval", "--data", str(tmp_path), "--degrade", "gaussian", f"--sigma={sigma}"], capsys,
                 "argument --sigma", "expected a blur > 0")


def test_eval_gaussian_without_sigma_says_so_before_the_evaluation_loads(tmp_path, capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "upsample.evaluation.evaluate", None)  # importing it fails the test
    _png(tmp_path / "hr" / "a.png", 16)
    assert cli.main(["eval", "--data", str(tmp_path / "hr"), "--degrade", "gaussian"]) == 2
    one_error_line(capsys, "--degrade gaussian needs --sigma")


def test_eval_sigma_without_gaussian_says_so_before_the_evaluation_loads(tmp_path, capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "upsample.evaluation.evaluate", None)
    _png(tmp_path / "hr" / "a.png", 16)
    assert cli.main(["eval", "--data", str(tmp_path / "hr"), "--sigma", "1"]) == 2
    one_error_line(capsys, "--sigma is the blur of --degrade gaussian")


@pytest.mark.parametrize("output, ext", [("o.png", "jpg"), ("o.jpeg", "webp")])
def test_ext_against_an_output_file_of_another_format(output, ext, tmp_path, capsys, no_model):
    """Before: `-o o.png --ext jpg` wrote a PNG without a word."""
    argv = ["image", str(_png(tmp_path / "a.png")), "-o", str(tmp_path / output), "--model", "bicubic",
            "--scale", "2", *(["--ext", ext] if ext else [])]
    assert cli.main(argv) == 2
    one_error_line(capsys, f"--ext is {ext}", "leave --ext out")
    assert not (tmp_path / output).exists()


@pytest.mark.parametrize("output, ext", [("o.jpeg", "jpg"), ("o.png", "same"), ("o.webp", None)])
def test_ext_that_agrees_with_the_output_file_is_written(output, ext, tmp_path):
    argv = ["image", str(_png(tmp_path / "a.png")), "-o", str(tmp_path / output), "--model", "bicubic",
            *(["--ext", ext] if ext else [])]
    assert cli.main(argv) == 0
    assert Image.open(tmp_path / output).format == {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[output[2:]]


def test_train_init_with_a_mistyped_name_suggests_the_close_one(tmp_path, capsys, monkeypatch):
    """Before: "checkpoint not found: espnc-x2", after the recipe and the training images were read."""
    import sys
    monkeypatch.setitem(sys.modules, "upsample.training.loop", None)  # importing it fails the test
    recipe = Path(__file__).resolve().parents[1] / "configs" / "tiny.toml"
    run = tmp_path / "run"
    assert cli.main(["train", str(recipe), "--run-dir", str(run), "--init", "espnc-x2"]) == 2
    one_error_line(capsys, "unknown model 'espnc-x2'", "did you mean espcn-x2", "checkpoint file")
    assert not run.exists()


@pytest.mark.parametrize("arg", ["espcn-x2", "dir/espnc-x2", "espnc-x2.pth"])
def test_a_name_or_a_path_is_left_to_the_loader(arg, tmp_path, monkeypatch):
    """A registered name, or anything with a folder or an extension (a checkpoint path): no refusal here."""
    from upsample.cli import options
    monkeypatch.chdir(tmp_path)
    options.check_name_or_file(arg)
    (tmp_path / "espnc-x3").write_bytes(b"")  # a file of that name: the loader's to read
    options.check_name_or_file("espnc-x3")


@pytest.mark.parametrize("argv", [
    ["train", ""], ["export", ""], ["interpolate", "", "espcn-x2", "--alpha", "0"],
    ["image", "a.png", "-o", "o", "--model", ""], ["eval", "--data", "d", "--model", ""], ["bench", "--model", ""],
])
def test_an_empty_model_or_recipe_is_an_unset_variable(argv, capsys):
    """Before: ". is a folder, not a checkpoint file" (an empty path is the current folder)."""
    _parse_error(argv, capsys, "an empty path (an unset shell variable?)")

"""Follow-ups of session 11's fuzzing reviews, fixed below the CLI (where a review found them
through it): bicubic on a device torch lacks, absurd or empty counts."""
from __future__ import annotations

import pytest

from upsample.errors import UserError
from upsample.inference.load import load_upscaler
from upsample.inference.sizes import MAX_COUNT, parse_count


@pytest.mark.parametrize("device", ["abc", "GPU", "NPU.3", ""])
def test_bicubic_on_a_device_that_is_not_here_is_one_error_from_the_api(device):
    with pytest.raises(UserError, match="device"):
        load_upscaler("bicubic", scale=2, device=device)


@pytest.mark.parametrize("device", ["cpu", "CPU", "AUTO:CPU"])
def test_bicubic_on_the_cpu_by_any_of_its_names_runs(device):
    up = load_upscaler("bicubic", scale=2, device=device)
    assert up.device.type == "cpu"


@pytest.mark.parametrize("text,words", [("", "got ''"), (str(MAX_COUNT + 1), "more than"),
                                        ("9" * 30, "more than"), ("0", "got '0'")])
def test_counts_that_are_empty_zero_or_absurd_are_refused_by_name(text, words):
    with pytest.raises(UserError, match=words):
        parse_count(text, "--batch")
    assert parse_count(str(MAX_COUNT), "--batch") == MAX_COUNT


@pytest.mark.parametrize("argv", [["export", "{d}/nope.onnx", "-o", "{d}/x.onnx"],
                                  ["image", "{d}/a.png", "-o", "{d}/b.png", "--model", "{d}/nope.xml"]])
def test_a_missing_graph_file_is_said_missing_not_an_unknown_model(tmp_path, capsys, argv):
    from PIL import Image

    from upsample.cli import main
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert main([a.format(d=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "model file not found" in err and "unknown model" not in err


def test_make_clip_refuses_a_bad_size_without_importing_torch(tmp_path):
    """make-clip said a bad --size after importing torch (3-16 s); its resize is numpy's now."""
    import subprocess
    import sys
    from PIL import Image
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    probe = ("import sys\nfrom upsample.cli import main\nrc = main(sys.argv[1:])\n"
             "print(rc, 'torch' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", probe, "make-clip", str(tmp_path / "a.png"), "-o",
                          str(tmp_path / "c.mkv"), "--size", "5x5"], capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["2", "False"], run.stderr[-500:]
    assert "even" in run.stderr

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


def test_data_check_of_hidden_files_only_says_they_were_left_out(tmp_path, capsys):
    from PIL import Image

    from upsample.cli import main
    Image.new("RGB", (8, 8)).save(tmp_path / "._a.png")
    (tmp_path / ".DS_Store").write_bytes(b"\0" * 8)
    assert main(["data", "check", str(tmp_path)]) == 2
    assert "hidden files" in capsys.readouterr().err


def test_training_names_how_to_find_the_images_too_small_for_the_patch(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from upsample.cli import main
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), np.uint8)).save(tmp_path / f"big{i}.png")
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), np.uint8)).save(tmp_path / "tiny.png")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[model]\nname = "espcn-x2"\n[data]\ntrain = ["{tmp_path.as_posix()}"]\n'
                      'patch_size = 32\nbatch_size = 2\nworkers = 0\nval_fraction = 0\n[val]\nevery = 0\n'
                      '[train]\nsteps = 2\nthreads = 1\n')
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "1 training images are smaller than the patch (32x32 px)" in err and "--min-size 32" in err, err

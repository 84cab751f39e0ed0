"""What session 15's reviews met: training on their own folder (an adversarial stage from random
weights said nothing; eval of a blur-trained model on bicubic LR gave no hint; `data split` listed
unreadable files for training to stop at; "1 files" in notes), and the runtimes (a 16-bit picture
through a uint8 graph lost its low bits without a word; `--tile 1` ran at 8 pixels a second)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from upsample import cli

ROOT = Path(__file__).resolve().parents[1]


def test_an_adversarial_stage_from_random_weights_says_so(tmp_path, capsys):
    t91 = ROOT.parent / "shared" / "datasets" / "train" / "T91"
    data = t91 if t91.is_dir() else _pictures(tmp_path / "train", n=6, side=136)
    sets = [f"data.train=[{json.dumps(str(data))}]", "data.max_images=4", "train.steps=1", "val.every=0"]
    args = ["train", str(ROOT / "configs" / "esrgan-tiny.toml"), "--device", "cpu"]
    assert cli.main(args + ["--run-dir", str(tmp_path / "gan")] + [a for s in sets for a in ("--set", s)]) == 0
    err = capsys.readouterr().err
    assert "starts from random weights" in err and "--init" in err
    args = ["train", str(ROOT / "configs" / "tiny.toml"), "--device", "cpu"]  # no discriminator: no note
    assert cli.main(args + ["--run-dir", str(tmp_path / "psnr")] + [a for s in sets for a in ("--set", s)]) == 0
    assert "random weights" not in capsys.readouterr().err


def _pictures(folder: Path, n=2, side=64):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        y, x = np.mgrid[0:side, 0:side]
        arr = np.stack([(x * 4 + i * 30) % 256, (y * 4) % 256, ((x + y) * 2) % 256], -1).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"p{i}.png")
    return folder


def test_eval_of_a_blur_trained_model_on_bicubic_lr_names_the_flags_of_its_own_lr(tmp_path, capsys):
    data = _pictures(tmp_path / "train", n=4)
    sets = [f"data.train=[{json.dumps(str(data))}]", "data.val_fraction=0", "data.batch_size=2",
            "train.steps=1", "val.every=0", "data.max_images=0"]
    run = tmp_path / "run"
    gaussian = ["degrade.kind=\"gaussian\"", "degrade.blur_sigma=[0.8, 1.2]"]
    args = ["train", str(ROOT / "configs" / "tiny.toml"), "--run-dir", str(run), "--device", "cpu"]
    assert cli.main(args + [a for s in sets + gaussian for a in ("--set", s)]) == 0
    capsys.readouterr()
    bench = _pictures(tmp_path / "bench", n=1)
    assert cli.main(["eval", "--model", str(run / "last.safetensors"), "--data", str(bench)]) == 0
    err = capsys.readouterr().err
    assert "trained on Gaussian-blurred LR" in err and "--degrade gaussian" in err and "[0.8, 1.2]" in err
    assert cli.main(["eval", "--model", str(run / "last.safetensors"), "--data", str(bench),
                     "--degrade", "gaussian", "--sigma", "1"]) == 0
    assert "trained on" not in capsys.readouterr().err
    assert cli.main(["eval", "--model", "espcn-x2", "--data", str(bench)]) == 0  # bicubic-trained
    assert "trained on" not in capsys.readouterr().err


def test_split_leaves_out_unreadable_files_and_notes_say_one_file(tmp_path, capsys):
    folder = _pictures(tmp_path / "f", n=3)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "Thumbs.db").write_bytes(b"x")
    assert cli.main(["data", "split", str(folder), "--val", "0.3", "-o", str(tmp_path / "lists")]) == 0
    err = capsys.readouterr().err
    assert "leaving out 1 file that training cannot read, e.g. broken.jpg (it cannot be read as an image)" in err
    assert "1 file of" in err and "1 files" not in err
    listed = (tmp_path / "lists" / "train.txt").read_text() + (tmp_path / "lists" / "val.txt").read_text()
    assert "broken.jpg" not in listed and listed.count(".png") == 3
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"\x89PNG broken")
    assert cli.main(["data", "split", str(bad), "-o", str(tmp_path / "none")]) == 2
    assert "no readable images in" in capsys.readouterr().err


def test_a_16_bit_picture_through_a_uint8_graph_is_noted_and_tiny_tiles_are_refused(tmp_path, capsys):
    assert cli.main(["export", "espcn-x2", "--uint8-io", "-o", str(tmp_path / "u8.onnx")]) == 0
    levels = np.random.default_rng(0).integers(0, 65536, (12, 10)).astype(np.uint16)
    Image.fromarray(levels).save(tmp_path / "g16.png")
    capsys.readouterr()
    assert cli.main(["image", str(tmp_path / "g16.png"), "-o", str(tmp_path / "o.png"), "--model",
                     str(tmp_path / "u8.onnx"), "--backend", "onnxruntime"]) == 0
    assert "uint8 graph: the output keeps 8 bits" in capsys.readouterr().err
    assert cli.main(["image", str(tmp_path / "g16.png"), "-o", str(tmp_path / "p.png"), "--model",
                     "espcn-x2", "--backend", "onnxruntime"]) == 0
    assert "8 bits" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["image", str(tmp_path / "g16.png"), "-o", str(tmp_path / "t.png"), "--tile", "1"])
    assert exc.value.code == 2
    assert "at least 16" in capsys.readouterr().err and not (tmp_path / "t.png").exists()

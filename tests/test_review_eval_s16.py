"""`upsample eval` review (session 16): folders and sizes refused before any folder is evaluated,
a note where an image's infinite PSNR makes its set's mean inf, and --save's refusal naming what
the folder holds."""

import numpy as np
from PIL import Image

from upsample.cli import main
from upsample.evaluation import evaluate


def _noise(path, size, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _no_evaluation(monkeypatch):
    def evaluated(*args, **kwargs):
        raise AssertionError("a folder was evaluated before the refusal")
    monkeypatch.setattr(evaluate, "evaluate_folder", evaluated)


def test_empty_folder_refused_before_the_folders_before_it(tmp_path, capsys, monkeypatch):
    """Before: `--data Set14 empty` evaluated Set14, then said "no images in empty"."""
    _noise(tmp_path / "good" / "a.png", (32, 32))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    _no_evaluation(monkeypatch)
    assert main(["eval", "--scale", "2", "--data", str(tmp_path / "good"), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "error: no images in" in err and "notes.txt" in err  # its note still says what was skipped


def test_blur_wider_than_an_image_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """Before: the blur's ValueError came when the small image was reached, after the others."""
    _noise(tmp_path / "d" / "a_big.png", (96, 96))
    _noise(tmp_path / "d" / "z_small.png", (24, 24), seed=1)
    _no_evaluation(monkeypatch)
    assert main(["eval", "--scale", "2", "--degrade", "gaussian", "--sigma", "8",
                 "--data", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "z_small.png" in err and "--sigma 8" in err


def test_blur_limit_matches_the_blur_itself(tmp_path):
    """The check's edge is gaussian_blur's own: the largest sigma it accepts still runs."""
    _noise(tmp_path / "d" / "a.png", (24, 24))
    r = evaluate.evaluate_model("bicubic", [str(tmp_path / "d")], scale=2, degrade="gaussian",
                                sigma=23 / 3, progress=False)  # reach ceil(23) = 23 < 24
    assert np.isfinite(r["datasets"]["d"]["psnr"])


def test_infinite_psnr_is_noted(tmp_path, capsys):
    data = tmp_path / "d"
    _noise(data / "a.png", (32, 32))
    Image.new("RGB", (32, 32), (120, 30, 200)).save(data / "flat.png")  # bicubic down-up: exact
    assert main(["eval", "--scale", "2", "--data", str(data)]) == 0
    err = capsys.readouterr().err
    assert "1 output equals its HR (flat.png" in err and "finite mean" in err


def test_save_into_folder_with_other_files_says_what_it_holds(tmp_path, capsys):
    _noise(tmp_path / "d" / "a.png", (32, 32))
    (tmp_path / "out" / "d").mkdir(parents=True)
    (tmp_path / "out" / "d" / "mine.txt").write_text("keep")
    assert main(["eval", "--scale", "2", "--data", str(tmp_path / "d"), "--save", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "mine.txt" in err and "--overwrite" in err and "pictures saved before;" not in err
    assert main(["eval", "--scale", "2", "--data", str(tmp_path / "d"), "--save", str(tmp_path / "out"),
                 "--overwrite"]) == 0
    assert (tmp_path / "out" / "d" / "mine.txt").read_text() == "keep"
    assert (tmp_path / "out" / "d" / "a.png").exists() and (tmp_path / "out" / "d" / "a_sbs.png").exists()


def test_report_says_what_ran_and_marks_random_weights(tmp_path, monkeypatch):
    """The JSON kept no trace of the runtime and precision (auto's choice differs between
    machines), nor of an --allow-untrained run's random weights."""
    _noise(tmp_path / "d" / "a.png", (48, 48))
    r = evaluate.evaluate_model("bicubic", [str(tmp_path / "d")], scale=2, progress=False)
    assert (r["runtime"], r["precision"], "untrained" in r) == ("torch", "fp32", False)
    r = evaluate.evaluate_model("bicubic", [str(tmp_path / "d")], scale=2, protocol="catid", progress=False)
    assert (r["runtime"], r["precision"]) == ("pillow", "uint8")
    monkeypatch.setattr(evaluate, "is_untrained", lambda spec: spec == "espcn-x2")
    r = evaluate.evaluate_model("espcn-x2", [str(tmp_path / "d")], backend="torch", progress=False)
    assert (r["runtime"], r["precision"], r.get("untrained")) == ("torch", "fp32", True)

"""`upsample train --resume` on a folder whose images changed since the run was saved (review
s14): it went on silently with other images, its validation set replaced and the PSNRs before
and after compared as if of one set."""

from __future__ import annotations

import json
from pathlib import Path

from photos import smooth_photos

from upsample import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.toml")


def _train(run, folder, capsys, *extra, steps=2) -> str:
    args = ["train", TINY, "--run-dir", str(run), "--device", "cpu", *extra,
            "--set", f"data.train=[{json.dumps(str(folder))}]", "--set", "data.batch_size=2",
            "--set", "val.crop=32", "--set", "data.val_fraction=0.3", "--set", f"train.steps={steps}"]
    capsys.readouterr()
    assert cli.main(args) == 0
    return capsys.readouterr().err


def test_a_resume_on_changed_images_says_so_and_one_on_the_same_images_does_not(tmp_path, capsys):
    folder = smooth_photos(tmp_path / "photos", n=8, side=48)
    run = tmp_path / "run"
    _train(run, folder, capsys)
    assert "images of this run changed" not in _train(run, folder, capsys, "--resume", steps=3)
    (folder / "p3.png").unlink()
    err = _train(run, folder, capsys, "--resume", steps=4)
    assert "note: the images of this run changed since it was saved" in err and "no exact resume" in err
    # the state now records the images it goes on with: the next resume is quiet again
    assert "images of this run changed" not in _train(run, folder, capsys, "--resume", steps=5)


def test_every_command_that_reads_images_takes_max_pixels(tmp_path, capsys, monkeypatch):
    """The decompression-bomb refusal said "raise it with --max-pixels", which only `image` took:
    a panorama or scan over 179 Mpx could not be trained on, checked or evaluated."""
    from PIL import Image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # process-wide: restored after
    folder = smooth_photos(tmp_path / "photos", n=6, side=48)  # 2304 pixels each
    commands = {
        "data check": ["data", "check", str(folder)],
        "data prepare": ["data", "prepare", str(folder), "-o", str(tmp_path / "crops"), "--size", "32"],
        "eval": ["eval", "--model", "bicubic", "--scale", "2", "--data", str(folder)],
        "train": ["train", TINY, "--run-dir", str(tmp_path / "run"), "--device", "cpu",
                  "--set", f"data.train=[{json.dumps(str(folder))}]", "--set", "train.steps=1",
                  "--set", "data.batch_size=2", "--set", "val.crop=32"],
    }
    for what, args in commands.items():
        capsys.readouterr()
        cli.main([*args, "--max-pixels", "2000"])
        said = "".join(capsys.readouterr())  # data check reports on stdout
        assert "is too large" in said and "--max-pixels" in said and "Traceback" not in said, (what, said)
        assert cli.main([*args, "--max-pixels", "0"]) in (0, 1), what  # data check: 1 for its notes
        assert "is too large" not in "".join(capsys.readouterr()), what


def test_data_split_writes_neither_list_when_a_name_fits_no_line(tmp_path, capsys):
    """train.txt was written, then val.txt failed on a name with a line break: a rerun after the
    rename said "train.txt exists with other contents"."""
    folder = smooth_photos(tmp_path / "photos", n=8, side=32)
    for i in range(4):  # some of them land in each list
        (folder / f"p{i}.png").rename(folder / f"new\nline{i}.png")
    assert cli.main(["data", "split", str(folder), "-o", str(tmp_path / "lists")]) == 2
    assert "line break" in capsys.readouterr().err
    assert not (tmp_path / "lists" / "train.txt").exists() and not (tmp_path / "lists" / "val.txt").exists()


def test_eval_measures_a_file_and_a_link_to_it_once(tmp_path, capsys):
    folder = smooth_photos(tmp_path / "photos", n=2, side=48)
    (folder / "again.png").symlink_to("p0.png")
    out = tmp_path / "eval.json"
    assert cli.main(["eval", "--model", "bicubic", "--scale", "2", "--data", str(folder), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["datasets"]["photos"]["n"] == 2


def test_the_first_line_says_how_many_held_out_images_are_validated(tmp_path, capsys):
    """One 300-frame video: "285 images (2 for validation)" hid 13 held-out frames used by nothing."""
    folder = smooth_photos(tmp_path / "photos", n=8, side=48)
    err = _train(tmp_path / "run", folder, capsys, "--set", "val.max_images=1", steps=1)
    assert "1 of the 2 held out validated: val.max_images" in err, err

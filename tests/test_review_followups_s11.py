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


def _untagged_clip(path, w, h, frames=3):
    import av
    import numpy as np
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for _ in range(frames):
            a = np.zeros((h, w, 3), np.uint8)
            a[:] = (200, 30, 90)
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _tags(path):
    import av
    with av.open(str(path)) as c:
        cc = c.streams.video[0].codec_context
        return cc.colorspace, cc.color_primaries


@pytest.mark.parametrize("size, matrix", [((640, 360), 6), ((320, 288), 2)])
def test_an_untagged_sd_video_upscaled_to_hd_is_tagged_with_the_matrix_it_was_made_for(tmp_path, size, matrix):
    """Players take untagged HD as BT.709 and untagged SD as BT.601: an untagged 640x360 clip
    upscaled to 1280x720 was shown with other colours than its source ((200, 30, 90) as
    (214, 50, 90)); it is now tagged BT.601 (SMPTE 170M), the matrix its pixels were made with.
    An upscale that stays SD (320x288 -> 640x576) keeps its tags as they were."""
    from upsample.cli import main
    src = _untagged_clip(tmp_path / "sd.mp4", *size)
    assert _tags(src)[0] == 2  # unspecified
    assert main(["video", str(src), "-o", str(tmp_path / "up.mp4"), "--model", "bicubic", "--scale", "2"]) == 0
    assert _tags(tmp_path / "up.mp4")[0] == matrix


def test_guessed_tags_follow_the_players_rule():
    from upsample.media.video import guessed_tags, implied_tags

    class Untagged:
        colorspace, color_primaries = 2, 2
    assert guessed_tags(720, 576) == {"colorspace": 5, "color_primaries": 5}
    assert guessed_tags(720, 480) == {"colorspace": 6, "color_primaries": 6}
    assert guessed_tags(1280, 720) == {"colorspace": 1, "color_primaries": 1}
    assert implied_tags(Untagged, (720, 576), (2880, 2304)) == {"colorspace": 5, "color_primaries": 5}
    assert implied_tags(Untagged, (1280, 720), (2560, 1440)) == {}

    class Tagged:
        colorspace, color_primaries = 6, 6
    assert implied_tags(Tagged, (720, 480), (1440, 960)) == {}


@pytest.mark.parametrize("mode, key", [("RGB", b"\x00\x01"), ("RGB", (1, 2)), ("L", None), ("P", 300), ("P", (1, 2))])
def test_a_colour_key_that_is_no_colour_of_the_mode_is_one_value_error(mode, key):
    from PIL import Image

    import upsample
    img = Image.new(mode, (4, 4))
    img.info["transparency"] = key
    with pytest.raises(ValueError, match="transparent colour key"):
        upsample.load("bicubic", 2, backend="torch").upscale(img)


def test_a_32_bit_picture_out_of_16_bit_range_says_what_to_do():
    import numpy as np
    from PIL import Image

    import upsample
    with pytest.raises(ValueError, match="16-bit PNG or TIFF"):
        upsample.load("bicubic", 2, backend="torch").upscale(Image.fromarray(np.full((4, 4), -5, np.int32), "I"))


def test_an_lr_made_from_a_rotated_hrs_stored_pixels_is_said_to_be_turned(tmp_path, capsys):
    """MATLAB or Pillow make an LR of the stored (unturned) pixels of a phone's photo: eval, which
    reads the HR upright, says why the sizes differ."""
    from PIL import Image

    from upsample.cli import main
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    hr_dir.mkdir()
    lr_dir.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (160, 120), (90, 30, 200)).save(hr_dir / "p.jpg", exif=exif.tobytes())
    Image.new("RGB", (80, 60)).save(lr_dir / "p.png")  # Image.open(hr).resize((80, 60)): stored pixels
    assert main(["eval", "--model", "bicubic", "--scale", "2", "--data", str(hr_dir), "--lr", str(lr_dir)]) == 2
    assert "EXIF orientation" in capsys.readouterr().err


def test_damage_notes_of_threads_name_their_own_file(tmp_path, monkeypatch, capsys):
    """`image --jobs N` reads in threads: a warning recorded for one file was put on another's
    note, and the warnings machinery could be left writing into a dead list."""
    import threading
    import warnings

    from PIL import Image

    from upsample.media import imageio
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.new("RGB", (8, 8)).save(good)
    Image.new("RGB", (8, 8)).save(bad)
    real = Image.open

    def warning_open(fp, *args, **kwargs):
        if str(fp).endswith("bad.png"):
            warnings.warn("Truncated File Read")
        return real(fp, *args, **kwargs)
    monkeypatch.setattr(imageio.Image, "open", warning_open)

    def read(path):
        for _ in range(60):
            imageio.open_image(path)
    threads = [threading.Thread(target=read, args=(p,)) for p in (good, bad)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == 60 and all("bad.png" in n for n in notes)
    with pytest.warns(UserWarning, match="still shown"):
        warnings.warn("still shown")


def test_a_switch_written_0_or_1_is_taken_as_the_constructor_takes_it():
    from upsample.models import registry
    registry.check_kwargs("vapsr", {"signed_io": 0, "plain_3x3": 1})
    with pytest.raises(UserError, match="signed_io must be bool"):
        registry.check_kwargs("vapsr", {"signed_io": 2})


def test_building_a_store_removes_the_older_formats_of_the_same_images(tmp_path):
    import numpy as np
    from PIL import Image

    from upsample.data import store
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    root = tmp_path / "stores"
    root.mkdir()
    stem = store.store_name([img]).rsplit("-v", 1)[0]
    old = [root / f"{stem}-v1.u8", root / f"{stem}-v1.json"]
    other = root / "0123456789abcdef0123-v1.u8"  # another image set's: kept
    for p in (*old, other):
        p.write_bytes(b"old")
    _, built = store.open_store([img], root)
    assert built and not any(p.exists() for p in old) and other.exists()


def test_the_old_out_spelling_refuses_dash_too():
    from upsample.cli import main
    with pytest.raises(SystemExit) as exc:
        main(["data", "split", ".", "--out", "-"])
    assert exc.value.code == 2


@pytest.mark.parametrize("scale", [[2], (2,), {"x": 2}])
def test_a_scale_that_is_no_number_is_a_type_error(scale):
    import upsample
    with pytest.raises(TypeError, match="scale must be a number"):
        upsample.load("bicubic", scale)

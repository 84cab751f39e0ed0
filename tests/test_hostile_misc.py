"""More hostile inputs: sizes and thread counts past what the machine holds, files that are not
recipes, unreadable inputs, folders where files are expected, a cache part that is a link, and
the wording of refusals (one line, naming the bad value and what to do).

Unreadable files are simulated with a patched `open` (the tests may run as root, whom a mode of
000 does not stop)."""

from __future__ import annotations

import json
import os
import signal
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli_checks import one_error_line as _one_error_line
from upsample import cli
from upsample.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _png(path: Path, side: int = 16) -> Path:
    Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(path)
    return path


# ------------------------------------------------------------------ 1: bench --size past memory

def test_bench_a_frame_size_past_free_memory_is_refused_before_allocating(capsys):
    assert cli.main(["bench", "--model", "bicubic", "--scale", "2", "--backend", "torch",
                     "--size", "100000x100000"]) == 2
    _one_error_line(capsys, "--size 100000x100000", "use a smaller --size")


def test_bench_an_allocation_failure_while_timing_is_one_line(capsys, monkeypatch):
    from upsample.evaluation import bench as bench_mod

    def fail(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    monkeypatch.setattr(bench_mod, "bench", fail)
    assert cli.main(["bench", "--model", "bicubic", "--scale", "2", "--backend", "torch", "--size", "64x64"]) == 2
    _one_error_line(capsys, "out of memory", "use a smaller --size")


# ------------------------------------------------------------------ 2 and 6: recipes that cannot be read

@pytest.mark.parametrize("argv", [["train", "{}"], ["bench", "--train", "{}"], ["tune", "{}", "--trials", "1"]])
def test_a_binary_file_as_recipe_is_one_line(tmp_path, capsys, argv):
    png = _png(tmp_path / "some.png")
    png.write_bytes(png.read_bytes() + bytes(range(128, 256)))  # bytes no UTF-8 text holds
    assert cli.main([a.format(png) for a in argv]) == 2
    _one_error_line(capsys, f"cannot read recipe {png}: not a TOML text file")


@pytest.mark.parametrize("argv", [["bench", "--train", "{}"], ["tune", "{}", "--trials", "1"]])
def test_an_unreadable_recipe_is_an_input_error(tmp_path, capsys, monkeypatch, argv):
    from upsample.training import config as config_mod
    recipe = tmp_path / "unread.toml"
    recipe.write_text((ROOT / "configs" / "tiny.toml").read_text())

    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(config_mod, "open", denied, raising=False)
    assert cli.main([a.format(recipe) for a in argv]) == 2
    err = _one_error_line(capsys, f"cannot read recipe {recipe}: permission denied")
    assert "output location" not in err


def test_the_generic_file_system_error_names_no_output_when_it_may_be_an_input(capsys, monkeypatch):
    from upsample.cli import cache as cache_cli

    def denied(args):
        raise PermissionError(13, "Permission denied", "/data/in.png")
    monkeypatch.setattr(cache_cli, "run", denied)
    assert cli.main(["cache", "info"]) == 1
    err = _one_error_line(capsys, "Permission denied (/data/in.png)", "an input must be readable")
    assert "check the output location" not in err


# ------------------------------------------------------------------ 3: --threads bounds

@pytest.mark.parametrize("argv", [["bench", "--model", "bicubic"], ["image", "x.png", "-o", "y.png"],
                                  ["eval", "--data", "x"]])
def test_threads_past_the_machine_are_refused_while_parsing(capsys, argv):
    with pytest.raises(SystemExit) as stop:
        cli.main([*argv, "--threads", "100000"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "100000 threads is more than this machine can use" in err and "Traceback" not in err


def test_jobs_and_codec_study_threads_past_the_machine_are_refused(tmp_path, capsys):
    """codec-study --threads 100000 crashed (a segfault: no thread could start); --jobs likewise."""
    for argv, said in ((["codec-study", str(tmp_path), "--codecs", "jpeg", "-o", str(tmp_path / "o"),
                         "--threads", "100000"], "100000 threads is more than"),
                       (["image", str(tmp_path), "-o", str(tmp_path / "o"), "--jobs", "100000"],
                        "100000 images at once is more than")):
        with pytest.raises(SystemExit) as stop:
            cli.main(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and said in err and "Traceback" not in err


def test_thread_count_types():
    import argparse

    from upsample.cli.options import thread_count, thread_count_or_default, thread_limit
    assert thread_count("1") == 1 and thread_count(str(thread_limit())) == thread_limit()
    assert thread_count_or_default("0") == 0 and thread_limit() <= 1024
    for bad in ("0", "-3", "x", str(thread_limit() + 1), "5000"):
        with pytest.raises(argparse.ArgumentTypeError):
            thread_count(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        thread_count_or_default("100000")


# ------------------------------------------------------------------ 4: tune -o

def _fake_trials(monkeypatch) -> list:
    """loop.train replaced: records its calls (each a complete trial after one validation)."""
    from upsample.training import loop as train_mod
    calls = []

    def fake_train(cfg, run_dir, **kw):
        calls.append(kw)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 3, "val_psnr": 20.0 + len(calls)}) + "\n")
        kw["on_validate"](3, 20.0 + len(calls))
        return 0
    monkeypatch.setattr(train_mod, "train", fake_train)
    return calls


def _tune(tmp_path, *extra):
    return cli.main(["tune", str(ROOT / "configs" / "tiny.toml"), "--trials", "1", "--device", "cpu",
                     "--storage", f"sqlite:///{tmp_path / 'study.db'}", "--run-dir", str(tmp_path / "runs"),
                     *extra])


def test_tune_refuses_a_folder_or_unwritable_o_before_any_trial(tmp_path, capsys, monkeypatch):
    calls = _fake_trials(monkeypatch)
    folder = tmp_path / "out"
    folder.mkdir()
    assert _tune(tmp_path, "-o", str(folder), "--overwrite") == 2
    _one_error_line(capsys, f"-o {folder} is a folder")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _tune(tmp_path, "-o", str(blocker / "best.toml")) == 2
    _one_error_line(capsys, "is a file")
    assert calls == [] and not list(tmp_path.glob("*.part")) and not (tmp_path / "study.db").exists()


def test_tune_writes_the_best_config_atomically(tmp_path, capsys, monkeypatch):
    calls = _fake_trials(monkeypatch)
    out = tmp_path / "best" / "b.toml"
    assert _tune(tmp_path, "-o", str(out)) == 0
    assert len(calls) == 1 and out.read_text().startswith("# best of study 'tiny'")
    assert sorted(p.name for p in out.parent.iterdir()) == ["b.toml"]  # no temporary left
    # a stopped trial: the line says what continues the study (tune has no --resume)
    assert "--resume" not in calls[0]["continue_hint"] and "tune" in calls[0]["continue_hint"]


def test_a_stopped_run_says_the_hint_it_is_given(tmp_path):
    from upsample.training import loop
    logged = []
    cfg = types.SimpleNamespace(train=types.SimpleNamespace(steps=10), data=types.SimpleNamespace(batch_size=2))
    procs = types.SimpleNamespace(world=1, master=True, log=logged.append)
    state = types.SimpleNamespace(step=3, finished=None)
    stop = types.SimpleNamespace(signum=signal.SIGINT, timed_out=0)
    pace = types.SimpleNamespace(overall=lambda step, n: (1.0, 6.0))
    rc = loop.summarize(cfg, procs, state, stop, pace, last_loss=0.1, last_terms={}, run_dir=tmp_path,
                        max_minutes=None, continue_hint="rerun the study")
    assert rc == 128 + signal.SIGINT and logged[0].endswith("; rerun the study")


# ------------------------------------------------------------------ 5: bench --train MODEL from anywhere

def test_a_recipe_named_by_model_reads_its_data_relative_to_the_repo(tmp_path, monkeypatch):
    from upsample.training.bench import load_recipe
    monkeypatch.chdir(tmp_path)
    recipe, cfg = load_recipe("tiny", [])
    assert recipe.resolve() == (ROOT / "configs" / "tiny.toml").resolve()
    assert cfg.data.train == [os.path.normpath(ROOT / "../shared/datasets/train/T91")]
    # a recipe file keeps its paths relative to the current folder, as `train` reads them
    (tmp_path / "r.toml").write_text((ROOT / "configs" / "tiny.toml").read_text())
    assert load_recipe("r.toml", [])[1].data.train == ["../shared/datasets/train/T91"]


# ------------------------------------------------------------------ 7, 8: unreadable checkpoint, folder as image

def test_an_unreadable_checkpoint_says_it_cannot_be_read(monkeypatch):
    from upsample.models import checkpoint
    path = ROOT / "src" / "upsample" / "weights" / "espcn-x2.safetensors"

    def denied(p, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(p))
    monkeypatch.setattr(checkpoint, "open", denied, raising=False)
    with pytest.raises(UserError, match="cannot read checkpoint .*: permission denied") as exc:
        checkpoint.read_state(path)
    assert "corrupt" not in str(exc.value)


def test_bench_image_a_folder_says_it_is_a_folder(tmp_path, capsys):
    assert cli.main(["bench", "--model", "bicubic", "--scale", "2", "--backend", "torch", "--size", "32x32",
                     "--image", str(tmp_path)]) == 2
    err = _one_error_line(capsys, f"{tmp_path} is a folder, not an image file")
    assert "corrupt" not in err


# ------------------------------------------------------------------ 9: a cache part that is a link

def test_cache_clear_empties_a_linked_part_and_keeps_the_link(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))
    elsewhere = tmp_path / "other-disk"
    (elsewhere / "sub").mkdir(parents=True)
    (elsewhere / "a.xml").write_text("x")
    (elsewhere / "sub" / "b.bin").write_text("yy")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "export").symlink_to(elsewhere)
    assert cli.main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert "the link kept" in out and "(2 files" in out
    assert (tmp_path / "cache" / "export").is_symlink() and list(elsewhere.iterdir()) == []


# ------------------------------------------------------------------ 10: wording

def test_bench_calib_of_small_images_gives_advice_bench_can_follow(tmp_path):
    from upsample.evaluation.bench import make_cached_int8
    calib = tmp_path / "calib"
    calib.mkdir()
    _png(calib / "a.png", 32)  # under the 128x128 crops of 64-pixel LR at x2
    with pytest.raises(UserError, match="larger training images") as exc:
        make_cached_int8("espcn-x2", None, str(calib))
    assert "--size" not in str(exc.value)


@pytest.mark.parametrize("flags, message", [(["--warmup", "-1"], "--warmup must be >= 0, got -1"),
                                            (["--runs", "0"], "--runs")])
def test_bench_names_the_bad_count(capsys, flags, message):
    try:
        rc = cli.main(["bench", "--model", "bicubic", "--scale", "2", "--backend", "torch", *flags])
    except SystemExit as stop:  # --runs is refused while parsing
        rc = stop.code
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "--runs must be >= 1 and" not in err


def test_cache_all_goes_alone(capsys):
    assert cli.main(["cache", "clear", "all", "export"]) == 2
    _one_error_line(capsys, "`all` goes alone")


def test_a_bad_tune_storage_is_one_clean_line(tmp_path):
    from upsample.training import tune
    with pytest.raises(UserError) as exc:
        tune.open_study("s", f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}", 0)
    text = str(exc.value)
    assert "\n" not in text and "sqlalche.me" not in text and "unable to open database file" in text


def test_bench_table_columns_line_up_with_a_long_label():
    from upsample.evaluation.bench import format_report
    row = {"ms_per_frame": 1.0, "mpix_per_s": 2.0, "gflops": 3.0, "of_peak": 0.1, "speedup": 1.5,
           "max_abs_diff": 1e-3}
    report = {"model": "m", "scale": 2, "size": "8x8", "device": "cpu", "threads": 1, "gmacs_per_frame": 0.1,
              "peak_gflops": {"fp32": 10.0}, "runs": 1, "warmup": 1,
              "rows": [{"backend": "torch eager fp32", **row},
                       {"backend": "auto (openvino bf16-fp32-ends-long)", **row}]}
    header, *rows = format_report(report).splitlines()[1:]
    end = header.index("ms/frame") + len("ms/frame")  # the right edge of the column
    assert [row.index(" 1.0 ") + len(" 1.0") for row in rows] == [end, end]


def test_video_input_that_is_a_folder_or_unreadable_is_one_line(tmp_path, capsys, monkeypatch):
    """`upsample video FOLDER` and an unreadable clip were "not a video file, or it is damaged"."""
    import av
    (tmp_path / "clips").mkdir()
    assert cli.main(["video", str(tmp_path / "clips"), "-o", str(tmp_path / "o.mp4"), "--model", "bicubic",
                     "--scale", "2"]) != 0
    assert "is a folder, not a video file" in capsys.readouterr().err
    clip = tmp_path / "locked.mp4"
    clip.write_bytes(b"\0" * 64)

    def denied(path, *a, **k):
        raise av.error.PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(av, "open", denied)  # root reads every file
    assert cli.main(["video", str(clip), "-o", str(tmp_path / "o.mp4"), "--model", "bicubic", "--scale", "2"]) != 0
    err = capsys.readouterr().err
    assert f"cannot read {clip}: permission denied" in err and "damaged" not in err

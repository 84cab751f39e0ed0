"""`upsample data` tools and the on-the-fly training pairs."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upsample import cli
from upsample.data import pairs as data, prepare as prep
from upsample.evaluation import metrics
from upsample.errors import UserError
from upsample.data.degrade import make_lr


def _noise_image(h, w, seed=0, mode="RGB"):
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


def test_hash_split_is_deterministic_and_stable():
    keys = [f"img{i}.png" for i in range(200)]
    tr, val = data.hash_split(keys, 0.05, seed=1)
    assert len(val) == 10 and len(tr) == 190 and not set(tr) & set(val)
    assert data.hash_split(keys, 0.05, seed=1) == (tr, val)
    assert data.hash_split(keys, 0.05, seed=2)[1] != val
    # adding files moves no old validation file into training
    _, val2 = data.hash_split(keys + [f"new{i}.png" for i in range(20)], 0.05, seed=1)
    old_val = {keys[i] for i in val}
    moved = old_val - {(keys + [f"new{i}.png" for i in range(20)])[i] for i in val2}
    assert len(moved) <= 1  # only a boundary file may drop out as round(n * f) grows
    assert data.hash_split(keys[:1], 0.5, 0) == ([0], [])


def test_prepare_crops_resumes_and_refuses_other_settings(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    _noise_image(70, 50, 1).save(src / "a.png")           # 2 x 1 crops of 32 (+ edge rows)
    _noise_image(40, 40, 2).save(src / "sub" / "b.jpg")   # one crop + edge crops
    _noise_image(20, 40, 3).save(src / "small.webp")      # smaller than the crop: skipped
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "crops"
    assert cli.main(["data", "prepare", str(src), "--out", str(out), "--size", "32"]) == 0
    files = sorted(p.name for p in out.glob("*.png"))
    # a.png 50x70 (WxH): x positions 0, 18; y positions 0, 32, 38 -> 6 crops; b 40x40 -> 4 crops
    assert len(files) == 10 and "src__sub__b_s000.png" in files
    assert all(Image.open(out / f).size == (32, 32) for f in files)
    crop = np.asarray(Image.open(out / "src__a_s000.png"))
    assert np.array_equal(crop, np.asarray(Image.open(src / "a.png"))[:32, :32])
    assert "1 source smaller than 32" in capsys.readouterr().out
    # a second run redoes nothing; a removed crop of a finished source is not redone either
    (out / "src__a_s001.png").unlink()
    counts = prep.prepare([str(src)], str(out), size=32, progress=False)
    assert counts["written"] == 0 and counts["skipped_done"] == 3
    # an interrupted source (not in the manifest) is redone, its existing crops kept
    lines = (out / prep.MANIFEST).read_text().splitlines()
    (out / prep.MANIFEST).write_text("\n".join(l for l in lines if "a.png" not in l) + "\n")
    counts = prep.prepare([str(src)], str(out), size=32, progress=False)
    assert counts["written"] == 1 and counts["skipped_done"] == 2
    with pytest.raises(UserError, match="other settings"):
        prep.prepare([str(src)], str(out), size=16, progress=False)
    assert not list(out.glob("*.part"))


def test_prepare_video_every_k_frames(tmp_path):
    av = pytest.importorskip("av")
    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as c:
        st = c.add_stream("mpeg4", rate=10)
        st.width, st.height, st.pix_fmt = 48, 32, "yuv420p"
        for i in range(7):
            frame = av.VideoFrame.from_ndarray(np.asarray(_noise_image(32, 48, i)), format="rgb24")
            for pkt in st.encode(frame):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    out = tmp_path / "crops"
    counts = prep.prepare([str(video)], str(out), size=32, every=3, progress=False)
    names = sorted(p.name for p in out.glob("*.png"))
    assert counts["crops"] == 6  # frames 0, 3, 6; two crops (x = 0, 16) each
    assert names[0] == "clip_f000000_s000.png" and names[-1] == "clip_f000006_s001.png"


def _bad_folder(root: Path) -> None:
    root.mkdir()
    _noise_image(64, 64, 1).save(root / "a_good.png")
    _noise_image(64, 64, 1).save(root / "dup.png")
    _noise_image(64, 64, 2).save(root / "gray.png", format="PNG")
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(root / "gray_rgb.png")
    _noise_image(64, 64, 3).convert("CMYK").save(root / "cmyk.jpg")
    rgba = _noise_image(64, 64, 4).convert("RGBA")
    rgba.putpixel((0, 0), (1, 2, 3, 0))
    rgba.save(root / "alpha.png")
    _noise_image(64, 64, 5).convert("RGBA").save(root / "opaque_alpha.png")
    _noise_image(20, 64, 6).save(root / "small.png")
    _noise_image(64, 64, 7).save(root / "trunc.png")
    blob = (root / "trunc.png").read_bytes()
    (root / "trunc.png").write_bytes(blob[:len(blob) // 2])
    (root / "junk.jpg").write_bytes(b"this is not a jpeg")
    Image.open(root / "gray.png").convert("L").save(root / "gray.png")


def test_check_finds_each_kind_of_problem(tmp_path, capsys):
    root = tmp_path / "imgs"
    _bad_folder(root)
    rc = cli.main(["data", "check", str(root), "--min-size", "32"])
    out = capsys.readouterr().out
    assert rc == 1
    found = {(Path(line.split(": ")[0]).name, line.split(": ")[1]) for line in out.splitlines()[:-1]}
    assert found == {("dup.png", "duplicate"), ("gray.png", "grayscale"), ("gray_rgb.png", "grayscale"),
                     ("cmyk.jpg", "cmyk"), ("alpha.png", "alpha"), ("small.png", "too-small"),
                     ("trunc.png", "truncated"), ("junk.jpg", "unreadable")}
    assert out.splitlines()[-1].startswith("10 images, 8 with problems")


def test_clean_moves_offenders_and_deletes_nothing(tmp_path, capsys):
    root, q = tmp_path / "imgs", tmp_path / "quarantine"
    _bad_folder(root)
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    assert cli.main(["data", "clean", str(root), "--quarantine", str(q), "--min-size", "32",
                     "--keep", "grayscale"]) == 0
    left = {p.name for p in root.iterdir()}
    moved = {p.name for p in q.iterdir() if p.name != "QUARANTINE.tsv"}
    assert left == {"a_good.png", "opaque_alpha.png", "gray.png", "gray_rgb.png"}
    assert moved == {"dup.png", "cmyk.jpg", "alpha.png", "small.png", "trunc.png", "junk.jpg"}
    assert all((q / n).read_bytes() == before[n] for n in moved)
    assert "duplicate" in (q / "QUARANTINE.tsv").read_text()
    assert cli.main(["data", "check", str(root), "--min-size", "32"]) == 1  # the kept grays
    capsys.readouterr()


def test_split_writes_relative_lists(tmp_path, capsys):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(30):
        _noise_image(8, 8, i).save(root / f"{i:02d}.png")
    out = tmp_path / "lists"
    assert cli.main(["data", "split", str(root), "--val", "0.1", "--seed", "3", "--out", str(out)]) == 0
    tr, val = data.read_file_list(out / "train.txt"), data.read_file_list(out / "val.txt")
    assert len(val) == 3 and len(tr) == 27 and all(p.is_file() for p in tr + val)
    assert not (out / "val.txt").read_text().startswith("/")
    first = (out / "val.txt").read_text()
    cli.main(["data", "split", str(root), "--val", "0.1", "--seed", "3", "--out", str(out)])
    assert (out / "val.txt").read_text() == first
    deep = tmp_path / "new" / "a" / "b"  # folders not there yet are made ("cannot write" before)
    assert cli.main(["data", "split", str(root), "--val", "0.1", "--seed", "3", "--out", str(deep)]) == 0
    assert (deep / "val.txt").read_text() == first.replace("../imgs", "../../../imgs")
    (tmp_path / "afile").write_text("x")
    assert cli.main(["data", "split", str(root), "--val", "0.1", "--out", str(tmp_path / "afile" / "l")]) == 2
    assert "is a file" in capsys.readouterr().err
    # the training side of a config can use them; val_list files leave the training set
    t2, v2 = data.train_val_files([str(root)], str(out / "val.txt"), 0.0, 0)
    assert len(t2) == 27 and {p.resolve() for p in v2} == {p.resolve() for p in val}
    bench = tmp_path / "benchmark" / "Set5"
    bench.mkdir(parents=True)
    _noise_image(8, 8).save(bench / "x.png")
    with pytest.raises(UserError, match="benchmarks are for reporting only"):
        data.train_val_files([str(root), str(bench.parent)], "", 0.1, 0)
    capsys.readouterr()


def _spec(**kw):
    base = dict(patch=24, scales=[3], y_channel=False, pre_upsample=False, flip=False, rot90=False)
    return data.PairSpec(**{**base, **kw})


def _find(img: np.ndarray, patch: np.ndarray) -> tuple[int, int]:
    h, w = patch.shape[:2]
    for y in range(img.shape[0] - h + 1):
        for x in range(img.shape[1] - w + 1):
            if np.array_equal(img[y:y + h, x:x + w], patch):
                return y, x
    raise AssertionError("patch not found")


def test_pairs_equal_crops_of_the_eval_lr(tmp_path):
    path = tmp_path / "a.png"
    _noise_image(60, 75, 9).save(path)
    img = np.asarray(Image.open(path))
    whole_lr = make_lr(img, 3)  # what `upsample eval` feeds a model
    ds = data.PairDataset([path], _spec(), seed=5)
    aligned = 0
    for k in range(40):
        lr, hr = ds[(k, 3)]
        assert lr.shape == (3, 8, 8) and hr.shape == (3, 24, 24)
        y, x = _find(img, np.round(hr.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
        if y % 3 == 0 and x % 3 == 0:
            aligned += 1
            assert torch.equal(lr, whole_lr[0, :, y // 3:y // 3 + 8, x // 3:x // 3 + 8])
    assert aligned >= 2


def test_pairs_are_a_pure_function_of_the_key_and_y_matches_metrics(tmp_path):
    path = tmp_path / "a.png"
    _noise_image(50, 50, 1).save(path)
    spec = _spec(patch=24, scales=[2], y_channel=True, flip=True, rot90=True, noise_prob=0.5, jpeg_prob=0.5)
    a, b = data.PairDataset([path], spec, seed=3), data.PairDataset([path], spec, seed=3)
    for k in (7, 0, 7, 123):
        assert all(torch.equal(u, v) for u, v in zip(a[(k, 2)], b[(k, 2)]))
    assert not torch.equal(a[(1, 2)][1], a[(2, 2)][1])
    assert not torch.equal(data.PairDataset([path], spec, seed=4)[(1, 2)][1], a[(1, 2)][1])
    rgb = torch.rand(1, 3, 5, 5, dtype=torch.float64)
    u8 = (rgb[0].permute(1, 2, 0).numpy() * 255)
    assert np.allclose(data.rgb_to_y01(rgb)[0, 0].numpy() * 255, metrics.rgb_to_y(u8), atol=1e-9)


def test_multiscale_pre_upsample_pairs_and_small_images_skipped(tmp_path):
    _noise_image(48, 48, 1).save(tmp_path / "a.png")
    _noise_image(30, 48, 2).save(tmp_path / "b.png")  # too small for 41 (44 at x4)
    ds = data.PairDataset(sorted(tmp_path.glob("*.png")), _spec(patch=41, scales=[2, 3, 4], y_channel=True,
                                                                 pre_upsample=True), seed=0)
    assert len(ds) == 1 and ds.skipped == 1
    for s in (2, 3, 4):
        inp, hr = ds[(s, s)]
        assert inp.shape == hr.shape == (1, 41, 41)
        assert 16 / 255 - 1e-6 <= float(hr.min()) and float(hr.max()) <= 235 / 255 + 1e-6
    with pytest.raises(UserError, match="multiple of scale"):
        data.PairDataset([tmp_path / "a.png"], _spec(patch=40, scales=[3]), seed=0)
    with pytest.raises(UserError, match="at least 64x64"):
        data.PairDataset([tmp_path / "a.png"], _spec(patch=64, scales=[2]), seed=0)


def test_step_sampler_resumes_exactly_and_ranks_differ():
    full = list(data.StepBatchSampler(0, 6, 4, [2, 3, 4], seed=1))
    assert list(data.StepBatchSampler(3, 6, 4, [2, 3, 4], seed=1)) == full[3:]
    assert len({b[0][1] for b in full}) > 1 and all(len({s for _, s in b}) == 1 for b in full)
    r0 = list(data.StepBatchSampler(0, 3, 4, [2], seed=1, rank=0, world=2))
    r1 = list(data.StepBatchSampler(0, 3, 4, [2], seed=1, rank=1, world=2))
    keys = [k for b in r0 + r1 for k, _ in b]
    assert sorted(keys) == list(range(24))


def test_image_order_visits_every_image_once_per_epoch(tmp_path):
    for i in range(5):
        _noise_image(30, 30, i).save(tmp_path / f"{i}.png")
    ds = data.PairDataset(sorted(tmp_path.glob("*.png")), _spec(patch=12, scales=[2]), seed=0, cache_mb=0)
    assert ds.cache is None
    epochs = [[ds.image_index(k) for k in range(e * 5, e * 5 + 5)] for e in range(3)]
    assert all(sorted(e) == list(range(5)) for e in epochs) and epochs[0] != epochs[1]


@pytest.mark.parametrize("kind", ["bicubic", "gaussian"])
def test_a_batch_equals_its_samples_made_one_by_one(tmp_path, kind):
    for i in range(3):
        _noise_image(40 + 10 * i, 50, i).save(tmp_path / f"{i}.png")
    spec = _spec(patch=16, scales=[2], y_channel=False, flip=True, rot90=True, noise_prob=0.5,
                 jpeg_prob=0.5, kind=kind, blur_sigma=(0.5, 1.5))
    ds = data.PairDataset(sorted(tmp_path.glob("*.png")), spec, seed=11)
    keys = [5, 17, 2, 40, 41, 9]
    inp, hr = ds.__getitems__([(k, 2) for k in keys])
    assert inp.shape == (6, 3, 8, 8) and hr.shape == (6, 3, 16, 16)
    for i, k in enumerate(keys):
        a, b = ds[(k, 2)]
        assert torch.equal(a, inp[i]) and torch.equal(b, hr[i])
    with pytest.raises(ValueError, match="one scale per batch"):
        ds.__getitems__([(1, 2), (2, 3)])


def test_uniforms_are_keyed_and_uniform():
    u = data.uniforms(3, range(20000), 4)
    assert u.shape == (20000, 4) and 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs((u < 0.25).mean() - 0.25) < 0.01
    assert np.array_equal(data.uniforms(3, [7, 19999], 4), u[[7, 19999]])
    assert not np.array_equal(data.uniforms(4, [7], 4), u[[7]])
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03


def test_prepare_and_check_report_progress_without_a_terminal(tmp_path, capsys, monkeypatch):
    """stderr to a file or a pipe (capsys here): lines, as image and eval give (nothing before)."""
    monkeypatch.setattr("upsample.media.progress.LINE_INTERVAL", 0.0)
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(src / f"{i}.png")
    assert cli.main(["data", "prepare", str(src), "-o", str(tmp_path / "out"), "--size", "48"]) == 0
    assert "prepare 3/3 (100%)" in capsys.readouterr().err
    cli.main(["data", "check", str(src)])
    assert "check 3/3 (100%)" in capsys.readouterr().err


def test_prepare_reruns_count_what_is_there_and_tidy_a_killed_run(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i, side in enumerate((96, 96, 40)):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(src / f"{i}.png")
    out = tmp_path / "out"
    args = ["data", "prepare", str(src), str(src / "0.png"), "-o", str(out), "--size", "48"]
    assert cli.main(args) == 0  # 0.png named twice: cut once
    first = capsys.readouterr().out
    assert "3 sources: 8 crops (8 written now)" in first and "1 source smaller than 48" in first
    (out / ".src__0_s000.png.abcd1234.png.part").write_bytes(b"half a crop")  # as a kill leaves it
    (out / ".notes.png.part").write_bytes(b"someone else's")  # not a crop's name: left alone
    assert cli.main(args) == 0
    again = capsys.readouterr().out
    assert "3 sources: 8 crops (0 written now)" in again and "3 already done, 1 source smaller" in again
    assert [p.name for p in out.glob(".*.part")] == [".notes.png.part"]
    assert cli.main(["data", "prepare", str(src), "-o", str(src)]) == 2
    assert "is the source folder itself" in capsys.readouterr().err


def test_data_check_of_a_folder_without_images_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["data", "check", str(tmp_path / "empty")]) == 2  # it said "0 images", exit 0
    assert "no images in" in capsys.readouterr().err

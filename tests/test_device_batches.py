"""The device pipeline: the uint8 image store and the batches made from it on the training
device (data/store.py, data/device_batches.py), and the step's modes (training/speed.py)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upsample import cli
from upsample.data import pairs as data
from upsample.data.degrade import imresize_np
from upsample.data.device_batches import DeviceBatches
from upsample.data.store import open_store
from upsample.errors import UserError
from upsample.models import registry, vapsr as vapsr_mod
from upsample.training import batches, config as config_mod, speed
from upsample.training.loop import accumulated_backward
from upsample.training.state import Sampling, TrainState


def _images(tmp_path, sizes, seed=0):
    paths = []
    for i, (h, w) in enumerate(sizes):
        arr = np.random.default_rng(seed + i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


def _spec(**kw):
    base = dict(patch=24, scales=[3], y_channel=False, pre_upsample=False)
    return data.PairSpec(**{**base, **kw})


def test_store_round_trips_and_is_rebuilt_when_stale(tmp_path):
    files = _images(tmp_path, [(40, 30), (20, 50)])
    root = tmp_path / "store"
    store, built = open_store(files, root)
    assert built and len(store) == 2 and sorted(p.suffix for p in root.iterdir()) == [".json", ".lock", ".u8"]  # the lock: .NAME.lock
    for i, f in enumerate(files):
        assert np.array_equal(store.image(i), np.asarray(Image.open(f)))
    assert open_store(files, root)[1] is False  # current: memory-mapped, not decoded again
    arr = np.full((20, 50, 3), 7, dtype=np.uint8)
    Image.fromarray(arr).save(files[1])
    os.utime(files[1], ns=(1, 10 ** 18))  # another mtime whatever the clock's resolution
    store, built = open_store(files, root)
    assert built and np.array_equal(store.image(1), arr)
    # a store whose pixels are cut short (an interrupted copy) is not taken for whole
    pix = next(root.glob("*.u8"))
    pix.write_bytes(pix.read_bytes()[:100])
    assert open_store(files, root)[1] is True
    assert not [p for p in root.iterdir() if p.name.startswith(".") and p.suffix != ".lock"]  # no temporary left


def test_a_crop_s_lr_equals_imresize_of_it_and_the_batch_equals_pair_dataset(tmp_path):
    files = _images(tmp_path, [(60, 75), (50, 44)])
    spec = _spec()
    pairs = DeviceBatches(open_store(files, tmp_path / "s")[0], spec, seed=5, device="cpu")
    ks = np.arange(32)
    u = data.uniforms(5, ks, 11)
    regions = pairs.regions(ks, u, 3)
    m = spec.margin(3)
    imgs = pairs.image_indices(ks)
    for i in range(len(ks)):  # the region is the mirror-padded image's crop at the drawn corner
        img = np.asarray(Image.open(files[imgs[i]]))
        h, w = img.shape[:2]
        pad = np.pad(img, ((12, 12), (12, 12), (0, 0)), mode="symmetric")
        y = 12 - 3 * m + int(u[i, data._Y] * (h - 24 + 1))
        x = 12 - 3 * m + int(u[i, data._X] * (w - 24 + 1))
        side = 24 + 6 * m
        assert np.array_equal(regions[i].permute(1, 2, 0).numpy(), pad[y:y + side, x:x + side])
    lr = pairs.degrade(regions.float() / 255, u, 3)
    for i in range(len(ks)):
        ref = imresize_np(regions[i].permute(1, 2, 0).numpy().astype(np.float64) / 255, 1 / 3)
        assert np.abs(lr[i].permute(1, 2, 0).double().numpy() - ref).max() <= 1e-5
    # the same samples as PairDataset (float64 there): identical HR, LR to float32 rounding
    old = data.PairDataset(files, spec, seed=5).make_batch(list(ks), 3)
    new = pairs.make_batch(ks, 3)
    assert torch.equal(old[1], new[1])
    assert (old[0] - new[0]).abs().gt(1e-5).float().mean() < 1e-3


def _dihedral(t):
    out = []
    for tr in (False, True):
        for fh in (False, True):
            for fw in (False, True):
                x = t.transpose(-1, -2) if tr else t
                x = x.flip(-2) if fh else x
                out.append(x.flip(-1) if fw else x)
    return out


def test_all_eight_flips_and_rotations_occur(tmp_path):
    files = _images(tmp_path, [(64, 64)])
    plain = DeviceBatches(open_store(files, tmp_path / "s")[0], _spec(flip=False, rot90=False),
                          seed=1, device="cpu")
    aug = DeviceBatches(open_store(files, tmp_path / "s")[0], _spec(), seed=1, device="cpu")
    ks = list(range(64))
    (lr0, hr0), (lr, hr) = plain.make_batch(ks, 3), aug.make_batch(ks, 3)
    seen = set()
    for i in range(len(ks)):
        found = [j for j, (a, b) in enumerate(zip(_dihedral(hr0[i]), _dihedral(lr0[i])))
                 if torch.equal(a, hr[i]) and torch.equal(b, lr[i])]
        assert found, f"sample {i} is no flip/rotation of its crop"
        seen.add(found[0])
    assert seen == set(range(8))


def test_gaussian_blur_each_matches_the_per_image_blur(tmp_path):
    files = _images(tmp_path, [(70, 70)])
    spec = _spec(kind="gaussian", blur_sigma=(0.5, 2.0))
    new = DeviceBatches(open_store(files, tmp_path / "s")[0], spec, seed=2, device="cpu")
    old = data.PairDataset(files, spec, seed=2)
    a, b = old.make_batch(list(range(16)), 3), new.make_batch(list(range(16)), 3)
    assert torch.equal(a[1], b[1]) and (a[0] - b[0]).abs().gt(1e-5).float().mean() < 1e-3


def test_pipeline_choice(tmp_path):
    cfg = config_mod.Config()
    assert batches.choose_pipeline(cfg, _spec()) == "device"
    cfg.data.pipeline = "workers"
    assert batches.choose_pipeline(cfg, _spec()) == "workers"
    with pytest.raises(UserError, match="data.pipeline"):
        config_mod.config_from_dict({}, ["data.pipeline=gpu"])
    with pytest.raises(UserError, match="accumulate"):
        config_mod.config_from_dict({}, ["data.batch_size=6", "train.accumulate=4"])


def test_auto_modes_are_timed_and_explicit_ones_kept_on_resume():
    cfg = config_mod.config_from_dict({}, ["train.amp=auto", "train.channels_last=auto"])
    cands = speed.candidates(cfg.train, torch.device("cpu"))
    assert {c.channels_last for c in cands} == {False, True} and not any(c.compile for c in cands)
    model = registry.create_model("espcn-x2")
    sample = (torch.rand(2, 1, 8, 8), torch.rand(2, 1, 16, 16))
    lines = []
    chosen = speed.choose_modes(cfg, model, sample, torch.device("cpu"), rounds=1, seconds=0,
                                log=lines.append)
    assert chosen in cands and "timing the step in" in lines[0] and "training with" in lines[-1]
    saved = {"amp": "bf16", "channels_last": True, "compile": False}
    assert speed.resumed_modes(cfg.train, saved) == speed.StepModes("bf16", True, False)
    explicit = config_mod.config_from_dict({}, ["train.amp=none"]).train
    assert speed.resumed_modes(explicit, saved) == speed.StepModes("none", False, False)


def test_compile_auto_on_the_cpu_offers_compiled_depthwise_grads_for_vapsr_only():
    cfg = config_mod.config_from_dict({}, ["train.amp=none", "train.channels_last=auto", "train.compile=auto"])
    cpu = torch.device("cpu")
    vapsr = registry.create_model("vapsr-s-x2")
    assert speed.candidates(cfg.train, cpu, vapsr) == [
        speed.StepModes(), speed.StepModes(channels_last=True),
        speed.StepModes(channels_last=True, compiled_grads=True)]
    assert not any(c.compiled_grads for c in speed.candidates(cfg.train, cpu, registry.create_model("espcn-x2")))
    assert not any(c.compile for c in speed.candidates(cfg.train, cpu, vapsr))  # the step stays eager
    eager = config_mod.config_from_dict({}, ["train.channels_last=auto"]).train  # compile = false
    assert not any(c.compiled_grads for c in speed.candidates(eager, cpu, vapsr))
    saved = {"amp": "none", "channels_last": True, "compile": False, "compiled_grads": True}
    assert speed.resumed_modes(cfg.train, saved).compiled_grads
    assert not speed.resumed_modes(cfg.train, {**saved, "channels_last": False}).compiled_grads
    cuda = speed.candidates(cfg.train, torch.device("cuda"), vapsr)  # (no GPU needed to list them)
    assert not any(c.compile or c.compiled_grads for c in cuda)  # VapSR stays eager on CUDA
    assert all(c.compile for c in speed.candidates(cfg.train, torch.device("cuda"), registry.create_model("espcn-x2")))
    assert not speed.resumed_modes(eager, saved).compiled_grads  # compile = false on resume: honoured
    assert not speed.resumed_modes(cfg.train, {k: v for k, v in saved.items() if k != "compiled_grads"}).compiled_grads


def test_compiled_or_eager_falls_back_for_good_when_a_compile_fails(capsys):
    compiles = []

    def second_compile_fails(gm, inputs):  # a torch.compile backend: the first graph works
        compiles.append(len(compiles))
        if len(compiles) > 1:
            raise RuntimeError("no compiler")
        return gm.forward

    fn = speed.CompiledOrEager(lambda x: x * 2, eager=lambda x: x * 2 + 100, backend=second_compile_fails,
                               dynamic=False, recompile_limit=4)
    assert fn(torch.ones(2)).tolist() == [2, 2] and fn.works
    assert fn(torch.ones(3)).tolist() == [102] * 3 and not fn.works  # a new shape: compiled again, failed
    assert fn(torch.ones(2)).tolist() == [102, 102] and len(compiles) == 2
    assert capsys.readouterr().err.count("torch.compile failed") == 1


def test_a_depthwise_kernel_that_did_not_compile_is_not_chosen(monkeypatch):
    def fails(gm, inputs):
        raise RuntimeError("no compiler")

    kernel = speed.CompiledOrEager(vapsr_mod.tap_weight_grads, eager=vapsr_mod.native_weight_grads, backend=fails)
    monkeypatch.setattr(speed, "_compiled_tap_grads", lambda: kernel)
    cfg = config_mod.config_from_dict({}, ["train.amp=none", "train.channels_last=true", "train.compile=auto"])
    model = registry.create_model("vapsr-s-x2")
    sample = (torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16))
    assert len(speed.candidates(cfg.train, torch.device("cpu"), model)) == 2
    chosen = speed.choose_modes(cfg, model, sample, torch.device("cpu"), rounds=1, seconds=0)
    assert not kernel.works and chosen == speed.StepModes(channels_last=True)


def test_accumulated_micro_batches_give_the_whole_batch_s_gradient():
    torch.manual_seed(0)
    model = registry.create_model("espcn-x2")
    x, y = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 16, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = TrainState(model=model, opt=opt, sched=None, scaler=torch.amp.GradScaler("cpu", enabled=False),
                       ema=None, gan=None, sampling=None, device=torch.device("cpu"))

    def forward_loss(a, b):
        return torch.nn.functional.mse_loss(model(a), b), {}
    grads = []
    for k in (1, 2, 4):
        loss, _ = accumulated_backward(forward_loss, x, y, k, state)
        grads.append([p.grad.clone() for p in model.parameters()])
        assert loss.shape == () and abs(float(loss) - float(forward_loss(x, y)[0].detach())) < 1e-6
    for g in grads[1:]:
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads[0], g))


def test_the_state_file_records_the_modes(tmp_path):
    model = registry.create_model("espcn-x2")
    opt = torch.optim.Adam(model.parameters())
    sampling = Sampling(steps=1, batch_size=1, scales=[2], seed=0, rank=0, world=1, n_images=1)
    state = TrainState(model=model, opt=opt, sched=None, scaler=torch.amp.GradScaler("cpu", enabled=False),
                       ema=None, gan=None, sampling=sampling, device=torch.device("cpu"),
                       modes=speed.StepModes("bf16", True, False))
    assert json.loads(json.dumps(state.state_dict()["modes"])) == \
        {"amp": "bf16", "channels_last": True, "compile": False, "compiled_grads": False}


T91 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "train" / "T91"


@pytest.mark.skipif(not T91.is_dir(), reason="needs ../shared/datasets/train/T91")
def test_bench_train_times_ours_and_the_reference_loop(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "tiny.toml"
    text = (Path(__file__).resolve().parents[1] / "configs" / "tiny.toml").read_text()
    recipe.write_text(text.replace('"../shared/datasets/train/T91"', json.dumps(str(T91))))
    assert cli.main(["bench", "--train", str(recipe), "--seconds", "0.2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert [row["loop"].split()[0] for row in r["rows"]] == ["ours", "reference"]
    for row in r["rows"]:
        assert row["patches_per_s"] > 0
        assert row["gflops"] == pytest.approx(row["patches_per_s"] * r["gmacs_per_patch"] * 6)
    assert r["speedup"] == pytest.approx(r["rows"][0]["patches_per_s"] / r["rows"][1]["patches_per_s"])
    assert cli.main(["bench"]) == 2 and "--model" in capsys.readouterr().err
    assert cli.main(["bench", "--train", "no-such-model"]) == 2


def test_a_patch_that_is_no_multiple_of_the_scale_is_refused_by_both_pipelines(tmp_path):
    files = _images(tmp_path, [(64, 64)])
    store = open_store(files, tmp_path / "s")[0]
    for make in (lambda spec: DeviceBatches(store, spec, seed=0, device="cpu"),
                 lambda spec: data.PairDataset(files, spec, seed=0)):
        with pytest.raises(UserError, match="patch_size 25 is not a multiple of scale 3"):
            make(_spec(patch=25))

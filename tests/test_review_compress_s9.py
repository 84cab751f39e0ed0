"""Review s9 of `upsample prune | quantize | tune` as a user meets them: two tune processes on one
study, a pruned shipped model's file size, the int8 hint for a multi-scale model, Ctrl-C during
the int8 file's renames."""

import json
import signal
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from upsample import cli
from upsample.models import registry

ROOT = Path(__file__).resolve().parents[1]
T91 = ROOT.parent / "shared" / "datasets" / "train" / "T91"
SETS = [f"data.train=[{json.dumps(str(T91))}]", "data.max_images=4", "data.batch_size=4",
        "val.max_images=1", "val.crop=48", "train.steps=6", "val.every=3", "tune.trial_steps=4",
        "optim.name=sgd", "tune.lr=[1e-3, 1e-1]", "tune.batch_size=[2, 4]", "tune.clip=[0.1, 1.0]"]


def test_two_processes_on_one_study_draw_different_values(tmp_path):
    """Both opened the study before either had a trial, so both seeded their sampler alike and
    drew the same values: every trial of one ran again in the other."""
    import optuna
    from upsample.training import tune
    storage = f"sqlite:///{tmp_path / 's.db'}"
    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
             "batch_size": optuna.distributions.CategoricalDistribution([16, 32, 64, 128])}
    first, second = tune.open_study("s", storage, 0), tune.open_study("s", storage, 0)
    a, b = first.ask(space), second.ask(space)
    assert (a.number, b.number) == (0, 1)
    assert a.params != b.params
    # still reproducible: trial 0 of a new study draws what trial 0 of this one drew
    again = tune.open_study("s", f"sqlite:///{tmp_path / 'other.db'}", 0).ask(space)
    assert again.params == a.params


@pytest.mark.skipif(not T91.is_dir(), reason="needs ../shared/datasets/train/T91")
def test_the_study_stops_at_the_trials_asked_when_another_process_finishes_some(tmp_path, capsys,
                                                                                  monkeypatch):
    """--trials is the study's finished trials: with a second process on the study, each ran its
    own --trials, and `--trials 3` ended with 5."""
    import optuna
    from upsample.training import loop
    storage = f"sqlite:///{tmp_path / 'study.db'}"

    def fake_train(cfg, run_dir, **kw):
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 3, "val_psnr": 20.0}) + "\n")
        other = optuna.load_study(study_name="tiny", storage=storage)  # the other process
        if len(other.trials) == 1:  # while this process runs its first trial, it finishes two
            for lr in (0.01, 0.02):
                other.add_trial(optuna.trial.create_trial(
                    params={"lr": lr, "momentum": 0.9, "batch_size": 2, "clip": 0.5}, value=19.0,
                    distributions={k: v for k, v in other.trials[0].distributions.items()}))
        return 0
    monkeypatch.setattr(loop, "train", fake_train)
    args = ["tune", str(ROOT / "configs" / "tiny.toml"), "--trials", "3", "--device", "cpu",
            "--storage", storage, "--run-dir", str(tmp_path / "runs")]
    for s in SETS:
        args += ["--set", s]
    assert cli.main(args) == 0
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert "best: trial 0" in capsys.readouterr().out


def test_pruning_a_float16_model_writes_float16(tmp_path, capsys):
    """The shipped weights are float16; the pruned file was float32, so `--sparsity 0.3` of
    espcn-x2 wrote 59.8 kB from its 45.4 kB: "smaller" by its parameters, larger on disk."""
    shipped = registry.weights_path("espcn-x2")
    if shipped is None:
        pytest.skip("needs espcn-x2's shipped weights")
    out = tmp_path / "p.safetensors"
    assert cli.main(["prune", "espcn-x2", "--filter-ratio", "0.2", "-o", str(out)]) == 0
    assert out.stat().st_size < shipped.stat().st_size
    with safe_open(str(out), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
        assert f.metadata()["dtype"] == "float16"
    # a float32 file (another project's state dict) stays float32
    with safe_open(str(shipped), "pt") as f:
        torch.save({k: f.get_tensor(k).float() for k in f.keys()}, tmp_path / "espcn_x2.pth")
    out32 = tmp_path / "p32.safetensors"
    assert cli.main(["prune", str(tmp_path / "espcn_x2.pth"), "--filter-ratio", "0.2", "-o", str(out32)]) == 0
    with safe_open(str(out32), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    capsys.readouterr()


def test_the_int8_hint_of_a_multi_scale_model_names_its_scale(tmp_path, capsys, monkeypatch):
    """`eval --model OUT --backend B ...`, as printed, was refused for vdsr: it needs --scale."""
    from upsample.runtime import quantize
    calls = []

    def fake_quantize(model, *, scale, out, **kw):
        calls.append(scale)
        out.write_bytes(b"x" * 1000)
    monkeypatch.setattr(quantize, "quantize_model", fake_quantize)
    out = tmp_path / "v.onnx"
    assert cli.main(["quantize", "vdsr", "--scale", "3", "--backend", "onnxruntime", "--calib", str(tmp_path),
                     "-o", str(out), "--allow-untrained"]) == 0
    assert calls == [3.0]
    assert f"--model {out} --backend onnxruntime --scale 3 ..." in capsys.readouterr().out


def test_ctrl_c_during_the_renames_leaves_the_new_pair_whole(tmp_path, monkeypatch):
    """With --overwrite the old .xml went, then Ctrl-C could land before the new one arrived: the
    user's int8 file gone and no new one. The signal now waits for the renames."""
    # Python's own SIGINT handler, as the console has it (a pytest-xdist worker may not)
    old_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_during_the_renames(tmp_path, monkeypatch)
    finally:
        signal.signal(signal.SIGINT, old_handler)


def _ctrl_c_during_the_renames(tmp_path, monkeypatch):
    from PIL import Image
    import numpy as np
    import openvino as ov
    from upsample.inference.load import resolve_model
    from upsample.runtime import quantize

    def fast_ir(onnx_path, out, inputs, keep_float=()):  # no NNCF: only the files matter here
        ov.save_model(ov.convert_model(str(onnx_path)), str(out), compress_to_fp16=False)
    monkeypatch.setattr(quantize, "quantize_openvino", fast_ir)
    calib = tmp_path / "calib"
    calib.mkdir()
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 40, 3), dtype=np.uint8)).save(calib / "a.png")
    out = tmp_path / "q.xml"
    out.write_text("old"), out.with_suffix(".bin").write_text("old")
    real_replace, sent = Path.replace, []

    def replace_then_interrupt(self, target):
        result = real_replace(self, target)
        if not sent and Path(target).parent == tmp_path:
            sent.append(target)
            # Ctrl-C after the first rename into place: the handler Python would run, called as
            # it would be (a real signal to a pytest-xdist worker can end the worker itself)
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        return result
    monkeypatch.setattr(Path, "replace", replace_then_interrupt)
    model, _ = resolve_model("espcn-x2")
    with pytest.raises(KeyboardInterrupt):
        quantize.quantize_model(model, scale=2, backend="openvino", calib=str(calib), out=out,
                                size=8, source="espcn-x2")
    assert sent and out.read_text() != "old" and out.with_suffix(".bin").stat().st_size > 1000
    assert not list(tmp_path.glob(".quantize-*"))

"""A run's step modes belong to the machine that timed them: a resume on another kind of machine
times its "auto" settings again; bf16 asked for on a CPU without bf16 units is said."""

import torch

from upsample.models import registry
from upsample.runtime import cpu, hardware
from upsample.training import config as config_mod, loop, speed
from upsample.training.procs import Procs

CPU = torch.device("cpu")
SAVED_BF16 = {"amp": "bf16", "channels_last": True, "compile": False, "compiled_grads": False}


class _OneBatch:
    """The sampler and pairs step_modes draws its timing batch from."""
    def batch_sampler(self, start):
        return iter([[(0, 2)]])

    def make_batch(self, keys, scale):
        return torch.rand(1, 1, 8, 8), torch.rand(1, 1, 16, 16)


def _modes(capsys, monkeypatch, sets: list[str], saved: dict | None, bf16_units: bool = True):
    monkeypatch.setattr(speed, "cpu_has_bf16", lambda: bf16_units)
    timed = speed.StepModes("none", False)
    monkeypatch.setattr(loop, "choose_modes", lambda *a, **k: timed)  # the timing itself: test_device_batches
    cfg = config_mod.config_from_dict({}, sets)
    model = registry.create_model("espcn-x2")
    modes = loop.step_modes(cfg, model, pairs=_OneBatch(), sampling=_OneBatch(), procs=Procs(rank=0, world=1, dev=CPU),
                            saved=saved)
    return modes, capsys.readouterr().err


def test_machine_kind_names_the_cpu_with_the_flags_that_decide_its_speed(monkeypatch):
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: "model name\t: AMD EPYC\nflags\t: fpu avx2 avx512f avx512_bf16\n")
    assert hardware.machine_kind(CPU) == "AMD EPYC avx512f avx512_bf16"
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: "model name\t: AMD EPYC\nflags\t: fpu avx2\n")
    assert hardware.machine_kind(CPU) == "AMD EPYC"


def test_a_resume_on_the_same_machine_keeps_the_runs_choice(capsys, monkeypatch):
    auto = ["train.amp=auto", "train.channels_last=auto"]
    here = hardware.machine_kind(CPU)
    modes, err = _modes(capsys, monkeypatch, auto, {"modes": SAVED_BF16, "machine": here})
    assert modes == speed.StepModes("bf16", True) and "timed again" not in err
    # a state saved before machines were recorded: kept as well
    assert _modes(capsys, monkeypatch, auto, {"modes": SAVED_BF16})[0] == speed.StepModes("bf16", True)


def test_a_resume_on_another_machine_times_its_auto_settings_again(capsys, monkeypatch):
    modes, err = _modes(capsys, monkeypatch, ["train.amp=auto", "train.channels_last=auto"],
                        {"modes": SAVED_BF16, "machine": "Another CPU avx512_bf16"})
    assert modes == speed.StepModes("none", False)  # what timing here chose
    assert "bf16+channels_last on Another CPU avx512_bf16" in err and "they are timed again" in err
    # explicit settings stay what the config says, wherever the run goes on
    modes, _ = _modes(capsys, monkeypatch, ["train.amp=none", "train.channels_last=true"],
                      {"modes": SAVED_BF16, "machine": "Another CPU avx512_bf16"})
    assert modes == speed.StepModes("none", True)


def test_bf16_asked_for_on_a_cpu_without_bf16_units_is_said(capsys, monkeypatch):
    modes, err = _modes(capsys, monkeypatch, ["train.amp=bf16"], None, bf16_units=False)
    assert modes.amp == "bf16" and "without bf16 units" in err and 'train.amp = "auto" trains in fp32' in err
    assert "bf16 units" not in _modes(capsys, monkeypatch, ["train.amp=bf16"], None)[1]


def test_a_resume_with_auto_leaves_modes_auto_does_not_offer_here(capsys, monkeypatch):
    """A run that computed in bf16 (explicit, or auto on a bf16 machine), resumed with train.amp =
    auto on a CPU without bf16 units, same machine or a state without one: fp32, said."""
    here = hardware.machine_kind(CPU)
    for saved in ({"modes": SAVED_BF16, "machine": here}, {"modes": SAVED_BF16}):
        modes, err = _modes(capsys, monkeypatch, ["train.amp=auto", "train.channels_last=true"], saved,
                            bf16_units=False)
        assert modes == speed.StepModes("none", True)
        assert "which its \"auto\" settings do not offer" in err and "goes on in fp32+channels_last" in err
    # explicit settings only: nothing to time, and no word of timing
    modes, err = _modes(capsys, monkeypatch, ["train.amp=none", "train.channels_last=false"],
                        {"modes": SAVED_BF16, "machine": "Another CPU"})
    assert modes == speed.StepModes() and "timed again" not in err

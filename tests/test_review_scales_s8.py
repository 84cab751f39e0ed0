"""A pre-upsampling model (VDSR) trained at one scale runs at it without --scale; one trained at
several says which (before: 'works at any scale' for both, with an example scale it may not know)."""

from __future__ import annotations

import pytest
import torch

from upsample.errors import UserError
from upsample.inference.load import load_upscaler
from upsample.models import registry
from upsample.models.checkpoint import save_checkpoint


def _vdsr_file(tmp_path, scales):
    torch.manual_seed(0)
    model = registry.create_model("vdsr")
    path = tmp_path / f"vdsr-{'-'.join(map(str, scales))}.safetensors"
    save_checkpoint(model, path, config={"model": {"name": "vdsr", "kwargs": {}, "scales": scales}})
    return path


def test_a_vdsr_trained_at_one_scale_runs_at_it(tmp_path):
    up = load_upscaler(str(_vdsr_file(tmp_path, [3])), backend="torch", quiet=True)
    assert up.scale == 3
    assert load_upscaler(str(_vdsr_file(tmp_path, [3])), scale=2, backend="torch", quiet=True).scale == 2


def test_a_vdsr_trained_at_several_scales_names_them(tmp_path):
    with pytest.raises(UserError, match=r"trained at x2, x3, x4\): give one with --scale \(e.g. --scale 2\)"):
        load_upscaler(str(_vdsr_file(tmp_path, [2, 2, 3, 4])), backend="torch", quiet=True)

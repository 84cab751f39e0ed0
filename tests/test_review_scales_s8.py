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


def test_interpolate_reads_an_original_esrgan_x3_at_the_other_files_scale(tmp_path):
    """An original-ESRGAN x3 file has one upsampling conv, as an x2 has: blended with our x3 file
    (either order) it is read at x3, where it was read as x2 ('different architectures')."""
    from upsample.models.checkpoint import interpolate_checkpoints, load_checkpoint
    torch.manual_seed(0)
    model = registry.build("rrdbnet", {"scale": 3, "num_block": 1, "num_feat": 8, "num_grow_ch": 4}, None)
    ours = save_checkpoint(model, tmp_path / "ours.safetensors", config={"model": {"name": "rrdbnet"}})
    names = {k.replace("conv_body", "trunk_conv").replace("body.", "RRDB_trunk.").replace("rdb", "RDB")
             .replace("conv_up1", "upconv1").replace("conv_hr", "HRconv"): v for k, v in model.state_dict().items()}
    torch.save(names, tmp_path / "old.pth")
    assert load_checkpoint(tmp_path / "old.pth")[1]["scale"] == 2  # alone, the tensors say x2
    for a, b in ((ours, tmp_path / "old.pth"), (tmp_path / "old.pth", ours)):
        out = interpolate_checkpoints(a, b, 0.5, tmp_path / "mix.safetensors")
        assert load_checkpoint(out)[1]["scale"] == 3
    out = interpolate_checkpoints(tmp_path / "old.pth", tmp_path / "old.pth", 0.5, tmp_path / "o.safetensors",
                                  scale=3)
    assert load_checkpoint(out)[1]["scale"] == 3

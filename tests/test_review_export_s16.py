"""Review regressions (export): a graph exported from random weights says so, and is refused as
the model it came from is."""

from __future__ import annotations

import json

import onnx
import pytest

from upsample import cli
from upsample.errors import UserError
from upsample.inference.load import check_trained, is_untrained
from upsample.runtime.foreign_onnx import export_marked_untrained


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("UPSAMPLE_ALLOW_UNTRAINED", raising=False)


def cli_run(argv):
    args = cli.build_parser(cli.COMMANDS[argv[0]]).parse_args(argv)
    return args.func(args)


def contract(path) -> dict:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(props["upsample"])


def test_untrained_export_is_marked_and_refused(tmp_path):
    out = tmp_path / "random.onnx"
    cli_run(["export", "espcn-rgb-x2", "--allow-untrained", "-o", str(out)])
    assert contract(out).get("untrained") is True
    assert export_marked_untrained(out) and is_untrained(str(out))
    with pytest.raises(UserError, match="untrained"):
        check_trained(str(out))
    check_trained(str(out), allow_untrained=True)  # asked for: timing runs may use it


def test_trained_export_is_not_marked(tmp_path):
    out = tmp_path / "e.onnx"
    cli_run(["export", "espcn-x2", "-o", str(out)])
    assert "untrained" not in contract(out)
    assert not export_marked_untrained(out)
    check_trained(str(out))


def test_unreadable_onnx_is_not_marked(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    assert not export_marked_untrained(bad)


def test_untrained_export_makes_no_image_unless_asked(tmp_path):
    """`image --model random.onnx` wrote a picture of random weights without a word."""
    import numpy as np
    from PIL import Image

    out = tmp_path / "random.onnx"
    cli_run(["export", "espcn-rgb-x2", "--allow-untrained", "-o", str(out)])
    Image.fromarray(np.full((12, 12, 3), 90, np.uint8)).save(tmp_path / "a.png")
    assert cli.main(["image", str(tmp_path / "a.png"), "--model", str(out), "-o", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    assert cli.main(["image", str(tmp_path / "a.png"), "--model", str(out), "-o", str(tmp_path / "o"),
                     "--allow-untrained", "--backend", "onnxruntime"]) == 0


def test_a_vdsr_export_at_a_whole_scale_writes_it_whole(tmp_path):
    """`export vdsr --uint8-io --scale 2` wrote "scale": 2.0 where the fixed-scale models write 2."""
    from upsample.runtime.export import io_contract
    from upsample.models import registry

    spec = registry.create_model("vdsr", num_layers=3).upsample_spec
    assert io_contract(spec, "vdsr", 2.0, uint8_io=True, fp16=False)["scale"] == 2
    assert isinstance(io_contract(spec, "vdsr", 2.0, uint8_io=True, fp16=False)["scale"], int)
    assert io_contract(spec, "vdsr", 2.5, uint8_io=True, fp16=False)["scale"] == 2.5

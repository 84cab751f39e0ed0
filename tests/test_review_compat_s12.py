"""An OpenVINO graph without upsample's metadata (an `upsample export --format openvino` of a
version before 2026-12-02, or another tool's IR) given as --model (review s12: artefacts of older
versions used by this one)."""

import pytest

from upsample import cli


def test_an_openvino_export_without_metadata_says_to_give_its_onnx(tmp_path, capsys):
    # `upsample export --format openvino` wrote no metadata before 2026-12-02: the refusal said
    # "was not written by `upsample quantize`", no word of the graph or of its ONNX export
    ov = pytest.importorskip("openvino")
    from openvino import opset13 as ops
    x = ops.parameter([1, 1, 8, 8], ov.Type.f32, name="input")
    model = ov.Model([ops.relu(x)], [x], "old-export")
    xml = tmp_path / "espcn-x2.xml"
    ov.save_model(model, str(xml))
    png = tmp_path / "in.png"
    from PIL import Image
    Image.new("RGB", (8, 8), (10, 20, 30)).save(png)
    assert cli.main(["image", "--model", str(xml), str(png), "-o", str(tmp_path / "out.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "without upsample's metadata" in err and "ONNX" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out.png").exists()

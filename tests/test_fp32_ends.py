"""`fp32_ends`: which layers of an IR stay fp32 under bf16, and that OpenVINO keeps them so."""

import json
import xml.etree.ElementTree as ET

import pytest
import torch
from isolation import in_child_process

from upsample.runtime import auto, cache, checks, export, fp32_ends
from upsample.models import registry
from upsample.runtime.hardware import cpu_has_bf16
from upsample.inference.load import load_upscaler


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))


def marked_names(xml) -> set[str]:
    root = ET.parse(xml).getroot()
    return {layer.get("name") for layer in root.iter("layer")
            if any(a.get("name") == "DisablePrecisionConversion" for a in layer.iter("attribute"))}


def conv_names(xml) -> set[str]:
    return {layer.get("name") for layer in ET.parse(xml).getroot().iter("layer")
            if layer.get("type") == "Convolution"}


def test_espcn_keeps_its_first_and_last_convolutions_and_the_fused_edges_in_fp32():
    torch.manual_seed(0)
    net = registry.create_model("espcn-x3").eval()
    plain = fp32_ends.variant(export.cached_ir(net))
    convs, marked = conv_names(plain), marked_names(plain)
    assert {c for c in convs if "first_part.0" in c or "last_part.0" in c} <= marked
    assert not {c for c in convs if "first_part.2" in c} & marked  # the body runs in bf16
    fused = fp32_ends.variant(export.cached_ir(auto.FusedRGB(net, 3), key="fused-test",
                                               example=torch.rand(1, 3, 16, 16)))
    marked = marked_names(fused)
    assert any("/chroma/Conv" in n for n in marked) and any("/to_y/" in n for n in marked)
    assert any("/chroma/Concat" in n for n in marked)  # the mirror padding too, not just convs
    assert fused.with_suffix(".bin").read_bytes() == export.cached_ir(
        auto.FusedRGB(net, 3), key="fused-test").with_suffix(".bin").read_bytes()


def test_vdsr_body_is_bf16_and_a_net_without_a_body_is_left_alone(tmp_path):
    net = registry.create_model("vdsr", num_layers=5).eval()
    xml = fp32_ends.variant(export.cached_ir(net))
    convs, marked = conv_names(xml), marked_names(xml)
    assert len(convs & marked) == 2 and len(convs - marked) == 3  # conv_first/conv_last; 3 inside
    import openvino as ov
    two = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 3))
    ov.save_model(ov.convert_model(two, example_input=torch.rand(1, 3, 8, 8)), str(tmp_path / "two.xml"))
    text, names = fp32_ends.mark((tmp_path / "two.xml").read_bytes())
    assert names == [] and not marked_names(tmp_path / "two.xml")


@pytest.mark.skipif(not cpu_has_bf16(), reason="needs a CPU with bf16 units")
@in_child_process
def test_openvino_keeps_the_marked_layers_in_fp32_and_auto_takes_the_first_graph_that_passes_the_gate():
    """On the shipped ESPCN x2 the marked variant must cost less PSNR than full bf16 does, and
    `--backend auto` must take the first graph that passes the gate and remember its checks."""
    up = load_upscaler("espcn-x2", backend="auto", quiet=True)
    done = json.loads(next(p for p in cache.cache_files() if p.name.endswith(".checks.json")).read_text())
    bf16, body = done[f"openvino-bf16-x2-rgb2-{checks.GATE}"], done.get(f"openvino-bf16-body-x2-rgb2-{checks.GATE}")
    if checks.passes(bf16):  # this CPU's bf16 holds: nothing else tried
        assert up.precision == "bf16" and body is None
        return
    assert body is not None and abs(body["db_change"]) < abs(bf16["db_change"])
    assert body["vs_fp32_db"] > bf16["vs_fp32_db"]
    assert up.precision == ("bf16-body" if checks.passes(body) else "fp32")
    fp32 = load_upscaler("espcn-x2", backend="auto", precision="fp32")
    probes = checks.probe_set(2)
    with torch.no_grad():  # the picture is that of the graph measured
        again = checks.quality(up.run_rgb, probes, checks.reference(fp32.run_rgb, probes))
    assert again == pytest.approx(body)

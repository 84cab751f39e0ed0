"""`fp32_ends`: which layers of an IR stay fp32 under bf16, and that OpenVINO keeps them so."""

import json
from pathlib import Path
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


def convs_by_inputs(xml) -> dict[int, set[str]]:
    """The convolutions of an IR by their input channels (names change with the graph's form)."""
    found = {}
    for layer in ET.parse(xml).getroot().iter("layer"):
        if layer.get("type") == "Convolution":
            found.setdefault(fp32_ends._in_channels(layer), set()).add(layer.get("name"))
    return found


def test_espcn_keeps_its_first_and_last_convolutions_and_the_fused_edges_in_fp32():
    torch.manual_seed(0)
    net = registry.create_model("espcn-x3").eval()
    plain = fp32_ends.variant(export.cached_ir(net))
    convs, marked = conv_names(plain), marked_names(plain)
    assert {c for c in convs if "first_part.0" in c or "last_part.0" in c} <= marked
    assert not {c for c in convs if "first_part.2" in c} & marked  # the body runs in bf16
    fused = fp32_ends.variant(export.cached_ir(auto.FusedRGB(net, 3), key="fused-test",
                                               example=torch.rand(1, 3, 16, 16)))
    marked, convs = marked_names(fused), convs_by_inputs(fused)
    assert convs[3] | convs[1] | convs[32] <= marked  # chroma and Y, ESPCN's first and last layers
    assert not convs[64] & marked  # its body
    assert any("Concat" in n for n in marked)  # the chroma's mirror padding too, not just convs
    assert fused.with_suffix(".bin").read_bytes() == export.cached_ir(
        auto.FusedRGB(net, 3), key="fused-test").with_suffix(".bin").read_bytes()


def test_the_tail_variant_keeps_only_the_networks_last_convolution_in_fp32(tmp_path):
    """In ESPCN's fused graph the chroma resize also reaches the output without another
    convolution, but it is not the network's: it stays bf16, as does everything before."""
    net = registry.create_model("espcn-x3").eval()
    fused = export.cached_ir(auto.FusedRGB(net, 3), key="fused-test", example=torch.rand(1, 3, 16, 16))
    tail = fp32_ends.variant(fused, tail=True)
    assert tail != fp32_ends.variant(fused) and tail.name.endswith(f"-fp32tail{fp32_ends.VERSION}.xml")
    assert marked_names(tail) & conv_names(fused) == convs_by_inputs(fused)[32]  # ESPCN's last layer
    import openvino as ov
    one = tmp_path / "one.xml"
    ov.save_model(ov.convert_model(torch.nn.Conv2d(8, 4, 3), example_input=torch.rand(1, 8, 8, 8)), str(one))
    assert fp32_ends.variant(one, tail=True) == one  # nothing to keep apart: the graph itself


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
    """On the shipped ESPCN x2 `--backend auto` must take the first graph that passes the gate
    (all bf16, the last layer in fp32, both ends in fp32), measure none after it, remember its
    checks, and run the graph measured."""
    up = load_upscaler("espcn-x2", backend="auto", quiet=True)
    done = json.loads(next(p for p in cache.cache_files() if p.name.endswith(".checks.json")).read_text())
    order = ["bf16", "bf16-tail", "bf16-body"]
    found = {o: done.get(auto._check_name(o, 2.0, up.model, True, Path("-"))) for o in order}
    measured = [o for o in order if found[o] is not None]
    assert measured == order[:len(measured)] and measured  # in order, none skipped
    *failed, last = measured
    assert not any(checks.passes(found[o]) for o in failed)
    assert up.precision == (last if checks.passes(found[last]) else "fp32")
    if up.precision == "fp32":
        return
    fp32 = load_upscaler("espcn-x2", backend="auto", precision="fp32")
    probes = checks.probe_set(2)
    with torch.no_grad():  # the picture is that of the graph measured
        again = checks.quality(up.run_rgb, probes, checks.reference(fp32.run_rgb, probes))
    assert again == pytest.approx(found[last])


@pytest.mark.skipif(not cpu_has_bf16(), reason="needs a CPU with bf16 units")
@in_child_process
def test_the_no_op_clamp_keeps_a_sub_pixel_networks_output_out_of_bf16():
    """ESPCN's graphs (alone, and fused with the colour edges) carry a clamp that changes no
    value after the last convolution: OpenVINO fuses it and the convolution then writes f32 under
    bf16 - without it the picture itself was rounded to bf16 (0.013-0.029 dB on the probes)."""
    import openvino as ov
    net = registry.create_model("espcn-x3").eval()
    key = f"espcn-{export.weights_hash(net)}"
    graphs = [auto.network_graph(net, key),
              export.cached_ir(auto.FusedRGB(net, 3), key="fused-test", example=torch.rand(1, 3, 16, 16))]
    for xml in graphs:
        runtime = cache.ov_compiled(xml, "bf16").get_runtime_model()
        last = [op for op in runtime.get_ordered_ops()
                if op.get_rt_info()["layerType"].astype(str) == "Convolution"
                and "Clip" in op.get_rt_info()["originalLayersNames"].astype(str)]
        assert len(last) == 1 and last[0].get_rt_info()["outputPrecisions"].astype(str) == "f32"
        assert last[0].get_rt_info()["runtimePrecision"].astype(str) == "bf16"  # computed in bf16
    x = torch.rand(1, 1, 12, 10)
    with torch.no_grad():
        assert torch.equal(auto.ClampedPhases(net)(x), net(x))


@pytest.mark.skipif(not cpu_has_bf16(), reason="needs a CPU with bf16 units")
@in_child_process
def test_the_split_input_brings_bf16_closer_to_fp32():
    """The shipped espcn-x2's Y network under bf16 with and without `SplitInput`: split, the
    rounding of its input to bf16 is gone (0.067 dB lower and 53.3 dB from fp32, split +0.010
    dB and 56.9 dB on this Zen 5)."""
    from upsample.inference.load import resolve_model
    net, _ = resolve_model("espcn-x2")
    key = f"espcn-{export.weights_hash(net)}"
    plain, split = auto.network_graph(net, key), auto.split_graph(net, key)

    def run(xml, precision):
        compiled = cache.ov_compiled(xml, precision)
        return lambda x: compiled(x.numpy())[0]
    probes = checks.probe_set(2, channels=1)
    ref = checks.reference(run(plain, "f32"), probes)
    exact = checks.quality(run(split, "f32"), probes, ref)
    before, after = (checks.quality(run(xml, "bf16"), probes, ref) for xml in (plain, split))
    assert exact["vs_fp32_db"] > 60  # in fp32 the split graph is the network
    assert after["vs_fp32_db"] > before["vs_fp32_db"] + 2
    assert abs(after["db_change"]) < abs(before["db_change"])

"""bf16 for a network's body, fp32 for its ends: an OpenVINO IR variant for `--backend auto`.

On a CPU with bf16 units OpenVINO runs every convolution in bf16 when asked, and the rounding of
the image-facing layers - the first convolution, which sees 8-bit detail in [0, 1], and the last,
whose output *is* the image - is what breaks the 1/255 budget: for ESPCN x3 rounding only the
input layer costs 1.6/255, only the middle one 0.3/255, and all of them 2.8/255. The middle holds
most of the work (82 % of ESPCN's, 18 of VDSR's 20 layers), so keeping the ends in fp32 keeps most
of the speed-up and little of the error.

"Ends" here: every convolution whose input has at most 4 channels (an image or a plane of one) or
whose output reaches a graph output without passing another convolution, and everything before
the first other ("body") convolution - the colour transform, the padding, the chroma resize of the
fused graph. They carry OpenVINO's `DisablePrecisionConversion` attribute (the one
`ov::disable_conversion` sets; the CPU plugin then keeps the node in its original f32), written
into a copy of the IR, since the Python API has no setter for it. What follows the last
convolution stays f32 anyway: the CPU plugin keeps a graph's tail in its original precision.

A second, lighter variant (`tail=True`) keeps only the network's last convolutions (those of more
than 4 input channels among the last) in fp32: where a graph adds to the network's output before
its tail, OpenVINO rounds that output to bf16 (0.013 dB of ESPCN x3's PSNR on the probe set, in
`auto.FusedRGB`'s sub-pixel form before its no-op clamp), and the last convolution in fp32 costs
less time than the whole graph's fp32 ends.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

from .cache import seal

VERSION = 1  # in the variant's file name: bump when the choice of ends changes
ATTRIBUTE = {"name": "DisablePrecisionConversion", "version": "0", "value": "dynamic:f16"}
CONVOLUTIONS = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"}
IMAGE_CHANNELS = 4
STALE_S = 60.0  # a temporary pair older than this is no live writer's: a link and a small text take ms


def _in_channels(layer: ET.Element) -> int:
    """A convolution's input channels, from its weights port (O, I, kh, kw)."""
    ports = layer.find("input").findall("port") if layer.find("input") is not None else []
    if len(ports) < 2:
        return 1 << 30
    dims = [int(d.text) for d in ports[1].findall("dim")]
    return dims[1] if len(dims) >= 4 else 1 << 30


def fp32_layers(root: ET.Element, tail: bool = False) -> set[str]:
    """Ids of the layers of an IR (`<net>` element) to keep in fp32 (see the module docstring):
    the ends, or with `tail` the last convolutions only."""
    layers = {layer.get("id"): layer for layer in root.iter("layer")}
    after, before = defaultdict(set), defaultdict(set)
    for edge in root.find("edges"):
        a, b = edge.get("from-layer"), edge.get("to-layer")
        after[a].add(b)
        before[b].add(a)

    def is_conv(i):
        return layers[i].get("type") in CONVOLUTIONS

    # convolutions that reach an output through non-convolutions only
    last, stack, seen = set(), [i for i, l in layers.items() if l.get("type") == "Result"], set()
    while stack:
        for j in before[stack.pop()]:
            if j not in seen:
                seen.add(j)
                (last.add if is_conv(j) else stack.append)(j)
    if tail:  # the network's last layers, not a resize of the input picture beside them
        net_last = {i for i in last if _in_channels(layers[i]) > IMAGE_CHANNELS}
        return net_last if len(net_last) < sum(map(is_conv, layers)) else set()
    ends = last | {i for i in layers if is_conv(i) and _in_channels(layers[i]) <= IMAGE_CHANNELS}
    body = {i for i in layers if is_conv(i)} - ends
    downstream, stack = set(body), list(body)
    while stack:
        for j in after[stack.pop()]:
            if j not in downstream:
                downstream.add(j)
                stack.append(j)
    head = {i for i, l in layers.items()
            if i not in downstream and l.get("type") not in ("Parameter", "Result", "Const")}
    return ends | head if body else set()


def mark(xml_text: bytes, tail: bool = False) -> tuple[bytes, list[str]]:
    """The IR text with its fp32 layers (`fp32_layers`) marked, and their names (none marked: no
    body)."""
    root = ET.fromstring(xml_text)
    keep = fp32_layers(root, tail)
    names = []
    for layer in root.iter("layer"):
        if layer.get("id") in keep:
            rt = layer.find("rt_info")
            if rt is None:
                rt = ET.SubElement(layer, "rt_info")
            if not any(a.get("name") == ATTRIBUTE["name"] for a in rt.findall("attribute")):
                ET.SubElement(rt, "attribute", ATTRIBUTE)
            names.append(layer.get("name"))
    return ET.tostring(root, encoding="utf-8", xml_declaration=True), names


def variant(xml: Path, tail: bool = False) -> Path:
    """`xml` (an IR in the export cache) with fp32 ends (or with `tail`, its last convolutions in
    fp32), beside it and made once; its weights file is the original's, linked (or copied where
    links are not allowed). `xml` itself where no layer would be marked."""
    out = xml.with_name(f"{xml.stem}-fp32{'tail' if tail else 'ends'}{VERSION}.xml")
    if out.exists() and out.with_suffix(".bin").exists():
        return out
    text, names = mark(xml.read_bytes(), tail)
    if not names:
        return xml
    _remove_stale_temporaries(out)
    tmp_bin, tmp_xml = out.with_suffix(f".bin.{os.getpid()}.tmp"), out.with_suffix(f".xml.{os.getpid()}.tmp")
    try:
        try:
            os.link(xml.with_suffix(".bin"), tmp_bin)
        except OSError:
            shutil.copyfile(xml.with_suffix(".bin"), tmp_bin)
        tmp_xml.write_bytes(text)
        os.replace(tmp_bin, out.with_suffix(".bin"))
        os.replace(tmp_xml, out)  # the .xml last: its presence says the pair is whole
        seal(out, out.with_suffix(".bin"))
    finally:
        tmp_bin.unlink(missing_ok=True)
        tmp_xml.unlink(missing_ok=True)
    return out


def _remove_stale_temporaries(out: Path) -> None:
    """The `OUT.bin.PID.tmp` / `OUT.xml.PID.tmp` files a writer killed mid-write (kill -9, a power
    cut) left beside `out`: those of a process no longer running here, or older than `STALE_S`
    (a writer on another machine sharing the cache). The time is the inode's change time: a
    linked .bin keeps the original's modification time."""
    name = re.compile(re.escape(out.stem) + r"\.(?:bin|xml)\.(\d+)\.tmp")
    for leftover in out.parent.glob(f"{glob.escape(out.stem)}.*.tmp"):
        m = name.fullmatch(leftover.name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            st = leftover.stat()
            if not _running(int(m.group(1))) or time.time() - max(st.st_ctime, st.st_mtime) > STALE_S:
                leftover.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: another user's process, running
        return True
    return True

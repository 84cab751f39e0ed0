"""Per-call overhead of the image API around a network that runs outside torch (OpenVINO,
onnxruntime): torch's glue (conversions, clamps) runs on one thread there, since torch's spinning
OpenMP threads and the runtime's took each other's cores (espcn-x3, 64x64, 2 cores: 34 ms a call
instead of 5). Structure only: which thread count each part sees, never a time."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from upsample.inference import api
from upsample.inference.api import ImageUpscaler
from upsample.inference.upscaler import BicubicUpscaler, ModelUpscaler, torch_does_glue_only
from upsample.inference.wrappers import ResizedUpscaler
from upsample.models import registry


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def fake_runtime_upscaler(runtime: str = "openvino, fused edges", network=None) -> tuple[ModelUpscaler, list]:
    """espcn-x2's upscaler whose RGB -> RGB graph (`run_rgb`, as `auto` makes it) is a nearest
    x2 resize that records the torch threads it was called under."""
    torch.manual_seed(0)
    model = registry.create_model("espcn-x2").eval()
    up = ModelUpscaler(model, model, scale=2, name="espcn-x2", backend="auto", device=torch.device("cpu"))
    up.runtime, seen = runtime, []

    def run_rgb(x: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        if network is not None:
            network()
        return x.repeat_interleave(2, -1).repeat_interleave(2, -2)
    up.run_rgb = run_rgb
    return up, seen


def images():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    return [a, a[..., 0].copy(), a.astype(np.uint16) * 257, Image.fromarray(a),
            torch.from_numpy(a).permute(2, 0, 1).float() / 255]


def test_glue_runs_on_one_thread_around_a_network_outside_torch(two_threads):
    up, seen = fake_runtime_upscaler()
    m = ImageUpscaler(up)
    for image in images():
        seen.clear()
        m.upscale(image)
        assert seen == [1], type(image).__name__
        assert torch.get_num_threads() == 2  # given back after the call


def test_a_torch_network_keeps_the_callers_threads(two_threads):
    up, seen = fake_runtime_upscaler(runtime="torch")
    ImageUpscaler(up).upscale(images()[0])
    assert seen == [2]


def test_bicubic_alpha_runs_with_the_glue_on_one_thread_and_its_bits_do_not_move(two_threads, monkeypatch):
    """The alpha's bicubic is numpy's taps in order (data.bicubic), the same bits on any thread
    count: it runs with the glue on one torch thread (RGBA 64x64 through espcn-x3: 37-62 -> 18 ms)."""
    from upsample.data.bicubic import imresize_array
    up, seen = fake_runtime_upscaler()
    alpha_threads = []
    bicubic = BicubicUpscaler.__call__

    def recording(self, x):
        alpha_threads.append(torch.get_num_threads())
        return bicubic(self, x)
    monkeypatch.setattr(BicubicUpscaler, "__call__", recording)
    rgba = np.random.default_rng(1).integers(0, 256, (8, 10, 4), dtype=np.uint8)
    out = ImageUpscaler(up).upscale(rgba)
    assert out.shape == (16, 20, 4)
    assert seen == [1] and alpha_threads == [1]
    want = np.round(np.clip(imresize_array(rgba[None, :, :, 3].astype(np.float32) / np.float32(255), 2.0), 0, 1)
                    * np.float32(255)).astype(np.uint8)[0]
    assert np.array_equal(out[..., 3], want)


def test_only_element_wise_torch_work_is_moved_to_one_thread():
    up, _ = fake_runtime_upscaler()
    assert torch_does_glue_only(up)
    assert not torch_does_glue_only(fake_runtime_upscaler(runtime="torch")[0])
    assert not torch_does_glue_only(ResizedUpscaler(up, 3.0))  # --outscale: a torch resize
    assert not torch_does_glue_only(BicubicUpscaler(2))
    int8 = fake_runtime_upscaler(runtime="openvino")[0]
    int8.run_rgb = None  # a Y network whose colour edges (resizes) run in torch
    assert not torch_does_glue_only(int8)
    cuda = fake_runtime_upscaler()[0]
    cuda.device = torch.device("cuda")
    assert not torch_does_glue_only(cuda)


def test_threads_come_back_when_the_network_fails(two_threads):
    def fail():
        raise RuntimeError("the runtime failed")
    up, _ = fake_runtime_upscaler(network=fail)
    with pytest.raises(RuntimeError, match="the runtime failed"):
        ImageUpscaler(up).upscale(images()[0])
    assert torch.get_num_threads() == 2


def test_another_thread_keeps_its_count_while_one_upscales(two_threads):
    """torch's OpenMP count is per thread: a caller upscaling does not slow the others down."""
    inside, leave = threading.Event(), threading.Event()

    def wait():
        inside.set()
        assert leave.wait(10)
    up, seen = fake_runtime_upscaler(network=wait)
    m, after = ImageUpscaler(up), []

    def worker():
        torch.set_num_threads(2)
        m.upscale(images()[0])
        after.append(torch.get_num_threads())
    t = threading.Thread(target=worker)
    t.start()
    try:
        assert inside.wait(10)
        assert torch.get_num_threads() == 2  # this thread, while the worker is inside the network
    finally:
        leave.set()
        t.join(10)
    assert seen == [1] and after == [2]


def test_same_output_bits_as_with_the_callers_threads(monkeypatch, two_threads):
    up, _ = fake_runtime_upscaler()
    m = ImageUpscaler(up)
    new = [m.upscale(image) for image in images()]
    monkeypatch.setattr(api, "glue_threads", lambda up: contextlib.nullcontext())
    old = [m.upscale(image) for image in images()]
    for a, b in zip(old, new):
        a, b = (a.numpy(), b.numpy()) if isinstance(a, torch.Tensor) else (np.asarray(a), np.asarray(b))
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_a_picture_too_thin_for_the_fused_graph_resizes_on_the_callers_threads(two_threads):
    """Its colour and resize edges run in torch (matrix products, whose last bits can depend on
    the thread count): on the caller's threads, as before; the glue after it on one again."""
    up, seen = fake_runtime_upscaler()
    net, in_net = up.run_net, []

    def run_net(x):
        in_net.append(torch.get_num_threads())
        return net(x)
    up.run_net = run_net
    m = ImageUpscaler(up)
    out = m.upscale(np.random.default_rng(2).integers(0, 256, (2, 40, 3), dtype=np.uint8))
    assert out.shape == (4, 80, 3)
    assert seen == [] and in_net == [2]  # not the fused graph: the torch edges, 2 threads
    assert torch.get_num_threads() == 2
    with torch.no_grad():  # outside the API nothing changes either
        up(torch.rand(1, 3, 2, 40))
    assert in_net == [2, 2]


def test_the_tile_memory_probe_does_not_import_dynamo():
    """Entering a TorchDispatchMode imported torch._dynamo (1.1 s of each `upsample image` run that
    plans its tiles); the tracker opts out, and still sees the tensors alive at once."""
    import subprocess
    import sys
    code = ("import sys, torch\nfrom upsample.inference.memory import PeakTensorMemory\n"
            "x = torch.zeros(1000)\nwith PeakTensorMemory() as t:\n    y = x + 1\n    z = y * 2\n    del y\n"
            "print(t.peak, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["8000", "False"], out.stdout + out.stderr


def test_each_memory_probe_hands_free_heap_back_first(monkeypatch):
    """Resident growth is the measure of what a runtime allocates outside torch: free heap pages
    (what decoding the image freed) reused by its buffers grew nothing, and the probes of a
    16-bit picture planned 126 B/px where a tile took 650 (--max-memory 600M peaked at 788 MB)."""
    from upsample.inference import memory
    from upsample.inference.tiling import TileGeometry
    order = []
    monkeypatch.setattr(memory, "return_free_heap", lambda: order.append("trim"))
    monkeypatch.setattr(memory, "_peak_rss_of", lambda fn: (order.append("measure"), fn(), 0)[-1])
    planner = memory.MemoryPlanner(lambda tiles, maxval: torch.zeros(1), torch.device("cpu"),
                                   TileGeometry.of(2.0), 0)
    planner.bytes_per_pixel(3, np.dtype(np.uint8))
    assert order == ["trim", "measure", "trim", "measure"]


def test_a_compiled_network_under_the_tracker_is_not_traced_into_it():
    """Where dynamo is loaded (CUDA's auto may compile the network), the tracker is torch's default
    kind of mode: a compiled call under it recompiled its frames up to dynamo's limit."""
    from torch._dynamo.utils import counters

    from upsample.inference.memory import tensor_tracker
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
    compiled = torch.compile(net, backend="eager")
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        compiled(x)
        frames = counters["frames"]["total"]
        for _ in range(3):
            with tensor_tracker() as tracker:
                compiled(x)
            assert tracker.peak > 0
    assert counters["frames"]["total"] == frames


def test_a_thread_that_starts_while_another_is_in_the_glue_gets_the_callers_count_back(two_threads):
    """torch.set_num_threads also sets the count a new thread takes: a `--jobs` worker that first
    ran torch while another was in the glue took 1, gave 1 back for good (and resized alpha with
    other bits); every thread now gives back the count torch had before the first came in."""
    inside, leave = threading.Event(), threading.Event()
    calls = []

    def hold_the_first():
        calls.append(1)
        if len(calls) == 1:
            inside.set()
            assert leave.wait(10)
    up, seen = fake_runtime_upscaler(network=hold_the_first)
    m, counts = ImageUpscaler(up), {}

    def run(name):
        m.upscale(images()[0])
        counts[name] = torch.get_num_threads()
    first = threading.Thread(target=run, args=("first",))
    first.start()
    try:
        assert inside.wait(10)
        late = threading.Thread(target=run, args=("late",))  # its first torch op while first is inside
        late.start()
        late.join(10)
    finally:
        leave.set()
        first.join(10)
    fresh = []
    t = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    t.start()
    t.join(10)
    assert seen == [1, 1] and counts == {"first": 2, "late": 2} and fresh == [2]
    assert torch.get_num_threads() == 2

"""The cache folder shared by several processes, interrupted ones and damaged disks: damaged
entries are made again, an unwritable cache costs time only, `upsample cache` copes with writers."""

import errno
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from upsample import cli
from upsample.inference import fastpath
from upsample.media import cache as media_cache
from upsample.models.checkpoint import save_checkpoint
from upsample.models.registry import create_model
from upsample.runtime import auto, cache, checks, export


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("upsample.runtime.hardware.cpu_has_bf16", lambda: False)  # fp32 graphs (see conftest)


def _net(name="espcn-x3"):
    torch.manual_seed(0)
    return create_model(name)


def _runs(xml: Path) -> np.ndarray:
    x = np.random.default_rng(0).random((1, 1, 12, 12), dtype=np.float32)
    return np.asarray(cache.ov_compiled(xml)(x)[0])


@pytest.mark.parametrize("damage", ["xml-truncated", "bin-truncated", "bin-garbage", "xml-empty"])
def test_a_damaged_ir_in_the_cache_is_made_again(damage):
    net = _net()
    xml = export.cached_ir(net)
    good = _runs(xml)
    target = xml if damage.startswith("xml") else xml.with_suffix(".bin")
    data = target.read_bytes()
    target.write_bytes({"xml-truncated": data[:len(data) // 2], "bin-truncated": data[:100],
                        "bin-garbage": os.urandom(len(data) // 3), "xml-empty": b""}[damage])
    again = export.cached_ir(net)
    assert cache.readable_ir(again)
    np.testing.assert_array_equal(_runs(again), good)


def test_a_damaged_onnx_is_exported_again_when_its_ir_is_missing():
    net = _net()
    xml = export.cached_ir(net)
    good = _runs(xml)
    onnx_path = xml.with_suffix(".onnx")
    onnx_path.write_bytes(onnx_path.read_bytes()[:-500])  # truncated: still parses as protobuf
    xml.unlink()
    again = export.cached_ir(net)
    assert again == xml and cache.readable_ir(again)
    np.testing.assert_array_equal(_runs(again), good)


def test_a_damaged_onnx_for_onnxruntime_is_exported_again():
    from upsample.runtime.kinds import Backend
    from upsample.runtime.sessions import session_runner
    net = _net()
    x = torch.rand(1, 1, 12, 12)
    good = session_runner(net, Backend.ONNXRUNTIME, torch.device("cpu")).run(x)
    path = export.cached_onnx(net)
    path.write_bytes(path.read_bytes()[:2000])
    again = session_runner(net, Backend.ONNXRUNTIME, torch.device("cpu")).run(x)
    assert export.cached_onnx(net) == path
    torch.testing.assert_close(again, good, rtol=0, atol=0)


def test_an_unwritable_cache_folder_costs_one_temporary_folder_per_process(tmp_path, monkeypatch):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("UPSAMPLE_CACHE", str(blocked))
    monkeypatch.setattr(media_cache, "_OWN_DIRS", {})
    before = set(Path(tempfile.gettempdir()).glob("upsample-export-*"))
    first, second = export.cached_ir(_net("espcn-x3")), export.cached_ir(_net("espcn-x2"))
    made = set(Path(tempfile.gettempdir()).glob("upsample-export-*")) - before
    assert first.parent == second.parent and made == {first.parent}
    assert export.cached_ir(_net("espcn-x3")) == first  # found there again, not made again
    assert cache.readable_ir(first) and cache.readable_ir(second)


def test_a_read_only_cache_folder_that_exists_still_exports(monkeypatch):
    """chmod 555 (or a read-only mount): the folder is there, writing into it fails."""
    folder = cache.cache_dir()
    folder.mkdir(parents=True)
    write = export.atomic_write_bytes

    def read_only(path, data):
        if Path(path).parent == folder:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        write(path, data)
    monkeypatch.setattr(export, "atomic_write_bytes", read_only)
    monkeypatch.setattr(media_cache, "_OWN_DIRS", {})
    xml = export.cached_ir(_net())
    assert xml.parent != folder and cache.readable_ir(xml)


def test_a_blob_cache_failure_compiles_without_it(monkeypatch):
    """OpenVINO writes its blob in place: a second process compiling the same graph at once
    removed the half-written blob and this one's write failed ("cannot set permissions")."""
    import openvino as ov
    xml = export.cached_ir(_net())
    real, seen = ov.Core, []

    class Core(real):
        cached = False

        def set_property(self, props):
            seen.append(dict(props))
            self.cached = "CACHE_DIR" in props
            super().set_property(props)

        def compile_model(self, *args, **kwargs):
            if self.cached:  # every compile through the blob cache fails
                raise RuntimeError("filesystem error: cannot set permissions: No such file or directory")
            return super().compile_model(*args, **kwargs)
    monkeypatch.setattr(ov, "Core", Core)
    compiled = cache.ov_compiled(xml)
    assert compiled is not None
    # and blobs are read, not mapped: a blob rewritten in place by another process killed this one (SIGBUS)
    assert seen[0].get("ENABLE_MMAP") is False


def test_the_runner_is_built_again_when_a_cache_file_goes_under_it(monkeypatch):
    """`upsample cache clear` in another terminal while the gate runs: the graph it is about to
    compile is gone; the runner makes it again instead of failing."""
    monkeypatch.setattr("upsample.runtime.hardware.cpu_has_bf16", lambda: True)  # a gate to run
    net = _net()
    real_run, calls = auto._Gate._run, []

    def cleared_first(self, xml, precision):
        if not calls:
            calls.append(xml)
            media_cache.clear_part("export")
        return real_run(self, xml, "f32")  # fp32 only in this process (see conftest)
    monkeypatch.setattr(auto._Gate, "_run", cleared_first)
    runner = auto.cpu_runner(net, name="t", scale=3.0, quiet=True)
    assert calls and runner.graph is not None and Path(runner.graph[0]).is_file()


@pytest.mark.parametrize("stored", ["[]", "null", '"text"', '{"openvino-bf16-x2-psnr1": "garbage"}', "\0\0\0"])
def test_a_damaged_checks_file_is_measured_again(stored):
    path = checks.checks_path("k")
    path.parent.mkdir(parents=True)
    path.write_text(stored)
    value, fresh = checks.remembered_check("k", "openvino-bf16-x2-psnr1", lambda: {"db_change": 0.0, "vs_fp32_db": 60.0})
    assert fresh and value == {"db_change": 0.0, "vs_fp32_db": 60.0}
    assert json.loads(path.read_text()) == {"openvino-bf16-x2-psnr1": value}


def test_checks_stored_by_another_process_meanwhile_are_kept():
    path = checks.checks_path("k")

    def measure():  # another process finishes its own check of the same weights meanwhile
        checks.remembered_check("k", "other", lambda: 2.0)
        return 1.0
    assert checks.remembered_check("k", "mine", measure) == (1.0, True)
    assert json.loads(path.read_text()) == {"other": 2.0, "mine": 1.0}


def test_cache_clear_while_another_process_writes_into_it(monkeypatch, capsys):
    folder = cache.cache_dir()
    (folder / "plans").mkdir(parents=True)
    (folder / "a.onnx").write_bytes(b"x" * 10)
    real, calls = media_cache.shutil.rmtree, []

    def racing(path, *a, **k):  # a file appears while the folder is emptied
        calls.append(path)
        if len(calls) == 1:
            raise OSError(errno.ENOTEMPTY, "Directory not empty", str(path))
        return real(path, *a, **k)
    monkeypatch.setattr(media_cache.shutil, "rmtree", racing)
    assert cli.main(["cache", "clear"]) == 0
    assert not folder.exists() and "cleared" in capsys.readouterr().out


def test_cache_info_counts_nothing_for_a_file_renamed_meanwhile(tmp_path):
    kept = tmp_path / "kept"
    kept.write_bytes(b"x" * 7)
    assert media_cache.files_size([kept, tmp_path / ".a.onnx.x1y2.part"]) == 7


def test_cache_clear_removes_a_file_where_the_folder_should_be():
    cache.cache_dir().parent.mkdir(parents=True)
    cache.cache_dir().write_text("junk")
    media_cache.clear_part("export")
    assert not cache.cache_dir().exists()


def test_a_plan_misses_when_the_checkpoint_is_replaced_keeping_size_and_mtime(tmp_path):
    """`cp -p` / `rsync -a` of another checkpoint of the same architecture: same size, and the
    mtime can be the same; the plan must not run the old graph."""
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(_net(), ckpt)
    src = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(src)
    assert cli.main(["image", str(src), "-o", str(tmp_path / "o"), "--model", str(ckpt), "--backend", "auto"]) == 0
    args = cli.build_parser("upsample.cli.image").parse_args(
        ["image", str(src), "-o", "x", "--model", str(ckpt), "--backend", "auto"])
    assert fastpath.FastEngine.load(args) is not None
    st = ckpt.stat()
    torch.manual_seed(1)
    other = tmp_path / "other.safetensors"
    save_checkpoint(create_model("espcn-x3"), other)
    assert other.stat().st_size == st.st_size
    os.replace(other, ckpt)
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fastpath.FastEngine.load(args) is None


def test_cache_entries_are_on_the_disk_before_their_rename(tmp_path, monkeypatch):
    """A power cut after the rename must not leave a zero-filled graph or checks file of the right
    length that loads: the bytes are fsynced before the name points at them."""
    import os as _os
    from upsample.media import imageio
    synced, renamed = [], []
    real_fsync, real_replace = _os.fsync, _os.replace
    monkeypatch.setattr(imageio.os, "fsync", lambda fd: (synced.append(len(renamed)), real_fsync(fd)))
    monkeypatch.setattr(imageio.os, "replace", lambda a, b: (renamed.append(b), real_replace(a, b)))
    imageio.atomic_write_bytes(tmp_path / "checks.json", b"{}")
    assert synced == [0] and renamed == [tmp_path / "checks.json"]
    assert (tmp_path / "checks.json").read_bytes() == b"{}"


def test_a_real_error_is_said_once_not_after_a_second_build(monkeypatch):
    """Only a file gone under the run (another run's clear) builds again; a real error is said at
    once, not after the gate or the compile ran twice."""
    import openvino as ov
    builds = []

    def broken(*args, **kwargs):
        builds.append(1)
        raise RuntimeError("Exception from src/core: unsupported operation")
    monkeypatch.setattr(auto, "_cpu_runner", broken)
    with pytest.raises(RuntimeError, match="unsupported"):
        auto.cpu_runner(_net(), name="t", scale=3.0, quiet=True)
    assert len(builds) == 1
    xml, compiles = export.cached_ir(_net()), []

    class Core(ov.Core):
        def compile_model(self, *args, **kwargs):
            compiles.append(1)
            raise RuntimeError("unsupported layer type")
    monkeypatch.setattr(ov, "Core", Core)
    with pytest.raises(RuntimeError, match="unsupported layer"):
        cache.ov_compiled(xml)
    assert len(compiles) == 1


def test_an_fp32_ends_candidate_the_cache_cannot_take_is_made_in_the_runs_own_folder(monkeypatch):
    """A read-only or full cache dropped the bf16-body candidates, and the fast path then pinned
    the slower graph for good; the variant is made from a copy in this process's folder, which
    no plan names."""
    from upsample.runtime import fp32_ends
    monkeypatch.setattr(media_cache, "_OWN_DIRS", {})
    xml = export.cached_ir(_net("vdsr"))
    real = fp32_ends.variant

    def unwritable(main, tail=False):
        if main.parent == xml.parent:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(main, tail=tail)
    monkeypatch.setattr(fp32_ends, "variant", unwritable)
    out = auto._variant(xml, tail=False)
    assert out != xml and out.parent == media_cache.has_own_dir("export") and cache.readable_ir(out)

"""Regressions found reviewing this session's changes: a pickled .pth read by the inert
unpickler must leave torch's own functions as they were."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch._utils
from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

from upsample.errors import UserError
from upsample.models.checkpoint import read_state


def _unicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def _legacy_file(path, body: bytes) -> None:
    """A torch.save file of the legacy (non-zip) layout whose object pickle is `body`."""
    with open(path, "wb") as f:
        for obj in (MAGIC_NUMBER, PROTOCOL_VERSION,
                    {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                     "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(obj, f, protocol=2)
        f.write(body)
        pickle.dump([], f, protocol=2)


def test_a_pickle_cannot_set_attributes_of_torchs_rebuild_functions(tmp_path):
    # GLOBAL torch._utils._rebuild_tensor_v2; BUILD (None, {"__defaults__": (7,)}): with the real
    # function handed out, every later torch.load in the process failed ("expected dict, got int")
    body = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}" + _unicode("__defaults__")
            + b"K\x07\x85s\x86b0" + b"ctorch._utils\n_rebuild_parameter\nN}" + _unicode("__defaults__")
            + b"K\x07\x85s\x86b0" + b"}.")
    _legacy_file(tmp_path / "evil.pth", body)
    defaults = torch._utils._rebuild_tensor_v2.__defaults__, torch._utils._rebuild_parameter.__defaults__
    try:
        with pytest.raises(UserError):
            read_state(tmp_path / "evil.pth")
        assert (torch._utils._rebuild_tensor_v2.__defaults__,
                torch._utils._rebuild_parameter.__defaults__) == defaults
    finally:  # leave the process usable for the other tests whatever happened
        torch._utils._rebuild_tensor_v2.__defaults__ = defaults[0]
        torch._utils._rebuild_parameter.__defaults__ = defaults[1]
    torch.save({"w": torch.ones(2)}, tmp_path / "good.pth")
    assert torch.equal(read_state(tmp_path / "good.pth")[0]["w"], torch.ones(2))


def test_weights_marked_untrained_leave_no_plan_for_the_fast_path(tmp_path, monkeypatch):
    """A plan (`fastpath.remember`) for a file pruned from random weights let the next
    `upsample image` without --allow-untrained run it silently: the plan hit skipped the refusal."""
    from upsample.inference.load import load_upscaler
    from upsample.models.checkpoint import save_checkpoint
    from upsample.models.registry import create_model
    monkeypatch.setenv("UPSAMPLE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("UPSAMPLE_ALLOW_UNTRAINED", raising=False)
    path = tmp_path / "pruned.safetensors"
    save_checkpoint(create_model("espcn-rgb-x2"), path, extra={"untrained": True})
    with pytest.raises(UserError, match="untrained"):
        load_upscaler(str(path), backend="auto", device="cpu", precision="fp32")
    up = load_upscaler(str(path), backend="auto", device="cpu", precision="fp32", allow_untrained=True)
    assert up.from_file is False
    save_checkpoint(create_model("espcn-rgb-x2"), tmp_path / "trained.safetensors")
    trained = load_upscaler(str(tmp_path / "trained.safetensors"), backend="auto", device="cpu", precision="fp32")
    assert trained.from_file is True


def test_a_damaged_zip_name_is_one_line_not_a_traceback(tmp_path):
    """A .pth whose zip directory holds a name that is not UTF-8 (a flipped byte): the TorchScript
    check after torch.load's failure raised UnicodeDecodeError out of `read_state`."""
    import zipfile
    path = tmp_path / "model.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/d\u00e9ta.pkl", b"\x80\x02}.")
    path.write_bytes(path.read_bytes().replace("\u00e9".encode(), b"\xc3\x28"))
    with pytest.raises(UserError, match="corrupt"):
        read_state(path)

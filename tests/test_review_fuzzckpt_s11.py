"""Damaged and foreign model files and recipes (review s11): weights that load but compute a
black or noisy picture (NaN/inf, integer tensors, all zeros), metadata naming what this version
lacks, pickles that are no torch file or that call os.system, and recipes in other encodings,
empty, or with model.kwargs the architecture cannot build."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from upsample import cli
from upsample.errors import UserError
from upsample.models.checkpoint import load_checkpoint, save_checkpoint
from upsample.models.registry import create_model
from upsample.training.config import load_config

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.toml"


def _saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(create_model("espcn-x2"), tmp_path / "m.safetensors")


def _rewritten(path: Path, change) -> Path:
    """`path` saved again with `change(tensors, metadata)` applied."""
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    change(tensors, meta)
    out = path.with_name("changed.safetensors")
    save_file(tensors, str(out), meta)
    return out


def _nan(t, m):
    t["first_part.0.bias"][3] = float("nan")


def _inf(t, m):
    t["last_part.0.weight"].view(-1)[0] = float("inf")


def _int8(t, m):
    t["first_part.0.weight"] = (t["first_part.0.weight"] * 100).to(torch.int8)


def _zeros(t, m):
    for k in t:
        t[k] = torch.zeros_like(t[k])


@pytest.mark.parametrize("change, message", [
    (_nan, "1 NaN or infinite weight value "), (_inf, "NaN or infinite"),
    (_int8, r"no plain float weights: first_part.0.weight \(int8\)"), (_zeros, "only zeros")])
def test_weights_that_would_write_a_black_or_noisy_picture_are_refused(tmp_path, change, message):
    with pytest.raises(UserError, match=message):
        load_checkpoint(_rewritten(_saved(tmp_path), change))


def test_a_nan_state_dict_is_one_line_from_image_and_writes_nothing(tmp_path, capsys):
    """It wrote an all-black PNG with exit 0."""
    from PIL import Image
    torch.manual_seed(0)
    state = create_model("espcn-x2").state_dict()
    state["first_part.0.bias"].fill_(float("nan"))
    torch.save({"params_ema": state}, tmp_path / "net_g.pth")
    Image.new("RGB", (12, 10), (90, 120, 200)).save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    rc = cli.main(["image", str(tmp_path / "in.png"), "-o", str(out), "--model", str(tmp_path / "net_g.pth"),
                   "--backend", "torch"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and "64 NaN or infinite" in err and "Traceback" not in err


@pytest.mark.parametrize("meta_change, message", [
    ({"arch": "nosuch"}, "names architecture 'nosuch', which this version"),
    ({"kwargs": "[1, 2]"}, "kwargs is a list, not a JSON object")])
def test_metadata_naming_what_this_version_lacks_is_one_error(tmp_path, meta_change, message):
    """A KeyError / TypeError traceback before."""
    path = _rewritten(_saved(tmp_path), lambda t, m: m.update(meta_change))
    with pytest.raises(UserError, match=message):
        load_checkpoint(path)


@pytest.mark.parametrize("odd, message", [
    (lambda t: t.to("meta"), r"\(meta, no data\)"), (lambda t: t.to_sparse(), r"\(sparse_coo\)"),
    (lambda t: t > 0, r"\(bool\)")])
def test_tensors_without_plain_float_data_are_named(tmp_path, odd, message):
    """A meta or sparse tensor crashed inside load_state_dict; a bool one was cast silently."""
    state = create_model("espcn-x2").state_dict()
    state["first_part.0.weight"] = odd(state["first_part.0.weight"])
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(UserError, match=message):
        load_checkpoint(tmp_path / "odd.pth")


def test_fp8_and_fp64_weights_still_load(tmp_path):
    for dtype in (torch.float8_e4m3fn, torch.float64):
        torch.manual_seed(0)
        state = {k: v.to(dtype) for k, v in create_model("espcn-x2").state_dict().items()}
        torch.save(state, tmp_path / "w.pth")
        model, _ = load_checkpoint(tmp_path / "w.pth")
        assert next(model.parameters()).dtype == torch.float32


def test_a_file_of_no_tensors_says_so(tmp_path):
    save_file({}, str(tmp_path / "e.safetensors"))
    with pytest.raises(UserError, match="holds no tensors"):
        load_checkpoint(tmp_path / "e.safetensors")


class _Evil:
    def __reduce__(self):
        return os.system, (f"touch {self.mark}",)


@pytest.mark.parametrize("wrap", [lambda e: e, lambda e: {"state_dict": {}, "x": e}])
def test_a_pickle_that_calls_os_system_is_named_and_never_run(tmp_path, wrap):
    """It said "Weights only load failed; the file is corrupt or truncated"."""
    evil = _Evil()
    evil.mark = tmp_path / "ran"
    torch.save(wrap(evil), tmp_path / "evil.pth")
    (tmp_path / "plain.pth").write_bytes(pickle.dumps(evil, protocol=2))
    for name in ("evil.pth", "plain.pth"):
        with pytest.raises(UserError, match=r"would call (posix|nt)\.system .*nothing of it was loaded or run"):
            load_checkpoint(tmp_path / name)
    assert not evil.mark.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_python_pickle_that_torch_did_not_write_is_named(tmp_path, protocol):
    """"Invalid magic number; corrupt file?" (protocol 2) and "holds more than tensors ()"."""
    (tmp_path / "d.pth").write_bytes(pickle.dumps({"lr": 0.1, "epoch": 3}, protocol=protocol))
    with pytest.raises(UserError, match=r"is a Python pickle of a dict \(keys: lr, epoch\), not a PyTorch"):
        load_checkpoint(tmp_path / "d.pth")


def test_a_legacy_torch_file_cut_short_is_still_called_corrupt(tmp_path):
    torch.save(create_model("espcn-x2").state_dict(), tmp_path / "a.pth", _use_new_zipfile_serialization=False)
    data = (tmp_path / "a.pth").read_bytes()
    (tmp_path / "a.pth").write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "a.pth")


# ------------------------------------------------------------------------------- recipes


def _recipe(tmp_path: Path, text: str, encoding: str = "utf-8", name: str = "r.toml") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


def test_a_utf8_bom_recipe_is_read(tmp_path):
    """Notepad's BOM was "invalid TOML: Invalid statement (at line 1, column 1)"."""
    cfg = load_config(_recipe(tmp_path, "\ufeff" + TINY.read_text()))
    assert cfg.model.name == "espcn-x2" and cfg.train.steps == 30


@pytest.mark.parametrize("encoding, message", [
    ("utf-16", "it is UTF-16 text; TOML is UTF-8"), ("latin-1", r"not UTF-8 text \(byte 0xe9 on line 2\)")])
def test_a_recipe_in_another_encoding_says_which(tmp_path, encoding, message):
    with pytest.raises(UserError, match=message):
        load_config(_recipe(tmp_path, '[model]\n# réglages\nname = "espcn-x2"\n', encoding))


@pytest.mark.parametrize("text", ["", "# only a comment\n\n"])
def test_an_empty_recipe_is_refused_not_trained_on_defaults(tmp_path, text):
    with pytest.raises(UserError, match=r"is empty .*\[model\] name = .*upsample train espcn-x2"):
        load_config(_recipe(tmp_path, text))
    with pytest.raises(UserError, match=r"is empty"):  # a --set of steps alone trained the defaults too
        load_config(_recipe(tmp_path, text), ["train.steps=5"])
    cfg = load_config(_recipe(tmp_path, text), ["model.name=espcn-x3", "train.steps=5"])  # says what to train
    assert (cfg.model.name, cfg.train.steps) == ("espcn-x3", 5)


def test_a_key_given_twice_hints_at_it(tmp_path):
    with pytest.raises(UserError, match=r"line 3.*a key given twice"):
        load_config(_recipe(tmp_path, '[data]\nbatch_size = 8\nbatch_size = 4\n'))


@pytest.mark.parametrize("kwargs, message", [
    ('{scale = "3"}', "model.kwargs.scale must be int, got str '3'"),
    ("{num_in_ch = 1.0}", "model.kwargs.num_in_ch must be int, got float"),
    ("{num_feats = 32}", "did you mean model.kwargs.num_feat"),
    ("{num_in_ch = 4}", "4 input and 4 output channels")])
def test_model_kwargs_the_architecture_cannot_build_name_the_key(tmp_path, kwargs, message):
    """num_in_ch = 4 trained into a traceback; a str scale failed inside torch."""
    with pytest.raises(UserError, match=message):
        load_config(_recipe(tmp_path, f'[model]\nname = "espcn-x2"\nkwargs = {kwargs}\n'))
    assert load_config(_recipe(tmp_path, '[model]\nname = "espcn-x2"\nkwargs = {num_feat = 32}\n')
                       ).model.kwargs == {"num_feat": 32}


def test_a_flipped_bit_in_a_torch_files_tensor_is_caught_by_its_checksum(tmp_path):
    """torch.load does not check the zip's CRC-32: the file loaded other weights without a word."""
    torch.manual_seed(0)
    state = create_model("espcn-x2").state_dict()
    torch.save(state, tmp_path / "w.pth")
    data = bytearray((tmp_path / "w.pth").read_bytes())
    at = bytes(data).index(state["first_part.2.weight"].numpy().tobytes()) + 1001
    data[at] ^= 0x10
    (tmp_path / "bad.pth").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"is damaged: Bad CRC-32 .*copy the file again"):
        load_checkpoint(tmp_path / "bad.pth")
    load_checkpoint(tmp_path / "w.pth")  # the whole file still loads

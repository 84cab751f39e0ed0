"""Checkpoints: our safetensors files with metadata, and state dicts from the ecosystem.

Our format: safetensors (loading never runs code) whose metadata holds the architecture, its
constructor keywords (JSON), scale, input mode, registry name, training config and an `extra`
JSON (e.g. an eval summary). Written atomically (temp file + os.replace), optionally in fp16.

Foreign files (.pth/.pt/...) are read with `torch.load(weights_only=True)`: BasicSR
(`params_ema` preferred over `params`; other EMA copies, `state_dict_ema`, `ema_state_dict`,
`model_ema.`..., over their plain weights too), `state_dict`/`model` wrappers (Lightning's .ckpt),
the `module.` (DDP), `_orig_mod.` (torch.compile), `model.`/`net.` and `netG.`/`net_g.`/`generator.`
prefixes (nested ones too; of a GAN's generator and discriminator, the generator), counters beside
the weights (thop's, AveragedModel's `n_averaged`, `num_batches_tracked`) passed over, original-ESRGAN
(`model.N`, `RRDB_trunk`) names, the VapSR beta names, the common VDSR port and Lornatang's
ESPCN/VDSR names are mapped to ours; a file that weights_only refuses because it pickles objects
(a whole nn.Module, as twtygqyy's VDSR; an argparse.Namespace beside the weights) is read again
with every class it names replaced by an inert placeholder (`read_pickled_modules`: nothing of it
is imported or run) and its modules' tensors taken;
the architecture and its keywords are then detected from tensor names and shapes (catid's VapSR
variant, in VapSR's names, by its 3x3 `proj_1`: see models/vapsr.py); another project's network
we recognise but do not run (registry.UNSUPPORTED) is named in the refusal. Loading is always
strict: a mismatch is one UserError naming the missing/unexpected keys. The foreign names and the
shapes are each architecture's own knowledge (`rename_foreign`, `detect` in its file);
registry.FOREIGN_RENAMERS and registry.DETECTORS list them in order of precedence.

`interpolate_checkpoints` (the `upsample interpolate` command): parameter-wise (1 - a) A + a B.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import types
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from . import registry, rrdbnet
from .state_keys import ONNX_HINT
from ..errors import UserError
from ..media.imageio import atomic_output

FORMAT = "upsample"
FORMAT_VERSION = "1"
# In order of preference: an EMA's weights first, as BasicSR's `params_ema` (timm's
# `state_dict_ema`, `model_ema`, `ema`...); `model_state_dict` is PyTorch's tutorial name,
# `module` DeepSpeed's.
_WRAPPER_KEYS = ("params_ema", "state_dict_ema", "model_ema", "ema_state_dict", "ema_model", "ema",
                 "params", "state_dict", "model_state_dict", "model", "net_g", "netG", "generator",
                 "network", "net", "module")


# ---------------------------------------------------------------------------------- saving


def save_checkpoint(model: nn.Module, path: str | os.PathLike, *, config: dict | None = None,
                    extra: dict | None = None, fp16: bool = False) -> Path:
    """Write `model`'s weights and how to rebuild it to a .safetensors file, atomically."""
    from safetensors.torch import save
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    spec = getattr(model, "upsample_spec", None)
    if spec is None:  # a bare architecture instance: recover its keywords from its tensors
        arch, kwargs = detect_arch(state, str(path), scale=getattr(model, "scale", None))
        spec = registry.spec_for(arch, kwargs, registry.match_variant(arch, kwargs))
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": spec.arch,
            "kwargs": json.dumps(spec.kwargs, sort_keys=True), "name": spec.name or "",
            "scale": json.dumps(spec.scale), "input": spec.input, "kind": spec.kind,
            "dtype": "float16" if fp16 else "float32"}
    if spec.colorspace != "rgb":  # absent = rgb, so older files and readers stay as they were
        meta["colorspace"] = spec.colorspace
    if config is not None:
        meta["config"] = json.dumps(config, default=str)
    if extra is not None:
        meta["extra"] = json.dumps(extra, default=str)
    with atomic_output(path) as tmp:
        tmp.write_bytes(_sorted_header(save(state, metadata=meta)))
    return path


def _sorted_header(data: bytes) -> bytes:
    """safetensors bytes with their JSON header's keys sorted: the library writes its metadata
    (and tensor table) in hash order, which differs run to run, so the same model saved twice
    gave files that differed in bytes (a checksum, a build cache or rsync saw a change). The
    tensor bytes and their offsets are unchanged; the header is padded to 8 bytes as the library's."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":"),
                        ensure_ascii=False).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data[8 + n:]


# --------------------------------------------------------------------------------- reading


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 2 <= n < 100_000_000 and head[8:9] == b"{"


def marked_untrained(path: str | os.PathLike) -> bool:
    """Whether `path` is our checkpoint made from random weights (`prune --allow-untrained` of a
    model with none shipped): its `extra` says so. Reads the header only; False for anything else."""
    path = Path(path)
    if not (path.is_file() and path.suffix.lower() == ".safetensors"):
        return False
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            extra = (f.metadata() or {}).get("extra")
        return bool(extra and json.loads(extra).get("untrained"))
    except Exception:  # noqa: BLE001 - unreadable: loading it says why, in its own words
        return False


def read_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, safetensors metadata or {}) of a checkpoint file; UserError for anything unreadable."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if path.is_dir():  # a run dir: name the weights it holds
        held = [path / n for n in ("best.safetensors", "last.safetensors") if (path / n).is_file()]
        raise UserError(f"{path} is a folder, not a checkpoint file" + (
            f"; a training run's: give {held[0]}" if held else ""))
    if not path.is_file():
        raise UserError(f"not a checkpoint file: {path}")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty")
    try:  # first: safetensors reports an unreadable file as "No such file or directory"
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        why = "permission denied (check the file's owner and mode)" if isinstance(exc, PermissionError) \
            else (exc.strerror or str(exc))
        raise UserError(f"cannot read checkpoint {path}: {why}") from None
    torch_file = magic == b"PK\x03\x04" or magic[:1] == b"\x80"  # torch zip archive / legacy pickle
    # by its content: a torch file named .safetensors is read as what it is
    if _is_safetensors(path) or (path.suffix.lower() == ".safetensors" and not torch_file):
        return _read_safetensors(path)
    if not torch_file:
        raise UserError(f"cannot read {path}: not a checkpoint (neither safetensors nor a PyTorch file)")
    try:  # from an open file: torch.load reads a path named *.safetensors as safetensors
        with warnings.catch_warnings(), open(path, "rb") as f:
            warnings.simplefilter("ignore")  # e.g. notes about the pickle protocol version
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of many types; weights_only refuses code
        failed = exc
    else:
        if magic == b"PK\x03\x04":
            _check_zip_checksums(path)
        return unwrap_state(obj, path), {}
    return _read_refused_torch_file(path, failed), {}  # outside `except`: its refusal chains nothing


def _check_zip_checksums(path: Path) -> None:
    """A UserError for a torch zip file whose records fail their CRC-32: torch.load does not check
    them, so a flipped bit in a tensor's bytes (a bad disk, a broken copy) loaded other weights
    without a word. Records saved without a checksum (CRC 0) are passed over."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.CRC == 0:  # torch's save config may skip the CRC (compute_crc32=False)
                    continue
                with z.open(info) as f:  # raises BadZipFile at the end of a record that fails
                    while f.read(1 << 24):
                        pass
    except zipfile.BadZipFile as exc:
        raise UserError(f"{path} is damaged: {exc} (the bytes differ from those saved: a bad disk or "
                        "a broken copy); copy the file again from its source") from None
    except (zipfile.LargeZipFile, OSError, ValueError, EOFError):
        return  # torch read it: whatever zipfile cannot open is no checksum failure


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for every corruption
        raise UserError(f"cannot read {path}: {str(exc).splitlines()[0]}; "
                        "the file is corrupt or not a safetensors checkpoint") from None
    return tensors, meta


def _read_refused_torch_file(path: Path, exc: Exception) -> dict[str, torch.Tensor]:
    """The state dict of a file `torch.load(weights_only=True)` refused with `exc`, where it is a
    pickled model read inertly; else the UserError that says what the file is."""
    text = str(exc)
    blocked = re.search(r"unsupported GLOBAL (\S+) whose module (\S+) is blocked", text)
    if blocked:  # os.system, subprocess...: not a pickled model, nothing to read inertly
        raise UserError(f"cannot read {path}: unpickling it would call {blocked.group(1)} (module "
                        f"{blocked.group(2)}, which can run code), so nothing of it was loaded or run; "
                        "use a plain state dict (torch.save(model.state_dict(), ...)) from a source you trust")
    refused = re.search(r"WeightsUnpickler error: \s*(.*?)(?: was not an allowed|\.?\n|$)", text)
    if refused:
        if path.name == "last_state.pt":  # the trainer's resume state: its weights lie beside it
            raise UserError(f"{path} is a training run's resume state; use the weights beside it: "
                            f"{path.with_name('best.safetensors')} or {path.with_name('last.safetensors')}")
        state = read_pickled_modules(path)
        if state is not None:
            return state
        _refuse_plain_pickle(path)
        raise UserError(f"cannot read {path}: it holds more than tensors ({refused.group(1)}) and "
                        "unpickling it could run code; re-save it as a plain state dict")
    if _is_torchscript(path):
        raise UserError(f"{path} is a TorchScript module (torch.jit.save), not a state dict: upsample "
                        "runs no TorchScript; save its state_dict() with torch.save, or "
                        f"{ONNX_HINT.removeprefix('or ')}")
    if (names := _zip_names(path)) is not None and not any(n.endswith("data.pkl") for n in names):
        raise UserError(f"{path} is a zip archive of other files ({', '.join(names[:3])}"
                        f"{' ...' if len(names) > 3 else ''}), not a PyTorch checkpoint; give the "
                        ".pth/.safetensors file itself (unpack the archive first)")
    _refuse_plain_pickle(path)
    reason = text.splitlines()[0].split(". ")[0] if text else ""
    if not re.search("[A-Za-z]{3}", reason):  # a bare number (a pickle's unknown memo key)
        reason = f"{type(exc).__name__} {reason}".strip()
    raise UserError(f"cannot read {path} as a PyTorch checkpoint: {reason}; the file is corrupt "
                    "or truncated")


# the first object torch.save's legacy (non-zip) format pickles
_TORCH_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


def _refuse_plain_pickle(path: Path) -> None:
    """A UserError for a Python pickle that torch.save did not write (pickle.dump of a dict, a
    list, other tools' objects), which torch reported as "Invalid magic number; corrupt file?";
    returns for a torch file. The first object is read inertly, as `read_pickled_modules` does."""
    if _zip_names(path) is not None:
        return
    try:
        with open(path, "rb") as f:
            first = _InertUnpickler(f).load()
    except Exception:  # noqa: BLE001 - not even a pickle: the caller says corrupt
        return
    if isinstance(first, int) and first == _TORCH_LEGACY_MAGIC:
        return
    what = getattr(first, "origin", None) or (
        f"a dict (keys: {_preview(first)})" if isinstance(first, Mapping) else f"a {type(first).__name__}")
    raise UserError(f"{path} is a Python pickle of {what}, not a PyTorch checkpoint (torch.save): save "
                    "the model's weights with torch.save(model.state_dict(), ...)")


# ------------------------------------------------------- pickled model objects, read inertly

# What reading a pickled model may call: torch's tensor rebuilders and plain containers. Every
# other class or function the file names becomes a `_Placeholder`: never imported, never run.
_INERT_CALLABLES = {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
                    ("__builtin__", "set"), ("__builtin__", "frozenset"),
                    ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
                    ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
                    ("torch.nn.parameter", "Parameter")}


class _Placeholder:
    """An object of a class the file names, kept as data: its arguments and pickled state."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    # a dict or list subclass (Lightning's AttributeDict of hyper-parameters) is pickled as an
    # empty object, then its items: kept as data too
    def __setitem__(self, key, value):
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value):
        self.__dict__.setdefault("values", []).append(value)

    def extend(self, values):
        for v in values:
            self.append(v)


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _INERT_CALLABLES:
            found = super().find_class(module, name)
            # a function stands in fresh: the pickle's BUILD may set attributes (__defaults__) on
            # what it names, and torch's own function would keep them for every later load
            return found if isinstance(found, type) else _forwarder(found)
        return type(str(name), (_Placeholder,), {"origin": f"{module}.{name}"})


def _forwarder(function):
    def forward(*args, **kwargs):
        return function(*args, **kwargs)
    return forward


_INERT_PICKLE = types.ModuleType("inert_pickle")  # the `pickle_module` torch.load is given
_INERT_PICKLE.Unpickler = _InertUnpickler
_INERT_PICKLE.load = lambda f, **kwargs: _InertUnpickler(f, **kwargs).load()


def read_pickled_modules(path) -> dict[str, torch.Tensor] | None:
    """The state dict of a .pth that holds pickled nn.Module objects rather than tensors alone
    (twtygqyy's VDSR saves {"epoch": 50, "model": DataParallel(Net())}), read without importing or
    running any class it names; None when no state dict is found that way."""
    try:
        with warnings.catch_warnings(), open(path, "rb") as f:
            warnings.simplefilter("ignore")  # e.g. "couldn't retrieve source code for container"
            obj = torch.load(f, map_location="cpu", weights_only=False, pickle_module=_INERT_PICKLE)
        if isinstance(obj, Mapping):
            obj = {k: _module_tensors(v) or v for k, v in obj.items()}
        return unwrap_state(_module_tensors(obj) or obj, path)
    except Exception:  # noqa: BLE001 - whatever fails here, the caller's refusal is the answer
        return None


def _module_tensors(obj, prefix: str = "", depth: int = 0) -> dict[str, torch.Tensor]:
    """The state dict of a pickled nn.Module (a placeholder whose state has `_parameters`), as
    `state_dict()` names it; {} for anything else."""
    state = getattr(obj, "state", None) if isinstance(obj, _Placeholder) else None
    if not isinstance(state, Mapping) or depth > 64:
        return {}
    skip = state.get("_non_persistent_buffers_set")
    skip = skip if isinstance(skip, (set, frozenset)) else set()
    out = {}
    for group in ("_parameters", "_buffers"):
        tensors = state.get(group)
        if isinstance(tensors, Mapping):
            out.update((prefix + k, v) for k, v in tensors.items()
                       if isinstance(v, torch.Tensor) and k not in skip)
    children = state.get("_modules")
    for k, child in (children.items() if isinstance(children, Mapping) else ()):
        out.update(_module_tensors(child, f"{prefix}{k}.", depth + 1))
    return out


def _zip_names(path: Path) -> list[str] | None:
    """The member names of a zip archive that opens; None for anything else."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        return None


def _is_torchscript(path: Path) -> bool:
    """A torch.jit.save archive (its `constants.pkl` is what torch.load looks for, too)."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in z.namelist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        return False  # a damaged archive (a name that is not UTF-8: ValueError): not one


def unwrap_state(obj, path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded .pth: the first of `_WRAPPER_KEYS` (BasicSR `params_ema` >
    `params`, ...) that holds one, at any depth; UserError naming what the file holds instead."""
    found = _find_state(obj)
    if found is not None:
        return dict(found)
    if isinstance(obj, Mapping) and {"state", "param_groups"} <= set(obj):
        raise UserError(f"{path} is an optimizer's state (torch.optim state_dict), with no network weights; "
                        "give the model's weights file (its state_dict) instead")
    if isinstance(obj, Mapping) and any(re.search("optim|schedul", str(k), re.I) for k in obj):
        raise UserError(f"{path} holds no network weights, only a training state (keys: {_preview(obj)}); "
                        "use the weights file saved beside it (BasicSR: models/net_g_N.pth, not "
                        "training_states/N.state)")
    if isinstance(obj, Mapping) and "shadow_params" in obj:
        raise UserError(f"{path} is an EMA helper's state (torch_ema's shadow_params: tensors without their "
                        "names); copy it into the model (ema.copy_to) and save model.state_dict()")
    if isinstance(obj, Mapping) and not obj:
        raise UserError(f"{path} holds an empty dict, no weights; give a file saved from a trained "
                        "model's state_dict()")
    what = f"keys: {_preview(obj)}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
    raise UserError(f"{path} holds no state dict of tensors ({what}); give a file of a model's "
                    "state_dict() (torch.save(model.state_dict(), ...))")


def _find_state(obj, depth: int = 0) -> Mapping | None:
    """`obj` if it is a state dict, else the first wrapper's (in `_WRAPPER_KEYS` order) that
    holds one: an EMA wrapper of counters and a list of tensors is passed over."""
    if not isinstance(obj, Mapping) or depth > 8:
        return None
    if _is_state(obj):
        return obj
    wrapped = next((found for k in _WRAPPER_KEYS if (found := _find_state(obj.get(k), depth + 1)) is not None),
                   None)
    if wrapped is not None:
        return wrapped
    # a state dict with its counters put in beside the tensors (state["epoch"] = N; torch.save(state));
    # not one with objects beside it
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    counters = all(isinstance(v, (int, float, str, bool, type(None))) for k, v in obj.items() if k not in tensors)
    return tensors if counters and any(k.endswith(".weight") for k in tensors) else None


def _is_state(d: Mapping) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def _preview(obj) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)[:6]
        return ", ".join(map(str, keys)) + (" ..." if len(obj) > 6 else "")
    return type(obj).__name__


# ----------------------------------------------------------------------- ecosystem key names


# Prefixes a wrapper puts before every name: DataParallel/DDP (`module.`), torch.compile
# (`_orig_mod.`), a Lightning module's attribute (`model.`, `net.`, or its generator's), an EMA copy's.
_WHOLE_PREFIXES = ("module.", "_orig_mod.", "model.", "net.", "network.", "netG.", "net_g.", "generator.",
                   "gen.", "model_ema.", "ema_model.", "ema.")
# A GAN's module holds both networks, a Lightning module its network and the losses' (VGG,
# LPIPS); only the generator upscales.
_GENERATOR_GROUPS = ("generator.", "net_g.", "netG.", "gen.", "model.", "net.", "network.")
_DISCRIMINATOR_GROUPS = ("discriminator.", "net_d.", "netD.", "disc.", "loss.", "losses.", "criterion.",
                         "loss_fn.", "perceptual_loss.", "cri_perceptual.", "vgg.", "lpips.")
# An EMA copy of the generator beside it (a Lightning module's `model_ema`, timm's ModelEmaV2):
# its weights are the ones to run, as BasicSR's `params_ema` are.
_EMA_GROUPS = ("model_ema.", "ema_model.", "ema.", "net_g_ema.", "netG_ema.", "generator_ema.")
# The original ESRGAN's own names are `model.N...` (rrdbnet.rename_foreign reads them).
_ESRGAN_SEQUENTIAL = re.compile(r"^model\.\d+\.")
# Counters some tools add, which no network computes with: thop's profile (`total_ops`,
# `total_params` in every module), torch.optim.swa_utils.AveragedModel's `n_averaged` beside its
# `module.` (Lornatang's `ema_state_dict`), and BatchNorm's step count (kept where the model has one).
_COUNTERS = ("total_ops", "total_params")
_TOP_COUNTERS = ("n_averaged",)
_BOOKKEEPING = "num_batches_tracked"


def normalize_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map known foreign parameter names onto ours (BasicSR-style); unknown names are kept."""
    state = {k: v for k, v in state.items()
             if k.rpartition(".")[2] not in _COUNTERS and k not in _TOP_COUNTERS} or state
    state = strip_wrappers(state)
    for rename_foreign in registry.FOREIGN_RENAMERS:
        renamed = rename_foreign(state)
        if renamed is not None:
            return renamed
    return state


def strip_wrappers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` without its wrappers' prefixes, outermost first, until none applies (they nest:
    a compiled model under DDP in a Lightning module); of a GAN's generator and discriminator
    groups, the generator's, and of a generator and its EMA copy, the copy."""
    while state:
        prefix = next((p for p in _WHOLE_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix == "model." and any(_ESRGAN_SEQUENTIAL.match(k) for k in state):
            prefix = None
        prefix = prefix or _ema_group(state) or _generator_group(state)
        if prefix is None:
            return state
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _ema_group(state: dict[str, torch.Tensor]) -> str | None:
    """The EMA copy's prefix when there is one and every other name is a generator's (or a
    discriminator's, a loss's)."""
    emas = [p for p in _EMA_GROUPS if any(k.startswith(p) for k in state)]
    if len(emas) != 1:
        return None
    rest = [k for k in state if not k.startswith(emas[0])]
    return emas[0] if all(k.startswith(_GENERATOR_GROUPS + _DISCRIMINATOR_GROUPS) for k in rest) else None


def _generator_group(state: dict[str, torch.Tensor]) -> str | None:
    """The generator's prefix when every name is in one generator group or a discriminator's
    or loss's."""
    gens = {p for p in _GENERATOR_GROUPS if any(k.startswith(p) for k in state)}
    if len(gens) != 1:
        return None
    gen = gens.pop()
    rest = [k for k in state if not k.startswith(gen)]
    if gen == "model." and any(_ESRGAN_SEQUENTIAL.match(k) for k in state):
        return None  # ESRGAN's own `model.N` names, not a wrapper's
    return gen if rest and all(k.startswith(_DISCRIMINATOR_GROUPS) for k in rest) else None


# ---------------------------------------------------------------- detection from tensors


def detect_arch(state: dict[str, torch.Tensor], source: str = "checkpoint", *,
                scale: int | None = None) -> tuple[str, dict]:
    """(arch, constructor keywords) from tensor names and shapes; UserError when nothing fits.
    Each architecture in registry.DETECTORS is asked in turn; the first to recognise it wins.
    `scale`: the model's, where known, for the one layout whose tensors do not tell it (RRDBNet
    with one upsampling conv: ESRGAN's x2 or our x3)."""
    if not state:
        raise UserError(f"{source} holds no tensors: an empty checkpoint; give a file saved from a "
                        "trained model")
    for arch, detect in registry.DETECTORS:
        try:
            kwargs = detect(state)
        except UserError as exc:  # the names are this architecture's, the shapes fit none of it
            raise UserError(f"{source}: {exc}") from None
        except (KeyError, IndexError, ZeroDivisionError) as exc:
            raise UserError(f"{source}: tensor names look like a known architecture but {exc} "
                            "does not fit it") from None
        if kwargs is not None:
            return arch, (rrdbnet.at_scale(kwargs, scale) if arch == "rrdbnet" else kwargs)
    for recognise in registry.UNSUPPORTED:  # another project's network we know but do not run
        if (why := recognise(state)) is not None:
            raise UserError(f"{source}: {why}")
    sample = ", ".join(sorted(state)[:5])
    generators = [a for a in registry.ARCHS if a not in registry.DISCRIMINATORS]  # what `image` runs
    raise UserError(f"{source}: cannot tell the architecture from its tensors ({sample}, ...); "
                    f"known: {', '.join(generators)}; {ONNX_HINT}")


# --------------------------------------------------------------------------------- loading


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True), with every mismatch reported as one UserError."""
    own = model.state_dict()
    # BatchNorm's step count, which no forward reads: one the file lacks (PyTorch < 0.4.1) keeps
    # the model's, one the model lacks (a file with a BatchNorm the model has not) is passed over
    state = {**{k: v for k, v in own.items() if k.endswith(_BOOKKEEPING)},
             **{k: v for k, v in state.items() if k in own or not k.endswith(_BOOKKEEPING)}}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        arch = model.upsample_spec.arch if hasattr(model, "upsample_spec") else type(model).__name__

        def few(items):
            return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")
        parts = [f"{label} {few(items)}" for label, items in
                 (("missing keys:", missing), ("unexpected keys:", unexpected), ("shape mismatches:", shapes))
                 if items]
        raise UserError(f"{source} does not fit {arch}: " + "; ".join(parts))
    model.load_state_dict(_checked_weights(own, state, source), strict=True)


def _checked_weights(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], source: str
                     ) -> dict[str, torch.Tensor]:
    """`state` in the model's dtypes; a UserError for weights that would load but compute garbage:
    non-float tensors where the model's are float (a quantized or damaged file: they were cast
    silently, and the picture was noise), tensors without plain data (sparse, meta), NaN or
    infinity (a diverged run: a black picture written with exit 0), only zeros."""
    odd = [f"{k} ({_odd_kind(state[k], own[k])})" for k in own if _odd_kind(state[k], own[k])]
    if odd:
        raise UserError(f"{source} holds tensors that are no plain float weights: {', '.join(odd[:3])}"
                        f"{' ...' if len(odd) > 3 else ''}; a quantized, sparse or damaged file: give "
                        "the float weights (model.state_dict())")
    out = {k: state[k].to(own[k].dtype) for k in own}
    floats = [k for k in own if own[k].is_floating_point()]
    bad = {k: int((~torch.isfinite(out[k])).sum()) for k in floats}
    bad = {k: n for k, n in bad.items() if n}
    if bad:
        count = sum(bad.values())
        raise UserError(f"{source} holds {count} NaN or infinite weight value{'s' * (count != 1)} (in "
                        f"{', '.join(list(bad)[:3])}{' ...' if len(bad) > 3 else ''}): the weights are "
                        "damaged (a training run that diverged?); give an earlier checkpoint")
    if floats and not any(out[k].any() for k in floats):
        raise UserError(f"{source} holds only zeros in every weight: an empty or damaged file, not a "
                        "trained model")
    return out


def _odd_kind(tensor: torch.Tensor, own: torch.Tensor) -> str | None:
    """What keeps `tensor` from standing in for the model's `own` one, or None."""
    if tensor.is_meta:
        return "meta, no data"
    if tensor.layout != torch.strided:
        return str(tensor.layout).removeprefix("torch.")
    if own.is_floating_point() and not tensor.is_floating_point():
        return str(tensor.dtype).removeprefix("torch.")
    return None


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu",
                    scale: int | None = None) -> tuple[nn.Module, dict]:
    """(model in eval mode on `device`, meta dict) from our safetensors or a foreign state dict;
    `scale`, where the caller knows it, for a foreign one whose tensors do not tell (`detect_arch`)."""
    tensors, raw = read_state(path)
    if raw.get("format") == FORMAT:
        try:
            arch, kwargs = raw["arch"], json.loads(raw["kwargs"])
            meta = {"source": FORMAT, "arch": arch, "kwargs": kwargs, "name": raw.get("name") or None,
                    "config": json.loads(raw["config"]) if raw.get("config") else None,
                    "extra": json.loads(raw["extra"]) if raw.get("extra") else None,
                    "dtype": raw.get("dtype", "float32"), "colorspace": raw.get("colorspace", "rgb")}
        except (KeyError, ValueError) as exc:
            raise UserError(f"{path}: damaged upsample metadata ({exc})") from None
        _check_meta_arch(arch, kwargs, path)
    else:
        tensors = normalize_keys(tensors)
        arch, kwargs = detect_arch(tensors, str(path), scale=scale)
        meta = {"source": "detected", "arch": arch, "kwargs": kwargs,
                "name": registry.match_variant(arch, kwargs), "config": None, "extra": None,
                "dtype": str(next((t.dtype for t in tensors.values() if t.is_floating_point()),
                                  torch.float32)).removeprefix("torch."),
                "colorspace": "rgb"}
    _check_channels(arch, kwargs, path)
    model = registry.build(arch, kwargs, meta["name"], colorspace=meta["colorspace"])
    load_state_strict(model, tensors, str(path))
    spec = model.upsample_spec
    meta.update(scale=spec.scale, input=spec.input, kind=spec.kind)
    return model.to(device).eval(), meta


def _check_meta_arch(arch, kwargs, path) -> None:
    """A UserError for our metadata naming an architecture this version lacks, or keywords that
    are no JSON object (a KeyError or TypeError traceback before)."""
    if arch not in registry.ARCHS:
        raise UserError(f"{path}: its metadata names architecture {arch!r}, which this version of "
                        f"upsample lacks (known: {', '.join(registry.ARCHS)}); a newer upsample's file, "
                        "or damaged metadata")
    if not isinstance(kwargs, dict):
        raise UserError(f"{path}: damaged upsample metadata (kwargs is a {type(kwargs).__name__}, "
                        "not a JSON object)")
    registry.check_kwargs(arch, kwargs, context=f"{path}: its metadata cannot build {arch}: ")


def _check_channels(arch: str, kwargs: dict, path) -> None:
    """A UserError for an upscaler of other than 1 (Y) or 3 (RGB) channels in and the same out
    (an RGBA ESRGAN loaded, then failed at its first tile with a traceback)."""
    if arch in registry.DISCRIMINATORS:
        return
    full = registry.full_kwargs(arch, kwargs)
    cin = full.get("num_in_ch", 3)
    cout = full.get("num_out_ch", cin)
    if cin not in (1, 3) or cout != cin:
        raise UserError(f"{path}: a model of {cin} input and {cout} output channels; upsample runs "
                        "models of 1 (Y) or 3 (RGB) channels in and out (alpha is upscaled beside them)")


# ---------------------------------------------------------------------------- interpolation


def interpolate_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float
                       ) -> dict[str, torch.Tensor]:
    """(1 - alpha) a + alpha b per tensor; alpha 0 / 1 return a's / b's tensors themselves."""
    if alpha == 0:
        return dict(a)
    if alpha == 1:
        return dict(b)
    out = {}
    for k, ta in a.items():
        tb = b[k]
        if ta.is_floating_point():
            out[k] = ((1 - alpha) * ta.double() + alpha * tb.double()).to(ta.dtype)
        else:  # integer buffers (BatchNorm step counts): not meaningful to blend
            out[k] = ta
    return out


def _arch_difference(meta_a: dict, meta_b: dict) -> str | None:
    """What tells two checkpoints' architectures apart ("rrdbnet vs vapsr", "scale 4 vs 2"), or
    None when they are one."""
    if meta_a["arch"] != meta_b["arch"]:
        return f"{meta_a['arch']} vs {meta_b['arch']}"
    full_a, full_b = (registry.full_kwargs(m["arch"], m["kwargs"]) for m in (meta_a, meta_b))
    differ = [f"{k} {json.dumps(full_a.get(k))} vs {json.dumps(full_b.get(k))}"
              for k in sorted(full_a.keys() | full_b.keys()) if full_a.get(k) != full_b.get(k)]
    return ", ".join(differ) or None


def _whole_scale(meta: dict) -> int | None:
    scale = meta.get("scale")
    return int(scale) if scale is not None and float(scale).is_integer() else None


def interpolate_checkpoints(path_a, path_b, alpha: float, out, *, fp16: bool = False,
                            scale: int | None = None) -> Path:
    """(1 - alpha) A + alpha B into `out`. `scale` reads a file whose tensors do not tell it (an
    original-ESRGAN x3 has one upsampling conv, as an x2 has); without it, the other file's."""
    model_a, meta_a = load_checkpoint(path_a, scale=scale)
    model_b, meta_b = load_checkpoint(path_b, scale=scale or _whole_scale(meta_a))
    if scale is None and meta_a["source"] == "detected" and meta_b["source"] == FORMAT:
        model_a, meta_a = load_checkpoint(path_a, scale=_whole_scale(meta_b))  # ours says its scale
    if (differ := _arch_difference(meta_a, meta_b)) is not None:
        raise UserError(f"{path_a} and {path_b} are different architectures ({differ}): their weights do "
                        "not blend; interpolate two checkpoints of one architecture and scale")
    if meta_a["colorspace"] != meta_b["colorspace"]:  # the same tensors compute other things
        raise UserError(f"{path_a} computes in {meta_a['colorspace']} and {path_b} in {meta_b['colorspace']} "
                        "(model.colorspace): their weights do not blend; interpolate models of one colour space")
    sa, sb = model_a.state_dict(), model_b.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        raise UserError(f"{path_a} and {path_b} have different parameter shapes: not the same architecture")
    model_a.load_state_dict(interpolate_states(sa, sb, alpha))
    extra = {"interpolated": {"a": str(path_a), "b": str(path_b), "alpha": alpha}}
    return save_checkpoint(model_a, out, config=meta_a.get("config"), extra=extra, fp16=fp16)

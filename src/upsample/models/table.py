"""The registered variants as plain data, torch-free: what `upsample models` prints and what the
CLI needs to know about a name (scale, input, weights) before a model is built.

`registry` (which imports torch, 1.5-2 s here) is the source of truth; these rows are its
`describe()` output written down, and `tests/test_startup.py` fails when they differ (rewrite
them with `python -m upsample.models.table`, which prints the rows from the registry).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from . import WEIGHTS_DIR

MACS_INPUT = 256  # side of the input image the `macs` column is counted for (registry.MACS_INPUT)
# discriminators whose `macs` are counted at the one input size they take instead (registry.describe:
# their `input_size`)
MACS_INPUT_OF = {"esrgan-discriminator": 128}


class Row(NamedTuple):
    name: str
    scale: int | None  # None: any scale (pre-upsampling) or a discriminator
    params: int
    macs: int
    input: str  # "y" or "rgb"
    pre_upsample: bool
    kind: str  # "generator" or "discriminator"


ROWS: tuple[Row, ...] = (
    Row(name='espcn-x2', scale=2, params=21284, macs=1388314624, input='y', pre_upsample=False, kind='generator'),
    Row(name='espcn-x3', scale=3, params=22729, macs=1482686464, input='y', pre_upsample=False, kind='generator'),
    Row(name='espcn-x4', scale=4, params=24752, macs=1614807040, input='y', pre_upsample=False, kind='generator'),
    Row(name='espcn-rgb-x2', scale=2, params=26796, macs=1749024768, input='rgb', pre_upsample=False, kind='generator'),
    Row(name='espcn-rgb-x3', scale=3, params=31131, macs=2032140288, input='rgb', pre_upsample=False, kind='generator'),
    Row(name='espcn-rgb-x4', scale=4, params=37200, macs=2428502016, input='rgb', pre_upsample=False, kind='generator'),
    Row(name='vdsr', scale=None, params=665921, macs=43562041344, input='y', pre_upsample=True, kind='generator'),
    Row(name='vapsr-x2', scale=2, params=329236, macs=21041774592, input='rgb', pre_upsample=False, kind='generator'),
    Row(name='vapsr-x3', scale=3, params=336811, macs=21537226752, input='rgb', pre_upsample=False, kind='generator'),
    Row(name='vapsr-x4', scale=4, params=342220, macs=22205693952, input='rgb', pre_upsample=False, kind='generator'),
    Row(name='vapsr-s-x2', scale=2, params=156964, macs=10024386560, input='rgb', pre_upsample=False, kind='generator'),
    Row(name='vapsr-s-x3', scale=3, params=164539, macs=10519838720, input='rgb', pre_upsample=False, kind='generator'),
    Row(name='vapsr-s-x4', scale=4, params=154956, macs=10232004608, input='rgb', pre_upsample=False, kind='generator'),
    Row(name='vapsr-dense3x3-x2', scale=2, params=1739796, macs=113484234752, input='rgb', pre_upsample=False, kind='generator'),
    Row(name='vapsr-dense3x3-x3', scale=3, params=1747371, macs=113979686912, input='rgb', pre_upsample=False, kind='generator'),
    Row(name='vapsr-dense3x3-x4', scale=4, params=1823308, macs=119270277120, input='rgb', pre_upsample=False, kind='generator'),
    Row(name='vapsr-catid-x2', scale=2, params=793252, macs=51470401536, input='rgb', pre_upsample=False, kind='generator'),
    Row(name='vapsr-catid-x3', scale=3, params=800827, macs=51965853696, input='rgb', pre_upsample=False, kind='generator'),
    Row(name='rrdbnet-x1', scale=1, params=16723907, macs=73534537728, input='rgb', pre_upsample=False, kind='generator'),
    Row(name='rrdbnet-x2', scale=2, params=16703171, macs=293798412288, input='rgb', pre_upsample=False, kind='generator'),
    Row(name='rrdbnet-x3', scale=3, params=16661059, macs=1130574643200, input='rgb', pre_upsample=False, kind='generator'),
    Row(name='rrdbnet-x4', scale=4, params=16697987, macs=1174853910528, input='rgb', pre_upsample=False, kind='generator'),
    Row(name='joint-x2', scale=2, params=49445, macs=1388314624, input='y', pre_upsample=False, kind='generator'),
    Row(name='esrgan-discriminator', scale=None, params=14499401, macs=2226946148, input='rgb', pre_upsample=False, kind='discriminator'),
    Row(name='realesrgan-unet-discriminator', scale=None, params=4376897, macs=25920798720, input='rgb', pre_upsample=False, kind='discriminator'),
)
ALIASES: dict[str, str] = {'vapsr-3x3-x2': 'vapsr-dense3x3-x2', 'vapsr-3x3-x3': 'vapsr-dense3x3-x3', 'vapsr-3x3-x4': 'vapsr-dense3x3-x4'}  # old name -> registered name (registry.ALIASES)
BY_NAME = {r.name: r for r in ROWS}


def row(name: str) -> Row:
    """The row of a registered name or of an alias's target."""
    return BY_NAME[ALIASES.get(name, name)]


def names(kind: str | None = "generator", *, aliases: bool = False) -> list[str]:
    """Registered names of that kind (None: all), in zoo order, with `aliases` the old names
    after them (as `registry.list_models`)."""
    found = [r.name for r in ROWS if kind is None or r.kind == kind]
    return found + [a for a, n in ALIASES.items() if n in found] if aliases else found


def weights_path(name: str) -> Path | None:
    """The shipped weights of a registered model (or of an alias's target), if the package has them."""
    p = WEIGHTS_DIR / f"{ALIASES.get(name, name)}.safetensors"
    return p if p.is_file() else None


def describe(name: str) -> dict:
    """One row of `upsample models`: the keys and values of `registry.describe(name)`."""
    r = row(name)
    weights = weights_path(name)
    out = {"name": name, "scale": r.scale, "params": r.params, "macs": r.macs, "input": r.input,
           "weights": str(weights) if weights else None}
    return {**out, "alias_of": ALIASES[name]} if name in ALIASES else out


def rows_from_registry() -> list[Row]:
    """The rows as the registry computes them (imports torch; builds every model on meta)."""
    from . import registry
    rows = []
    for name in registry.list_models(None):
        d, spec = registry.describe(name), registry.get_spec(name)
        rows.append(Row(name, d["scale"], d["params"], d["macs"], d["input"], spec.pre_upsample, spec.kind))
    return rows


def aliases_from_registry() -> dict[str, str]:
    from . import registry
    return dict(getattr(registry, "ALIASES", {}))


if __name__ == "__main__":  # print the ROWS and ALIASES literals from the registry
    for r in rows_from_registry():
        print(f"    {r!r},")
    print(f"ALIASES = {aliases_from_registry()!r}")

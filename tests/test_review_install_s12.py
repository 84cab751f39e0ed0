"""Review s12: the installed package, used outside the repository (no configs/, no ../shared).

- `bench --train espcn-x3` looked for configs/espcn-x3.toml only (the current folder's, or the
  source tree's through `parents[3]`): installed, it was refused ("give a recipe file (configs/*.toml)
  or a model with one in configs/"), where `upsample train espcn-x3` takes the packaged recipe. It
  now takes that recipe too, with `--set` (as `train`) to give it the user's images.
- The wheel: what it carries (weights and their recipes, probe pictures, the entry point, the
  metadata's version = `upsample.__version__`) and nothing of the repository; unpacked on its own,
  it finds the packaged recipe and no source tree.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import upsample
from upsample import cli
from upsample.errors import UserError
from upsample.models import registry
from upsample.training import bench as tbench

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("espcn-x2", "espcn-x3", "espcn-x4", "vdsr")


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """The current folder outside the repository, and no source checkout's configs/ to fall back
    on, as for a `pip install upsample`."""
    monkeypatch.setattr(tbench, "CONFIGS", None)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_bench_train_takes_a_shipped_models_packaged_recipe(installed):
    (installed / "espcn-x3").mkdir()  # an earlier `image -o espcn-x3` folder is no recipe
    recipe = tbench.find_recipe("espcn-x3")
    assert recipe == registry.shipped_recipe("espcn-x3") and recipe.is_file()
    # its data paths stay as given, relative to the current folder, as `upsample train espcn-x3` reads them
    _, cfg = tbench.load_recipe("espcn-x3", [], ['data.train=["photos"]'])
    assert cfg.data.train == ["photos"] and cfg.model.name == "espcn-x3"


def test_the_packaged_recipes_missing_images_say_how_to_give_yours(installed):
    recipe, cfg = tbench.load_recipe("espcn-x3", [])
    with pytest.raises(UserError, match=r"""--set 'data.train=\["DIR"\]' gives yours"""):
        tbench.training_files(cfg, recipe, "espcn-x3", 8)
    # a folder of the user's own that is missing: that alone is said
    user = ['data.train=["nope"]']
    recipe, cfg = tbench.load_recipe("espcn-x3", [], user)
    with pytest.raises(UserError) as exc:
        tbench.training_files(cfg, recipe, "espcn-x3", 8, user)
    assert "folder not found: nope" in str(exc.value) and "--set" not in str(exc.value)


def test_bench_train_without_a_recipe_names_what_it_takes_not_configs(installed, capsys):
    assert cli.main(["bench", "--train", "vapsr-x2"]) == 2
    err = capsys.readouterr().err
    assert "no recipe for 'vapsr-x2'" in err and "espcn-x3" in err and "configs/" not in err
    assert cli.main(["bench", "--train", "my.toml"]) == 2
    assert "recipe file not found: my.toml" in capsys.readouterr().err
    assert cli.main(["bench", "--model", "espcn-x2", "--set", "train.steps=5"]) == 2
    assert "--set changes the recipe of --train" in capsys.readouterr().err


def test_a_set_data_path_stays_relative_to_the_current_folder_with_a_checkout_recipe(tmp_path, monkeypatch):
    """In the checkout, `bench --train tiny` reads the recipe's own paths from the repository root,
    but a path given with --set is the user's, relative to where they are."""
    monkeypatch.chdir(tmp_path)
    recipe, cfg = tbench.load_recipe("tiny", [], ['data.train=["photos"]'])
    assert recipe.resolve() == (ROOT / "configs" / "tiny.toml").resolve()
    assert cfg.data.train == ["photos"]


def _wheel(tmp_path: Path) -> Path:
    """A wheel built offline from a copy of the project (the repository's build/ is not touched)."""
    src = tmp_path / "project"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "-w", str(tmp_path / "whl"), str(src)], check=True,
                   capture_output=True, timeout=120)
    return next((tmp_path / "whl").glob("upsample-*.whl"))


def test_the_wheel_carries_the_package_data_and_works_unpacked_on_its_own(tmp_path):
    pytest.importorskip("setuptools")
    pytest.importorskip("pip")
    whl = _wheel(tmp_path)
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = z.read(info).decode()
        entry = z.read(info.replace("METADATA", "entry_points.txt")).decode()
    for model in SHIPPED:  # the weights, the recipe `train NAME` takes, and what `models` reports
        for ext in ("safetensors", "toml", "eval.json", "log.json"):
            assert f"upsample/weights/{model}.{ext}" in names
    assert "upsample/assets/probe.png" in names
    assert sum(n.startswith("upsample/assets/probe/") for n in names) >= 4  # the quality gate's pictures
    assert not [n for n in names if n.split("/")[0] in ("tests", "configs", "docs", "tools", "benchmarks",
                                                          "weights", "runs", "assets")]
    assert f"Version: {upsample.__version__}\n" in meta and "Requires-Python: >=3.11" in meta
    assert "upsample = upsample.cli:main" in entry
    site, home = tmp_path / "site", tmp_path / "home"
    home.mkdir()
    zipfile.ZipFile(whl).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site), "UPSAMPLE_CACHE": str(tmp_path / "cache")}
    code = ("import json, upsample; from upsample.training import bench; "
            "print(json.dumps([upsample.__file__, str(bench.CONFIGS), str(bench.find_recipe('espcn-x3'))]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=home, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    file, configs, recipe = json.loads(out.splitlines()[-1])
    assert Path(file).is_relative_to(site) and configs == "None"
    assert Path(recipe) == site / "upsample" / "weights" / "espcn-x3.toml"
    version = subprocess.run([sys.executable, "-m", "upsample", "--version"], cwd=home, env=env,
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"upsample {upsample.__version__}"

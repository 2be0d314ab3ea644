"""The pinned environments (envs/*.yaml, requirements.lock) agree with pyproject's ranges."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
# conda-forge names that differ from PyPI's
CONDA_TO_PYPI = {"netcdf4": "netcdf4", "pytorch": "torch"}


def ranges() -> dict[str, Requirement]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {canonicalize_name(Requirement(d).name): Requirement(d) for d in deps}


def env_pins(path: Path) -> dict[str, str]:
    pins = {}
    for dep in yaml.safe_load(path.read_text())["dependencies"]:
        items = dep["pip"] if isinstance(dep, dict) else [dep]
        for item in items:
            for sep in ("==", "="):
                if sep in item and not item.startswith("-"):
                    name, version = item.split(sep, 1)
                    pins[canonicalize_name(CONDA_TO_PYPI.get(name, name))] = version
                    break
    return pins


def lock_pins() -> dict[str, str]:
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    return dict(ln.split("==", 1) for ln in lines if ln and not ln.startswith("#"))


@pytest.mark.parametrize(
    "source", ["envs/data.yaml", "envs/train.yaml", "envs/evaluate.yaml", "requirements.lock"]
)
def test_pins_satisfy_pyproject(source: str):
    pins = lock_pins() if source.endswith(".lock") else env_pins(ROOT / source)
    assert pins, f"{source} pins nothing"
    wrong = {
        name: (version, str(ranges()[name].specifier))
        for name, version in pins.items()
        if name in ranges() and Version(version) not in ranges()[name].specifier
    }
    assert not wrong, f"{source}: pins outside pyproject's ranges: {wrong}"


def test_lock_covers_every_dependency():
    assert set(ranges()) <= {canonicalize_name(n) for n in lock_pins()}

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpcpipe.config import ConfigError, load, load_schema, validate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cfg() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_shipped_config_is_valid_and_defaults_fill_an_empty_config():
    full = load(ROOT / "config" / "config.yaml")
    empty = validate({})
    assert empty == full  # the shipped config spells out exactly the schema's defaults


def test_every_schema_key_has_description_and_default():
    def walk(node: dict, path: str) -> None:
        for key, sub in node.get("properties", {}).items():
            assert "description" in sub, f"{path}{key} has no description"
            assert "default" in sub, f"{path}{key} has no default"
            walk(sub, f"{path}{key}.")

    walk(load_schema(), "")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c["train"].update(epochs=-1), "train.epochs: -1 is less than the minimum of 1"),
        (lambda c: c["train"].update(epoch=3), "'epoch' was unexpected"),
        (
            lambda c: c["features"].update(leads=["a"]),
            "features.leads[0]: 'a' is not of type 'integer'",
        ),
        (lambda c: c["train"].update(models=["mlp"]), "train.models[0]: 'mlp' is not one of"),
        (lambda c: c["train"].update(strategy="zero3"), "train.strategy: 'zero3' is not one of"),
        (
            lambda c: c["evaluate"].update(headline_lead=9),
            "evaluate.headline_lead: 9 is not one of features.leads",
        ),
        (
            lambda c: c["preprocess"]["split"].update(val=["2001-06-01", "2002-06-30"]),
            "periods train and val overlap",
        ),
        (
            lambda c: c["preprocess"]["split"].update(test=["2002-07-01", "2009-12-31"]),
            "outside the built-in data",
        ),
        (lambda c: c["dataset"].update(source="file"), "ingest.path: required"),
        (lambda c: c["features"].update(leads=[200]), "too few for features.lags"),
        (lambda c: c["dataset"].update(variables=["sst"]), "not in the built-in dataset"),
        (lambda c: c["dataset"]["builtin"].update(n_lat=30), "models.unet.depth"),
        (lambda c: c["dataset"]["builtin"].update(start="2000-13-01"), "dataset.builtin.start"),
    ],
)
def test_errors_name_the_key(cfg: dict, edit, expected: str):
    bad = copy.deepcopy(cfg)
    edit(bad)
    with pytest.raises(ConfigError) as err:
        validate(bad)
    assert expected in str(err.value)


def test_unreadable_config_file(tmp_path: Path):
    p = tmp_path / "c.yaml"
    p.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(p)
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "missing.yaml")


def test_config_imports_no_array_or_torch_library():
    """Snakemake validates the config in every job: xarray, Dask or torch would cost seconds."""
    code = (
        "import sys, hpcpipe.config\n"
        "print(sorted(m for m in ('xarray', 'dask', 'torch') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"

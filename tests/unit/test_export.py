"""hpcpipe export: the artifact loads and predicts with plain torch and numpy, no hpcpipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from test_forecasts import VARIABLES, save_model, stores

from hpcpipe.export import export
from hpcpipe.models.files import load_model, predict

# Run in a fresh interpreter (-I: no PYTHONPATH, no user site, not the cwd), from a temporary
# directory, with every import of hpcpipe refused: the editable install would find it otherwise.
USER = """
import importlib.abc, runpy, sys

class NoHpcpipe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hpcpipe" or name.startswith("hpcpipe."):
            raise ImportError("hpcpipe is not importable here")
        return None

sys.meta_path.insert(0, NoHpcpipe())
sys.argv = ["predict.py", *sys.argv[1:]]
runpy.run_path(sys.argv[1] + "/predict.py", run_name="__main__")
assert not [m for m in sys.modules if m.split(".")[0] == "hpcpipe"]
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A real (untrained) CNN exported once: (store dir, model.pt, metadata)."""
    tmp_path = tmp_path_factory.mktemp("export")
    stores(tmp_path)
    model_path = tmp_path / "models" / "cnn" / "0" / "model.pt"
    save_model(model_path)
    md = export(model_path, tmp_path / "test.zarr", tmp_path / "preprocessed.zarr",
                tmp_path / "stats.json", tmp_path / "export", {"variables": VARIABLES})  # fmt: skip
    return tmp_path, model_path, md


def test_the_artifact_predicts_like_the_model_without_hpcpipe(
    exported: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    where, model_path, md = exported
    out = where / "export"
    assert md["format"] == "torch.export" and (out / "model.pt2").is_file()
    assert json.loads((out / "metadata.json").read_text())["output"]["variables"] == VARIABLES
    assert {p.name for p in out.iterdir()} == {
        "model.pt2", "metadata.json", "climatology.npy", "predict.py", "README.md"
    }  # fmt: skip

    # 5 samples: another batch size than the export's example (the batch is dynamic)
    x = xr.open_zarr(where / "test.zarr")["inputs"].values[:5]
    np.save(tmp_path / "x.npy", x)
    user = tmp_path / "user"
    user.mkdir()
    # one thread on both sides: a convolution's sums are ordered by its thread count, and an
    # earlier test may have set this process's
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-I", "-c", USER, str(out), str(tmp_path / "x.npy"), "y.npy"],
        cwd=user, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, _ = load_model(model_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        np.testing.assert_array_equal(np.load(user / "y.npy"), predict(model, x, 64))
    finally:
        torch.set_num_threads(threads)


def test_the_artifact_helpers_match_the_pipeline(exported: tuple[Path, Path, dict]) -> None:
    """Artifact.inputs rebuilds the feature channels; to_physical is what predict stores."""
    from hpcpipe import export_predict, forecasts
    from hpcpipe.evaluate import scoring
    from hpcpipe.periods import period_of

    where = exported[0]
    test = scoring.as_str_coord(xr.open_zarr(where / "test.zarr"))
    pre = scoring.as_str_coord(xr.open_zarr(where / "preprocessed.zarr"))
    art = export_predict.Artifact(where / "export")
    part = test.isel(sample=slice(0, 4)).load()
    lag0 = pre["anomaly"].sel(time=part["time"]).values[:, None]  # (N, lag, variable, lat, lon)
    np.testing.assert_array_equal(art.inputs(lag0), part["inputs"].values)
    a = art.predict(part["inputs"].values)
    kind = pre["period"].attrs["kind"]
    periods = period_of(part["valid_time"], kind, None).values
    norm = scoring.normalisation(pre, VARIABLES)
    stored = forecasts.block(a, part, norm, VARIABLES)
    got = art.to_physical(a, periods)
    for k, v in enumerate(VARIABLES):
        want = stored[v].values  # (N, lead, lat, lon), NaN where masked
        ok = ~np.isnan(want)
        np.testing.assert_allclose(got[:, :, k][ok], want[ok], rtol=1e-6)

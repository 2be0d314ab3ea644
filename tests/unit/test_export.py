"""hpcpipe export: the artifact loads and predicts with plain torch and numpy, no hpcpipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def test_the_artifact_predicts_like_the_model_without_hpcpipe(tmp_path: Path) -> None:
    stores(tmp_path)
    model_path = tmp_path / "models" / "cnn" / "0" / "model.pt"
    save_model(model_path)
    out = tmp_path / "export" / "cnn" / "0"
    md = export(model_path, tmp_path / "test.zarr", tmp_path / "preprocessed.zarr",
                tmp_path / "stats.json", out, {"variables": VARIABLES})  # fmt: skip
    assert md["format"] == "torch.export" and (out / "model.pt2").is_file()
    assert json.loads((out / "metadata.json").read_text())["output"]["variables"] == VARIABLES
    assert {p.name for p in out.iterdir()} == {
        "model.pt2", "metadata.json", "climatology.npy", "predict.py", "README.md"
    }  # fmt: skip

    # 5 samples: another batch size than the export's example (the batch is dynamic)
    x = xr.open_zarr(tmp_path / "test.zarr")["inputs"].values[:5]
    np.save(tmp_path / "x.npy", x)
    user = tmp_path / "user"
    user.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(
        [sys.executable, "-I", "-c", USER, str(out), str(tmp_path / "x.npy"), "y.npy"],
        cwd=user, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, _ = load_model(model_path)
    np.testing.assert_array_equal(np.load(user / "y.npy"), predict(model, x, 64))


def test_the_artifact_helpers_match_the_pipeline(tmp_path: Path) -> None:
    """Artifact.inputs rebuilds the feature channels; to_physical is what predict stores."""
    from hpcpipe import export_predict, forecasts
    from hpcpipe.evaluate import scoring
    from hpcpipe.periods import period_of

    test, pre = (scoring._as_str_coord(ds) for ds in stores(tmp_path))
    model_path = tmp_path / "model.pt"
    save_model(model_path)
    out = tmp_path / "export"
    export(model_path, tmp_path / "test.zarr", tmp_path / "preprocessed.zarr",
           tmp_path / "stats.json", out, {"variables": VARIABLES})  # fmt: skip
    art = export_predict.Artifact(out)
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

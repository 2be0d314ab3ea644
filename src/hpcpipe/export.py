"""The ``export`` step: a self-contained inference artifact of one trained model.

``results/export/{model}/{seed}{point}/`` holds ``model.pt2`` (``torch.export``: a graph
with the weights, loadable by ``torch.export.load`` without the model's Python code; the
batch dimension is dynamic), or ``model.torchscript.pt`` where export fails for a model;
``metadata.json`` (input channels, leads, variables, grid, normalisation, units),
``climatology.npy`` (period, variable, lat, lon) and ``predict.py`` + ``README.md``: plain
torch and numpy, no hpcpipe (:mod:`hpcpipe.export_predict` is that predict.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from hpcpipe.atomic import atomic_path
from hpcpipe.store import decode_str, open_store

log = logging.getLogger("hpcpipe.export")

StrPath = str | os.PathLike[str]
EXPORTED, SCRIPTED = "model.pt2", "model.torchscript.pt"

README = """# {model} seed {seed}: an exported hpcpipe model

Plain torch and numpy, no hpcpipe: `{file}` ({format}) with `metadata.json` and
`climatology.npy`.

```python
import sys; sys.path.insert(0, "{where}")
import predict
art = predict.Artifact("{where}")
a = art.predict(x)  # x: (N, {channels}, {n_lat}, {n_lon}) float32, channels {first}, ...
```

`a` is (N, lead, variable, lat, lon) in normalised anomalies (leads {leads}, variables
{variables}); `art.to_physical(a, periods)` adds back the normalisation and the climatology
({kind}) of each valid time. `art.inputs(anomalies)` builds the input channels from
normalised anomalies at the lags {lags}. Or: `python predict.py . inputs.npy out.npy`.
"""


def export(
    model_path: StrPath,
    features_test_dir: StrPath,
    preprocessed_dir: StrPath,
    stats_path: StrPath,
    output: StrPath,
    params: dict,
) -> dict[str, Any]:
    """Write the artifact directory ``output`` atomically; returns its metadata."""
    import torch

    from hpcpipe.models.files import load_model
    from hpcpipe.predict import check_meta

    model, meta = load_model(model_path, map_location="cpu")
    test = open_store(features_test_dir, "test features")
    pre = open_store(preprocessed_dir, "preprocessed data")
    check_meta(meta, test)
    # Two samples (zeros where the test split has fewer): batch 1 would fix the batch size.
    n = min(2, test.sizes["sample"])
    x = np.zeros((2, *test["inputs"].shape[1:]), np.float32)
    x[:n] = test["inputs"].isel(sample=slice(0, n)).values
    example = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
    with atomic_path(output) as tmp:
        tmp.mkdir(parents=True)
        fmt, file = _save(model, example, tmp)
        md = metadata(meta, test, pre, stats_path, params, fmt, file, Path(model_path))
        np.save(tmp / "climatology.npy", pre["climatology"].values.astype(np.float32))
        (tmp / "metadata.json").write_text(json.dumps(md, indent=1) + "\n")
        shutil.copyfile(Path(__file__).with_name("export_predict.py"), tmp / "predict.py")
        (tmp / "README.md").write_text(_readme(md, str(output)))
    log.info("exported %s (%s) to %s", model_path, fmt, output)
    return md


def _save(model: Any, example: Any, directory: Path) -> tuple[str, str]:
    """torch.export with a dynamic batch, checked against the model; else TorchScript."""
    import torch

    with torch.inference_mode():
        want = model(example)
    try:
        batch = torch.export.Dim("batch", min=1)
        ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        with torch.inference_mode():
            got = ep.module()(example)
        if not torch.equal(got, want):
            raise RuntimeError("the exported graph does not reproduce the model's output")
        torch.export.save(ep, str(directory / EXPORTED))
        return "torch.export", EXPORTED
    except Exception as exc:  # export refuses some Python constructs; TorchScript traces them
        log.warning("torch.export failed (%s: %s); writing TorchScript", type(exc).__name__, exc)
    scripted = torch.jit.trace(model, example, check_trace=True)
    torch.jit.save(scripted, str(directory / SCRIPTED))
    return "torchscript", SCRIPTED


def metadata(
    meta: dict, test: Any, pre: Any, stats_path: StrPath, params: dict, fmt: str, file: str,
    model_path: Path,
) -> dict[str, Any]:  # fmt: skip
    """What predict.py needs (and a user wants to know) besides the graph."""
    from hpcpipe import __version__
    from hpcpipe.forecasts import units_of
    from hpcpipe.predict import identity_attrs
    from hpcpipe.provenance import recorded_checksum

    units = units_of(stats_path)
    variables = decode_str(test["variable"].values)
    period = pre["period"]
    channels = decode_str(test["channel"].values)
    pre_vars = decode_str(pre["variable"].values)
    return {
        "format": fmt,
        "file": file,
        **identity_attrs(model_path, meta),
        "model_config": meta.get("model_config"),
        "input": {
            "shape": ["N", *map(int, test["inputs"].shape[1:])],
            "channels": channels,
            "lags": [int(v) for v in np.atleast_1d(test.attrs.get("lags", [0]))],
            "derived": ["gradient"] if any(c.endswith("_ddx") for c in channels) else [],
            "dtype": "float32",
            "memory_format": "channels_last (any layout works; this is the faster one on CPU)",
        },
        "output": {
            "leads": [int(v) for v in test["lead"].values],
            "variables": variables,
            "raw_shape": "(N, lead * variable, lat, lon), lead-major",
            "units": "normalised anomaly (1)",
        },
        "normalisation": {
            # the preprocessed store's, as scoring uses them (stats.json has the same)
            "mean": {v: float(pre["mean"].values[pre_vars.index(v)]) for v in variables},
            "std": {v: float(pre["std"].values[pre_vars.index(v)]) for v in variables},
            "units": {v: units.get(v, "") for v in variables},
            "formula": "x = a * std + mean + climatology[period(valid time)]",
        },
        "climatology": {
            "file": "climatology.npy",
            "dims": ["period", "variable", "lat", "lon"],
            "kind": period.attrs.get("kind"),
            "hours": list(period.attrs.get("hours", [])),
            "periods": [int(p) for p in period.values],
        },
        "grid": {
            "lat": [float(v) for v in test["lat"].values],
            "lon": [float(v) for v in test["lon"].values],
            "periodic": bool(meta.get("periodic", True)),
        },
        "time_frequency": pre.attrs.get("time_frequency"),
        "params": params,
        "source": {"model_file": str(model_path), "checksum": recorded_checksum(model_path),
                   "hpcpipe_version": __version__},
    }  # fmt: skip


def _readme(md: dict[str, Any], where: str) -> str:
    inp = md["input"]
    return README.format(
        model=md["model"], seed=md["seed"], file=md["file"], format=md["format"], where=where,
        channels=len(inp["channels"]), n_lat=len(md["grid"]["lat"]),
        n_lon=len(md["grid"]["lon"]), first=inp["channels"][0], leads=md["output"]["leads"],
        variables=md["output"]["variables"], kind=md["climatology"]["kind"], lags=inp["lags"],
    )  # fmt: skip

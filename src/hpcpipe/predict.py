"""The ``predict`` step: one trained model's test-period forecasts as a forecast store.

load model.pt (:mod:`hpcpipe.models.files`), predict the test inputs store chunk by store
chunk, and write each chunk in physical units (:mod:`hpcpipe.forecasts`) as it comes: only
one chunk of inputs and forecasts is in memory at once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from hpcpipe import forecasts
from hpcpipe.evaluate.scoring import (
    SAMPLE,
    Normalisation,
    as_str_coord,
    check_not_empty,
    normalisation,
)
from hpcpipe.store import decode_str, open_store

log = logging.getLogger("hpcpipe.predict")

PREDICT_BATCH = 64

StrPath = str | os.PathLike[str]


def predict_store(
    model_path: StrPath,
    features_test_dir: StrPath,
    preprocessed_dir: StrPath,
    stats_path: StrPath,
    output: StrPath,
    params: dict,
    threads: int | None = None,
) -> xr.Dataset:
    """Write ``output`` (results/forecasts/{model}/{seed}{point}.zarr); returns its template.

    ``params``: ``variables`` (config ``dataset.variables``); optional ``batch_size`` (the
    prediction batch; memory only, not results).
    """
    # Imported here: torch loads only in the steps that run a model.
    import torch

    from hpcpipe.models.files import load_model, predict

    if threads:
        torch.set_num_threads(int(threads))
    model_path = Path(model_path)
    model, meta = load_model(model_path, map_location="cpu")
    test = as_str_coord(open_store(features_test_dir, "test features"))
    pre = as_str_coord(open_store(preprocessed_dir, "preprocessed data"))
    check_meta(meta, test)
    check_not_empty(test)
    variables = [str(v) for v in params["variables"]]
    units = forecasts.units_of(stats_path)
    norm = normalisation(pre, variables)
    timedeltas = forecasts.axis_timedeltas(
        [int(x) for x in test["lead"].values], pre.indexes["time"], str(preprocessed_dir)
    )
    step = _chunk(test["inputs"])
    identity = identity_attrs(model_path, meta)
    attrs = {
        **forecasts.provenance_attrs(identity, params, [model_path, features_test_dir,
                                                        preprocessed_dir, stats_path]),
        **{k: pre.attrs[k] for k in ("time_frequency", "time_resolution", "grid") if k in pre.attrs},
    }  # fmt: skip
    tmpl = forecasts.template(test, variables, units, timedeltas, attrs, step)
    batch = int(params.get("batch_size", PREDICT_BATCH))
    blocks = _blocks(model, predict, test, norm, variables, step, batch)
    forecasts.write(tmpl, output, blocks)
    log.info("wrote %s (%s)", output, dict(tmpl.sizes))
    return tmpl


def _blocks(
    model: Any,
    predict: Callable[[Any, np.ndarray, int], Any],
    test: xr.Dataset,
    norm: Normalisation,
    variables: list[str],
    step: int,
    batch_size: int,
) -> Iterator[xr.Dataset]:
    """Predict store chunk by store chunk, yielding each as the forecast store's block."""
    from hpcpipe.logs import progress

    n = test.sizes[SAMPLE]
    starts = list(range(0, n, step))
    for s in progress(starts, len(starts), "predict (chunks)"):
        part = test.isel({SAMPLE: slice(s, s + step)})
        inputs = np.asarray(part["inputs"].values, dtype=np.float32)
        pred = np.asarray(predict(model, inputs, batch_size))
        yield forecasts.block(pred, part, norm, variables)


def _chunk(inputs: xr.DataArray) -> int:
    chunks = inputs.chunksizes.get(SAMPLE) if inputs.chunks else None
    return int(max(chunks)) if chunks else max(inputs.sizes[SAMPLE], 1)


def check_meta(meta: dict, test: xr.Dataset) -> None:
    """The model must have been trained for the test store's variables and leads."""
    test_vars = decode_str(test["variable"].values)
    if "variables" in meta and list(meta["variables"]) != test_vars:
        raise ValueError(
            f"model variables {list(meta['variables'])} differ from the test store's {test_vars}"
        )
    if "leads" in meta and [int(x) for x in meta["leads"]] != [int(x) for x in test["lead"].values]:
        raise ValueError(
            f"model leads {meta['leads']} differ from the test store's {test['lead'].values.tolist()}"
        )


def identity_attrs(model_path: Path, meta: dict) -> dict[str, Any]:
    """Model name, seed, run directory and the validation loss of the weights (what evaluate
    reports as val_loss) from the model file, else from .../{model}/{seed}{point}/model.pt."""
    seed = meta.get("seed", (meta.get("train_config") or {}).get("seed"))
    run = model_path.parent.name
    if seed is None:
        seed = run.split("-")[0]
    if isinstance(seed, str) and seed.lstrip("-").isdigit():
        seed = int(seed)
    val_loss = meta.get("val_loss")
    finite = val_loss is not None and np.isfinite(float(val_loss))
    return {
        "model": str(meta.get("model") or model_path.parent.parent.name),
        "seed": seed,
        "run": run,
        "model_epoch": meta.get("epoch"),
        "val_loss": float(val_loss) if finite else None,
    }

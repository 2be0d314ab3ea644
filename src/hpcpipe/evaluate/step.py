"""The ``evaluate`` step: one trained model on the test split, with explicit inputs and outputs.

``evaluate`` = load model.pt and predict (:mod:`hpcpipe.models.files`) +
:func:`~hpcpipe.evaluate.scoring.evaluate_forecasts` (the science) + ``write_outputs``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from hpcpipe.atomic import write_json, write_text
from hpcpipe.contracts import check_thresholds
from hpcpipe.evaluate import plots
from hpcpipe.evaluate.scoring import SAMPLE, check_not_empty, evaluate_forecasts, metrics_table
from hpcpipe.store import decode_str, open_store

log = logging.getLogger("hpcpipe.evaluate")

# The declared outputs, as the workflow rule names them: metrics.json, metrics.csv,
# skill_vs_lead.png, error_maps.png, loss_curve.png.
OUTPUTS = ("metrics", "table", "skill", "maps", "loss")
PREDICT_BATCH = 64

StrPath = str | os.PathLike[str]


def evaluate(
    model_path: StrPath,
    history_path: StrPath,
    features_test_dir: StrPath,
    preprocessed_dir: StrPath,
    thresholds_dir: StrPath,
    outputs: Mapping[str, StrPath],
    params: dict,
    threads: int | None = None,
) -> dict:
    """Evaluate one trained model on the test split; write the five ``outputs`` (see OUTPUTS).

    ``history_path``: the model's history.csv (for the loss curve; a placeholder plot if it is
    missing). ``params``: config section ``evaluate`` (headline_lead, extreme_quantile) plus
    ``variables``; optional ``model``/``seed`` override the names read from the model file,
    optional ``batch_size`` is the prediction batch (default 64; memory only, not results).
    Returns the content of metrics.json.
    """
    paths = output_paths(outputs)  # before any work: a wrong call fails at once
    # Imported here: torch loads only when a model is evaluated, not with this module.
    from hpcpipe.models.files import load_model, predict

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    model_path = Path(model_path)
    model, meta = load_model(model_path, map_location="cpu")
    test = open_store(features_test_dir, "test features")
    pre = _with_quantile(open_store(preprocessed_dir, "preprocessed data"), thresholds_dir)
    _check_meta(meta, test)
    check_not_empty(test)

    batch = int(params.get("batch_size", PREDICT_BATCH))
    pred = _predict_in_blocks(model, predict, test["inputs"], batch)
    pred_norm = xr.DataArray(pred, dims=test["targets"].dims, coords=test["targets"].coords)
    result = evaluate_forecasts(pred_norm, test, pre, params)

    model_name, seed = _identity(model_path, meta, params)
    result["metrics"] = {
        # the validation loss of the weights evaluated here (what a sweep ranks runs by;
        # never the test scores), as training saved it with them
        "model": model_name, "seed": seed, "val_loss": _finite_or_none(meta.get("val_loss")),
        **result["metrics"],
    }  # fmt: skip
    write_outputs(result, paths, history_csv=history_path)
    _log_headline(result["metrics"])
    return result["metrics"]


def output_paths(outputs: Mapping[str, StrPath]) -> dict[str, Path]:
    """``outputs`` as Paths; ValueError naming missing or unknown keys (exactly OUTPUTS)."""
    missing = [k for k in OUTPUTS if k not in outputs]
    unknown = sorted(str(k) for k in outputs if k not in OUTPUTS)
    if missing or unknown:
        raise ValueError(
            f"evaluate outputs must have exactly the keys {list(OUTPUTS)}: "
            f"missing {missing}, unknown {unknown}"
        )
    return {k: Path(outputs[k]) for k in OUTPUTS}


def write_outputs(
    result: dict, outputs: Mapping[str, StrPath], history_csv: StrPath | None
) -> None:
    """Write metrics.json, metrics.csv and the three plots to the paths in ``outputs``."""
    paths = output_paths(outputs)
    write_json(paths["metrics"], result["metrics"])
    write_text(paths["table"], metrics_table(result["skill"]).to_csv(index=False))
    plots.plot_skill(result["skill"], paths["skill"])
    headline = int(result["metrics"]["headline_lead"])
    plots.plot_error_maps(result["error_maps"], headline, paths["maps"])
    plots.plot_loss_curve(history_csv, paths["loss"])
    log.info("wrote metrics and plots: %s", ", ".join(str(p) for p in paths.values()))


def _with_quantile(pre: xr.Dataset, thresholds_dir: StrPath) -> xr.Dataset:
    """``pre`` plus the thresholds step's ``quantile``, labelled with its q (checked later)."""
    # Thresholds are their own step (so a new quantile reruns evaluation only).
    thr = open_store(thresholds_dir, "extreme thresholds")
    check_thresholds(thr, f"extreme thresholds {thresholds_dir}")
    q = thr.attrs.get("extreme_quantile")
    return pre.assign(quantile=thr["quantile"].assign_attrs(quantile=q))


def _predict_in_blocks(
    model: Any,
    predict: Callable[[Any, np.ndarray, int], Any],
    inputs: xr.DataArray,
    batch_size: int,
) -> np.ndarray:
    """Predict store chunk by store chunk, so only one chunk of inputs is in memory at once."""
    from hpcpipe.logs import progress

    n = inputs.sizes[SAMPLE]
    chunks = inputs.chunksizes.get(SAMPLE) if inputs.chunks else None
    step = int(max(chunks)) if chunks else max(n, 1)
    starts = list(range(0, n, step))
    out = []
    for s in progress(starts, len(starts), "predict (chunks)"):
        block = np.asarray(inputs.isel({SAMPLE: slice(s, s + step)}).values, dtype=np.float32)
        out.append(np.asarray(predict(model, block, batch_size)))
    return np.concatenate(out, axis=0)


def _check_meta(meta: dict, test: xr.Dataset) -> None:
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


def _identity(model_path: Path, meta: dict, params: dict) -> tuple[str, Any]:
    """Model name and seed: params, else model file, else the path .../{model}/{seed}/model.pt."""
    name = params.get("model") or meta.get("model") or model_path.parent.parent.name
    seed = params.get("seed")
    if seed is None:
        seed = meta.get("seed", (meta.get("train_config") or {}).get("seed"))
    if seed is None:
        seed = model_path.parent.name
    if isinstance(seed, str) and seed.lstrip("-").isdigit():
        seed = int(seed)
    return str(name), seed


def _finite_or_none(x: Any) -> float | None:
    return float(x) if x is not None and np.isfinite(float(x)) else None


def _log_headline(m: dict) -> None:
    lead = str(m["headline_lead"])
    rmse = {v: m["rmse"]["model"][v][lead] for v in m["variables"]}
    log.info(
        "%s seed %s: headline RMSE %s; beats baselines %s",
        m["model"],
        m["seed"],
        rmse,
        m["beats_baselines"],
    )

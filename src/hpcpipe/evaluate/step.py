"""The ``evaluate`` step: one run's stored forecasts on the test split, with explicit paths.

``evaluate`` = open the run's forecast store (written by predict) and the ``evaluate.external``
ones, check them (:mod:`hpcpipe.forecasts`) + :func:`~hpcpipe.evaluate.scoring.evaluate_forecasts`
(the science) + ``write_outputs``. No model is loaded: any store in the layout can be scored.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from hpcpipe import forecasts
from hpcpipe.atomic import write_json, write_text
from hpcpipe.contracts import check_thresholds
from hpcpipe.evaluate import plots
from hpcpipe.evaluate.scoring import (
    as_str_coord,
    check_not_empty,
    evaluate_forecasts,
    metrics_table,
    normalisation,
)
from hpcpipe.store import open_store

log = logging.getLogger("hpcpipe.evaluate")

# The declared outputs, as the workflow rule names them: metrics.json, metrics.csv,
# skill_vs_lead.png, error_maps.png, loss_curve.png.
OUTPUTS = ("metrics", "table", "skill", "maps", "loss")

StrPath = str | os.PathLike[str]


def evaluate(
    forecast_path: StrPath,
    history_path: StrPath,
    features_test_dir: StrPath,
    preprocessed_dir: StrPath,
    thresholds_dir: StrPath,
    stats_path: StrPath,
    outputs: Mapping[str, StrPath],
    params: dict,
    external: Mapping[str, StrPath] | None = None,
) -> dict:
    """Score one run's forecast store on the test split; write the five ``outputs`` (OUTPUTS).

    ``history_path``: the model's history.csv (for the loss curve; a placeholder plot if it is
    missing). ``stats_path``: stats.json (the observations' units). ``params``: config section
    ``evaluate`` (headline_lead, extreme_quantile) plus ``variables``; optional ``model``/
    ``seed`` override the names the store records. ``external``: name -> forecast store made
    elsewhere, scored beside the baselines. Returns the content of metrics.json.
    """
    paths = output_paths(outputs)  # before any work: a wrong call fails at once
    if not isinstance(external or {}, Mapping):
        raise ValueError(f"--external must be a JSON object of names -> paths, not {external!r}")
    variables = [str(v) for v in params["variables"]]
    test = as_str_coord(open_store(features_test_dir, "test features"))
    pre = with_quantile(
        as_str_coord(open_store(preprocessed_dir, "preprocessed data")), thresholds_dir
    )
    check_not_empty(test)
    want = forecasts.expected(test, pre, variables, forecasts.units_of(stats_path))
    norm = normalisation(pre, variables)
    # Every store is checked before any is read: a bad external one fails at once, by name.
    stores = {"model": forecasts.open_checked(forecast_path, "model", want)}
    for name, path in (external or {}).items():
        stores[name] = forecasts.open_checked(path, name, want)
    normalised = {k: forecasts.as_normalised(ds, test, norm, want) for k, ds in stores.items()}
    model_norm = normalised.pop("model")
    result = evaluate_forecasts(model_norm, test, pre, params, normalised)

    model_name, seed = _identity(Path(forecast_path), stores["model"].attrs, params)
    result["metrics"] = {
        # the validation loss of the weights that made the forecasts (what a sweep ranks runs
        # by; never the test scores), as predict copied it from the model file
        "model": model_name, "seed": seed,
        "val_loss": _finite_or_none(stores["model"].attrs.get("val_loss")),
        **result["metrics"],
    }  # fmt: skip
    if external:
        result["metrics"]["external"] = {k: str(p) for k, p in external.items()}
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


def with_quantile(pre: xr.Dataset, thresholds_dir: StrPath) -> xr.Dataset:
    """``pre`` plus the thresholds step's ``quantile``, labelled with its q (checked later)."""
    # Thresholds are their own step (so a new quantile reruns evaluation only).
    thr = open_store(thresholds_dir, "extreme thresholds")
    check_thresholds(thr, f"extreme thresholds {thresholds_dir}")
    q = thr.attrs.get("extreme_quantile")
    return pre.assign(quantile=thr["quantile"].assign_attrs(quantile=q))


def _identity(path: Path, attrs: Mapping[str, Any], params: dict) -> tuple[str, Any]:
    """Model name and seed: params, else the store's attrs, else .../{model}/{seed}{point}.zarr."""
    model, run = forecasts.path_identity(path)
    name = params.get("model") or attrs.get("model") or model
    seed = params.get("seed")
    if seed is None:
        seed = attrs.get("seed", run.split("-")[0])
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

"""The evaluation charts: skill against lead, error maps, training loss curve.

Matplotlib is imported inside ``figure`` so that scoring does not pay for it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from hpcpipe.atomic import atomic_path
from hpcpipe.store import decode_str

log = logging.getLogger("hpcpipe.evaluate")

STYLE = {
    "model": {"color": "C0", "marker": "o"},
    "persistence": {"color": "C1", "marker": "s", "linestyle": "--"},
    "climatology": {"color": "C2", "marker": "^", "linestyle": ":"},
}


def figure(width: float, height: float) -> Any:
    """A matplotlib Figure of ``width`` x ``height`` inches."""
    # The object API with an explicit Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def plot_skill(skill: xr.Dataset, path: str | os.PathLike[str]) -> None:
    """RMSE (top) and ACC (bottom) against lead, one column per variable."""
    variables = decode_str(skill["variable"].values)
    fig = figure(4.0 * len(variables), 6.0)
    axes = fig.subplots(2, len(variables), squeeze=False)
    leads = skill["lead"].values
    for j, v in enumerate(variables):
        for i, name in enumerate(("rmse", "acc")):
            ax = axes[i, j]
            for k in decode_str(skill["forecaster"].values):
                ax.plot(
                    leads,
                    skill[name].sel(forecaster=k, variable=v).values,
                    label=k,
                    **STYLE.get(k, {}),
                )
            ax.set_xlabel("lead (steps)")
            ax.set_ylabel("RMSE (physical units)" if name == "rmse" else "ACC")
            ax.set_title(f"{v}: {name.upper()}")
            ax.set_xticks(leads)
            ax.grid(alpha=0.3)
    axes[0, 0].legend()
    save_png(fig, path)


def plot_error_maps(maps: xr.DataArray, headline: int, path: str | os.PathLike[str]) -> None:
    """Per-grid-point RMSE at the headline lead: rows variables, columns model and persistence."""
    variables = decode_str(maps["variable"].values)
    shown = ["model", "persistence"]
    fig = figure(4.5 * len(shown), 2.8 * len(variables))
    axes = fig.subplots(len(variables), len(shown), squeeze=False)
    lon, lat = maps["lon"].values, maps["lat"].values
    for i, v in enumerate(variables):
        vals = maps.sel(variable=v, forecaster=shown).values
        # One colour scale per row, so model and persistence compare by eye.
        vmax = float(np.nanmax(vals)) if np.isfinite(vals).any() else 1.0
        for j, k in enumerate(shown):
            ax = axes[i, j]
            mesh = ax.pcolormesh(
                lon,
                lat,
                maps.sel(variable=v, forecaster=k).values,
                vmin=0.0,
                vmax=vmax or 1.0,
                shading="auto",
                cmap="viridis",
            )
            ax.set_title(f"{v}: {k} RMSE, lead {headline}")
            ax.set_xlabel("lon")
            ax.set_ylabel("lat")
        fig.colorbar(mesh, ax=list(axes[i]), shrink=0.9)
    save_png(fig, path)


def plot_loss_curve(
    history_csv: str | os.PathLike[str] | None, path: str | os.PathLike[str]
) -> None:
    """Train and validation loss per epoch from history.csv (a placeholder if there is none)."""
    fig = figure(6.0, 4.0)
    ax = fig.subplots()
    if history_csv is not None and Path(history_csv).exists():
        _draw_history(ax, pd.read_csv(history_csv))
    else:
        # The plot is a declared output: write one that says why it is empty.
        log.warning("no training history at %s; loss_curve.png is a placeholder", history_csv)
        ax.text(0.5, 0.5, "no training history found", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("training history")
    save_png(fig, path)


def _draw_history(ax: Any, hist: pd.DataFrame) -> None:
    from matplotlib.ticker import MaxNLocator

    for col, style in (("train_loss", "-"), ("val_loss", "--")):
        if col in hist:
            ax.plot(hist["epoch"], hist[col], style, marker=".", label=col.replace("_", " "))
    if "val_loss" in hist and hist["val_loss"].notna().any():
        best = hist.loc[hist["val_loss"].idxmin()]
        ax.axvline(best["epoch"], color="grey", alpha=0.5, label=f"best epoch {int(best['epoch'])}")
    # A log scale only where it is defined: every loss positive.
    if (hist.filter(like="_loss") > 0).all().all():
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (normalised units)")
    ax.legend()
    ax.grid(alpha=0.3)

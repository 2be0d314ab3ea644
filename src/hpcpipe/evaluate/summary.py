"""The summary across models and seeds: headline scores from every metrics.json, CSV and chart."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hpcpipe.atomic import write_text
from hpcpipe.evaluate.headline import headline_table, landing_rst
from hpcpipe.evaluate.plots import STYLE, figure, save_png
from hpcpipe.evaluate.scoring import BASELINES, FORECASTERS

log = logging.getLogger("hpcpipe.evaluate")


def summarize(
    metrics_paths: Sequence[Path],
    out_csv: Path,
    out_png: Path,
    title: str | None = None,
    landing: Path | None = None,
) -> None:
    """Headline RMSE per model, seed and variable with both baselines: a CSV and a bar chart.

    With ``landing``, also the report's landing page: the best model per variable against
    the baselines, and the chart (:mod:`hpcpipe.evaluate.headline`).
    """
    rows = [row for p in metrics_paths for row in _rows(json.loads(Path(p).read_text()))]
    df = pd.DataFrame(rows)
    if df.empty:
        raise ValueError("summarize: no metrics files given")
    df = df.sort_values(["variable", "model", "seed"], kind="stable").reset_index(drop=True)
    write_text(out_csv, df.to_csv(index=False))
    _plot_summary(df, Path(out_png), title)
    if landing is not None:
        write_text(landing, landing_rst(headline_table(df), Path(out_png)))
    log.info("summary of %d runs -> %s, %s", len(metrics_paths), out_csv, out_png)


def _rows(m: dict) -> list[dict[str, Any]]:
    """One row per variable of one metrics.json, at its headline lead (external forecasters
    as more rmse_/acc_ columns)."""
    lead = str(m["headline_lead"])
    external = _external(m)
    return [
        {
            "model": m.get("model"),
            "seed": m.get("seed"),
            "variable": v,
            "headline_lead": int(m["headline_lead"]),
            **{f"rmse_{k}": m["rmse"][k][v][lead] for k in (*FORECASTERS, *external)},
            **{f"acc_{k}": m["acc"][k][v][lead] for k in ("model", "persistence", *external)},
            "f1_model": m.get("extremes", {}).get("model", {}).get(v, {}).get("f1"),
            "beats_baselines": m["beats_baselines"][v],
        }
        for v in m["rmse"]["model"]
    ]


def _external(m: dict) -> list[str]:
    """The external forecasters of one metrics.json (evaluate.external), in its order."""
    return [k for k in m.get("forecasters", FORECASTERS) if k not in FORECASTERS]


def _external_columns(d: pd.DataFrame) -> list[str]:
    known = {f"rmse_{k}" for k in FORECASTERS}
    return [c[len("rmse_") :] for c in d.columns if c.startswith("rmse_") and c not in known
            and d[c].notna().any()]  # fmt: skip


def _plot_summary(df: pd.DataFrame, path: Path, title: str | None = None) -> None:
    """One panel per variable: baselines, then each model's mean over seeds (dots: seeds)."""
    variables = list(dict.fromkeys(df["variable"]))
    fig = figure(max(4.0, 1.2 * (df["model"].nunique() + 2)) * len(variables), 4.0)
    axes = fig.subplots(1, len(variables), squeeze=False)[0]
    for ax, v in zip(axes, variables, strict=True):
        _panel(ax, df[df["variable"] == v], v)
    if title:
        fig.suptitle(title)
    save_png(fig, path)


def _panel(ax: Any, d: pd.DataFrame, variable: str) -> None:
    """Bars: the baselines' mean RMSE, then each model's mean over seeds; dots: the seeds."""
    models = list(dict.fromkeys(d["model"]))
    seeds = [d.loc[d["model"] == name, "rmse_model"].astype(float) for name in models]
    labels = [*BASELINES, *(str(name) for name in models)]
    heights = [d[f"rmse_{b}"].astype(float).mean() for b in BASELINES] + [r.mean() for r in seeds]
    colors = [STYLE[b]["color"] for b in BASELINES] + [f"C{3 + k}" for k in range(len(models))]
    x = np.arange(len(labels))
    ax.bar(x, heights, color=colors, alpha=0.8)
    for k, r in enumerate(seeds):
        ax.plot(np.full(len(r), x[len(BASELINES) + k]), r, "k.", label="seeds" if k == 0 else None)
    ax.set_xticks(x, labels, rotation=20)
    ax.set_ylabel("RMSE (physical units)")
    ax.set_title(f"{variable}: headline RMSE (lead {int(d['headline_lead'].iloc[0])})")
    ax.grid(axis="y", alpha=0.3)
    if models:
        ax.legend()

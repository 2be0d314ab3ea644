"""The leaderboard of a sweep: every run ranked by validation loss, a chart, a report page.

Runs are ranked by the best epoch's **validation** loss, never by test scores: choosing on the
test set would leak it into the choice, and the test scores would no longer estimate skill.
The test RMSE and ACC at the headline lead (and the baselines') are shown next to the rank.

With thousands of runs the chart and the report show the top runs and the effect of each
parameter (median skill per value, or per bin of a continuous one), not every run;
results/leaderboard.csv has them all.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hpcpipe.atomic import write_text
from hpcpipe.evaluate.plots import figure, save_png
from hpcpipe.sweep import Run

log = logging.getLogger("hpcpipe.evaluate")

TOP = 10  # runs in the report's table
BINS = 8  # bins of a continuous parameter's effect
MAX_DOTS = 2000  # runs drawn as dots per panel; more are drawn as the effect line only


def rows(runs: Sequence[Run], metrics_paths: Sequence[Path]) -> list[dict[str, Any]]:
    """One row per run: identity, swept values, val loss, headline scores per variable."""
    out = []
    for run, path in zip(runs, metrics_paths, strict=True):
        m = json.loads(Path(path).read_text())
        lead = str(m["headline_lead"])
        row: dict[str, Any] = {
            "run": run.id, "model": run.model, "seed": run.seed, "point": run.point,
            **run.values, "val_loss": m.get("val_loss"),
        }  # fmt: skip
        for v in m["rmse"]["model"]:
            row[f"rmse_{v}"] = m["rmse"]["model"][v][lead]
            row[f"acc_{v}"] = m["acc"]["model"][v][lead]
            row[f"rmse_persistence_{v}"] = m["rmse"]["persistence"][v][lead]
            row[f"rmse_climatology_{v}"] = m["rmse"]["climatology"][v][lead]
        row["beats_baselines"] = all(m["beats_baselines"].values())
        out.append(row)
    return out


def leaderboard(table: list[dict[str, Any]], keys: Sequence[str]) -> pd.DataFrame:
    """The runs ranked by validation loss (missing last; ties by run id), best marked."""
    df = pd.DataFrame(table)
    for key in keys:  # a model's runs lack the other models' keys
        if key not in df:
            df[key] = np.nan
        elif all(isinstance(x, int) for x in df[key].dropna()):
            df[key] = df[key].astype("Int64")  # 8, not 8.0, beside the NaNs
    df["val_loss"] = pd.to_numeric(df["val_loss"], errors="coerce")
    df = df.sort_values(["val_loss", "run"], na_position="last", kind="stable")
    df.insert(0, "rank", np.arange(1, len(df) + 1))
    df["best"] = df["rank"] == 1
    df["skill"] = _skill(df)
    return df.reset_index(drop=True)


def _skill(df: pd.DataFrame) -> pd.Series:
    """RMSE skill score against persistence, mean over variables (1 - rmse/rmse_pers)."""
    variables = [c[len("rmse_persistence_") :] for c in df if c.startswith("rmse_persistence_")]
    scores = [1 - df[f"rmse_{v}"] / df[f"rmse_persistence_{v}"] for v in variables]
    return sum(scores) / len(scores)


def write(
    runs: Sequence[Run], metrics_paths: Sequence[Path], keys: Sequence[str],
    csv: Path, chart: Path, rst: Path,
) -> pd.DataFrame:  # fmt: skip
    """results/leaderboard.csv, the chart of skill against each swept key, the report page."""
    df = leaderboard(rows(runs, metrics_paths), keys)
    write_text(csv, df.drop(columns="skill").to_csv(index=False))
    plot(df, keys, chart)
    write_text(rst, report_rst(df, keys))
    best = df.iloc[0]
    log.info("leaderboard of %d runs -> %s; best %s (val loss %s)", len(df), csv, best["run"],
             best["val_loss"])  # fmt: skip
    return df


def effects(df: pd.DataFrame, key: str) -> pd.DataFrame:
    """Per value of ``key`` (per bin if it has many values): runs, median and best skill,
    best validation loss. NaN values (runs of models the key does not concern) are left out.
    """
    d = df[[key, "skill", "val_loss"]].dropna(subset=[key])
    values = d[key]
    numeric = pd.api.types.is_numeric_dtype(values)
    if numeric and values.nunique() > BINS:
        log_scale = bool((values > 0).all() and values.max() / values.min() > 100)
        edges = np.geomspace(values.min(), values.max(), BINS + 1) if log_scale else BINS
        groups = pd.cut(values, edges, include_lowest=True)
    else:
        groups = values.astype(str) if not numeric else values
    g = d.groupby(groups, observed=True, sort=True)
    return pd.DataFrame({
        "runs": g.size(), "median skill": g["skill"].median(), "best skill": g["skill"].max(),
        "best val loss": g["val_loss"].min(),
    })  # fmt: skip


def plot(df: pd.DataFrame, keys: Sequence[str], path: Path) -> None:
    """One panel per swept key: each run's skill (dots, at most MAX_DOTS), the median per
    value or bin (line), the best run by validation loss (star)."""
    fig = figure(max(4.5, 4.0 * len(keys)), 4.0)
    axes = fig.subplots(1, max(1, len(keys)), squeeze=False)[0]
    dots = df if len(df) <= MAX_DOTS else df.nsmallest(MAX_DOTS, "rank")
    best = df.iloc[0]
    for ax, key in zip(axes, keys, strict=False):
        d = dots.dropna(subset=[key])
        x = pd.to_numeric(d[key], errors="coerce")
        numeric = x.notna().all() and len(d)
        xs = x if numeric else d[key].astype(str)
        label = "runs" if len(dots) == len(df) else f"top {len(dots)} runs"
        ax.plot(xs, d["skill"], ".", alpha=0.4, label=label)
        e = effects(df, key)
        centres = [_centre(i) for i in e.index] if numeric else [str(i) for i in e.index]
        ax.plot(centres, e["median skill"], "k-", marker="o", label="median per value")
        if pd.notna(best.get(key)):
            bx = float(best[key]) if numeric else str(best[key])
            ax.plot([bx], [best["skill"]], "*", color="C3", markersize=14,
                    label=f"best by val loss ({best['run']})")  # fmt: skip
        if numeric and (x > 0).all() and x.max() / x.min() > 100:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("RMSE skill vs persistence (test)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"sweep: {len(df)} runs, ranked by validation loss")
    save_png(fig, path)


def _centre(interval: Any) -> float:
    return float(interval.mid) if isinstance(interval, pd.Interval) else float(interval)


def _list_table(df: pd.DataFrame, title: str) -> list[str]:
    cells = [[str(c) for c in df.columns]] + [
        [_fmt(x) for x in row] for row in df.itertuples(index=False)
    ]
    lines = [title, "", ".. list-table::", "   :header-rows: 1", ""]
    for row in cells:
        lines.append("   * - " + "\n     - ".join(c or "-" for c in row))
    return [*lines, ""]


def _fmt(x: Any) -> str:
    if isinstance(x, float | np.floating):
        return "-" if np.isnan(x) else f"{x:.4g}"
    return str(x)


def report_rst(df: pd.DataFrame, keys: Sequence[str], top: int = TOP) -> str:
    """The report's sweep section: the top runs and each parameter's effect (never every run)."""
    shown = ["rank", "run", *keys, "val_loss", "skill", "beats_baselines"]
    head = df.head(top)[shown]
    lines = ["Sweep", "-----", "",
             f"{len(df)} runs ranked by validation loss (results/leaderboard.csv has every run, "
             "with test RMSE and ACC per variable); skill is the test RMSE skill score against "
             "persistence at the headline lead, mean over variables. The best run is rank 1.",
             "", *_list_table(head, f"Top {len(head)} runs"), ""]  # fmt: skip
    for key in keys:
        e = effects(df, key).reset_index().rename(columns={key: "value"})
        e["value"] = e["value"].astype(str)
        lines += _list_table(e, f"Effect of {key}")
    return "\n".join(lines) + "\n"

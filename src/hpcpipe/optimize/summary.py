"""The optimize summary: every variant (and its float teacher) at the headline lead, a table
of skill and cost, and a chart of skill against cost."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from hpcpipe.atomic import write_text
from hpcpipe.evaluate.plots import figure, save_png

log = logging.getLogger("hpcpipe.optimize")

MARKERS = {"float": "o", "quantized": "s", "pruned_global": "^", "pruned_channel": "v",
           "distilled": "D"}  # fmt: skip


def rows(m: dict) -> list[dict[str, Any]]:
    """Rows of one variant's metrics.json: the variant's and its teacher's, per variable."""
    lead = str(m["headline_lead"])
    out = []
    for who, variant in (("variant", m["variant"]), ("teacher", "float")):
        s, c = m["scores"][who], m["cost"][who]
        timing = c.get("compiled", c["eager"])
        for v in m["variables"]:
            out.append({
                "variant": variant, "model": m.get("model"), "seed": m.get("seed"),
                "teacher": m.get("teacher"), "variable": v, "headline_lead": int(lead),
                "rmse": s["rmse"]["model"][v][lead],
                "rmse_vs_teacher": m["rmse_ratio"][v][lead] if who == "variant" else 1.0,
                "acc": s["acc"]["model"][v][lead],
                "rmse_persistence": s["rmse"]["persistence"][v][lead],
                "rmse_climatology": s["rmse"]["climatology"][v][lead],
                "parameters": c["parameters"], "nonzero_parameters": c["nonzero_parameters"],
                "file_bytes": c["file_bytes"], "weight_bytes": c["weight_bytes"],
                "eager_ms_b1": c["eager"]["latency_ms_b1"],
                "eager_ms_b64": c["eager"]["latency_ms_b64"],
                "compiled_ms_b1": c.get("compiled", {}).get("latency_ms_b1"),
                "compiled_ms_b64": c.get("compiled", {}).get("latency_ms_b64"),
                "samples_per_s": timing["samples_per_s"],
            })  # fmt: skip
    return out


def table(metrics_paths: Sequence[Path]) -> pd.DataFrame:
    """One row per (variant or teacher, variable); a teacher scored by several variants once."""
    data = [r for p in metrics_paths for r in rows(json.loads(Path(p).read_text()))]
    if not data:
        raise ValueError("optimize summary: no metrics files given")
    df = pd.DataFrame(data).drop_duplicates(["variant", "teacher", "variable"], keep="first")
    teacher_rows = df.set_index(["teacher", "variable"]).query("variant == 'float'")
    for col in ("parameters", "weight_bytes", "samples_per_s"):
        ref = teacher_rows[col].reindex(list(zip(df["teacher"], df["variable"], strict=True)))
        df[f"{col}_vs_teacher"] = df[col].to_numpy() / ref.to_numpy()
    return df.sort_values(["variable", "teacher", "variant"], kind="stable").reset_index(drop=True)


def summarize(metrics_paths: Sequence[Path], out_csv: Path, out_png: Path) -> pd.DataFrame:
    df = table(metrics_paths)
    write_text(out_csv, df.to_csv(index=False))
    plot(df, out_png)
    log.info("optimize summary of %d variants -> %s, %s", len(metrics_paths), out_csv, out_png)
    return df


def plot(df: pd.DataFrame, path: Path) -> None:
    """Per variable: headline RMSE against throughput and against parameters."""
    variables = list(dict.fromkeys(df["variable"]))
    fig = figure(10.0, 3.6 * len(variables))
    axes = fig.subplots(len(variables), 2, squeeze=False)
    teachers = list(dict.fromkeys(df["teacher"]))
    for row, v in zip(axes, variables, strict=True):
        d = df[df["variable"] == v]
        for ax, x, label in ((row[0], "samples_per_s", "samples/s (batch 64, CPU)"),
                             (row[1], "parameters", "parameters")):  # fmt: skip
            for _, r in d.iterrows():
                color = f"C{teachers.index(r['teacher']) % 10}"
                ax.scatter(r[x], r["rmse"], marker=MARKERS.get(r["variant"], "x"), color=color,
                           s=40, label=f"{r['variant']} ({r['model']})")  # fmt: skip
            for base, style in (("rmse_persistence", "--"), ("rmse_climatology", ":")):
                ax.axhline(d[base].iloc[0], color="grey", linestyle=style,
                           label=base.removeprefix("rmse_"))  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(f"{v} RMSE, lead {int(d['headline_lead'].iloc[0])}")
            ax.grid(alpha=0.3)
        row[1].legend(fontsize=6, loc="best")
    fig.suptitle("compressed models: skill against cost (lower RMSE is better)")
    save_png(fig, path)

"""The result in one table: per variable, the best model against both baselines.

The report's landing page shows it (results/landing.rst, included by
workflow/report/workflow.rst) above the summary chart, so a reader sees first whether the
model beats persistence and climatology, and by how much. The figures are those of
results/summary.csv: the mean over seeds at the headline lead, rounded as displayed here.
"""

from __future__ import annotations

import base64
import textwrap
from pathlib import Path

import pandas as pd

from hpcpipe.evaluate.scoring import BASELINES

# How the landing page rounds: RMSE and ACC to 3 decimals, improvements to 0.1 %.
SCORE_FORMAT = "{:.3f}"
GAIN_FORMAT = "{:.1f} %"
COLUMNS = (
    "variable", "lead", "best model", "seeds", "RMSE", "ACC", "RMSE persistence",
    "RMSE climatology", "ACC persistence", "better than persistence",
    "better than climatology",
)  # fmt: skip


def gain(model_rmse: float, baseline_rmse: float) -> float:
    """How much lower the model's RMSE is than the baseline's, in percent of the baseline's."""
    return 100.0 * (1.0 - model_rmse / baseline_rmse)


def headline_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per variable: the model with the lowest mean RMSE over seeds, and the baselines.

    ``summary`` is results/summary.csv (one row per model, seed and variable).
    """
    rows = []
    for variable, d in summary.groupby("variable", sort=False):
        means = d.groupby("model", sort=False)[["rmse_model", "acc_model"]].mean()
        best = str(means["rmse_model"].idxmin())
        rmse, acc = (float(x) for x in means.loc[best, ["rmse_model", "acc_model"]])
        persistence, climatology = (float(d[f"rmse_{b}"].mean()) for b in BASELINES)
        rows.append({
            "variable": variable, "lead": int(d["headline_lead"].iloc[0]), "best model": best,
            "seeds": int((d["model"] == best).sum()),
            "RMSE": SCORE_FORMAT.format(rmse), "ACC": SCORE_FORMAT.format(acc),
            "RMSE persistence": SCORE_FORMAT.format(persistence),
            "RMSE climatology": SCORE_FORMAT.format(climatology),
            "ACC persistence": SCORE_FORMAT.format(float(d["acc_persistence"].mean())),
            "better than persistence": GAIN_FORMAT.format(gain(rmse, persistence)),
            "better than climatology": GAIN_FORMAT.format(gain(rmse, climatology)),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=list(COLUMNS))


# The landing page centres its content vertically and cuts what does not fit the window: it
# stays short (lead and seeds go into its sentence, ACC beside RMSE).
SHOWN = {
    "best model": ("best model",),
    "RMSE (ACC)": ("RMSE", "ACC"),
    "persistence": ("RMSE persistence", "ACC persistence"),
    "climatology": ("RMSE climatology",),
    "better than persistence": ("better than persistence",),
    "better than climatology": ("better than climatology",),
}


def _cell(row: pd.Series, columns: tuple[str, ...]) -> str:
    first, *rest = (str(row[c]) for c in columns)
    return f"{first} ({rest[0]})" if rest else first


def landing_rst(table: pd.DataFrame, chart_png: Path) -> str:
    """reStructuredText for the report's landing page: the table, then the chart inline.

    One column per variable (a page column is narrow; datasets have few variables).
    """
    lead, seeds = int(table["lead"].max()), int(table["seeds"].max())
    by_var = table.set_index("variable")
    shown = pd.DataFrame(
        {v: [_cell(row, cols) for cols in SHOWN.values()] for v, row in by_var.iterrows()},
        index=list(SHOWN),
    )
    header = "   * - \n     - " + "\n     - ".join(map(str, shown.columns))
    rows = [f"   * - {name}\n     - " + "\n     - ".join(map(str, row)) for name, row in
            zip(shown.index, shown.itertuples(index=False), strict=True)]  # fmt: skip
    # Inline (a data URI), so the self-contained report.html carries it; docutils joins a
    # URI's lines, and refuses lines over 10,000 characters.
    chart = base64.b64encode(Path(chart_png).read_bytes()).decode()
    uri = textwrap.wrap(f"data:image/png;base64,{chart}", 76)
    return "\n".join([
        "Result",
        "------",
        "",
        f"Latitude-weighted RMSE (lower is better) and ACC at lead {lead}, the best model's mean",
        f"over {seeds} seed{'s' if seeds > 1 else ''} against the baselines (results/summary.csv",
        "has every run).",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :stub-columns: 1",
        "",
        header,
        *rows,
        "",
        ".. image::",
        *(f"   {line}" for line in uri),
        "   :alt: headline RMSE of every model and seed against the baselines",
        "   :width: 75%",
        "",
    ])  # fmt: skip

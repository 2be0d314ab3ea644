"""`hpcpipe usage [DIR]`: what every step asked for against what it used, from the manifests.

One row per step run (a job of a rule with its wildcards): requested and used memory, time
and CPU, their efficiency (used / requested, %), and a flag where a request is more than
:data:`OVER_ASKING` times the use (sites rank users by this; an over-asking job also waits
longer in the queue). The same rows go to a CSV, and a chart of requested vs used memory and
time per rule goes into the report.
"""

from __future__ import annotations

import os
from typing import Any

from hpcpipe.provenance import manifests

OVER_ASKING = 2.0
COLUMNS = (
    "rule", "wildcards", "slurm_job_id", "threads", "cpu_s", "cpu_eff_pct",
    "mem_req_mb", "mem_used_mb", "mem_eff_pct", "time_req_min", "wall_s", "time_eff_pct",
    "read_mb", "write_mb", "gpu_peak_mem_mb", "flags",
)  # fmt: skip


def _pct(used: float | None, asked: float | None) -> float | None:
    return round(100 * used / asked, 1) if used is not None and asked else None


def _flags(row: dict[str, Any]) -> str:
    """'mem', 'time', 'cpu' where the request is over OVER_ASKING x the use."""
    out = []
    for name, eff in (("mem", "mem_eff_pct"), ("time", "time_eff_pct"), ("cpu", "cpu_eff_pct")):
        if row[eff] is not None and row[eff] < 100 / OVER_ASKING:
            out.append(f"{name} x{100 / max(row[eff], 0.1):.0f}")
    return " ".join(out)


def rows(root: str | os.PathLike[str] = ".") -> list[dict[str, Any]]:
    """One row per recorded step run under ``root``, sorted by rule and wildcards."""
    out = []
    for m in manifests(root):
        used, asked = m.get("usage"), m.get("requested")
        if not used or "wall_s" not in used or not asked:
            continue  # made by a version that did not record usage, or not measured
        threads, wall, runtime = asked.get("threads") or 1, used["wall_s"], asked.get("runtime_min")
        tasks = asked.get("tasks") or 1  # ranks, each with its threads
        row = {
            "rule": m.get("rule", m["step"]),
            "wildcards": ",".join(f"{k}={v}" for k, v in sorted(m.get("wildcards", {}).items())),
            "slurm_job_id": asked.get("slurm_job_id") or "",
            "threads": threads,
            "cpu_s": used["cpu_s"],
            "cpu_eff_pct": _pct(used["cpu_s"], wall * threads * tasks),
            "mem_req_mb": asked.get("mem_mb"),
            "mem_used_mb": used["peak_rss_mb"],
            "mem_eff_pct": _pct(used["peak_rss_mb"], asked.get("mem_mb")),
            "time_req_min": runtime,
            "wall_s": wall,
            "time_eff_pct": _pct(wall, runtime * 60 if runtime else None),
            "read_mb": used.get("read_mb"),
            "write_mb": used.get("write_mb"),
            "gpu_peak_mem_mb": used.get("gpu_peak_mem_mb"),
        }
        row["flags"] = _flags(row)
        out.append(row)
    return sorted(out, key=lambda r: (r["rule"], r["wildcards"]))


def table(data: list[dict[str, Any]]) -> str:
    """The trace as aligned text, over-asking rows flagged at the end."""
    shown = ("rule", "wildcards", "mem_req_mb", "mem_used_mb", "mem_eff_pct", "time_req_min",
             "wall_s", "time_eff_pct", "threads", "cpu_s", "cpu_eff_pct", "flags")  # fmt: skip
    cells = [list(shown)] + [["" if r[c] is None else str(r[c]) for c in shown] for r in data]
    widths = [max(len(row[i]) for row in cells) for i in range(len(shown))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    over = sum(1 for r in data if r["flags"])
    lines.append(f"{len(data)} step runs; {over} ask for more than {OVER_ASKING:g}x what they use")
    return "\n".join(line.rstrip() for line in lines)


def write_csv(data: list[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    import csv
    import io

    from hpcpipe.atomic import write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(data)
    write_text(path, buf.getvalue())


def write_chart(data: list[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Requested vs used memory (left) and time (right), one pair of bars per rule (its
    largest job: what sizing from usage would go by)."""
    from hpcpipe.evaluate.plots import figure, save_png

    by_rule: dict[str, list[float]] = {}
    for r in data:
        mem_req, mem, t_req, t = by_rule.setdefault(r["rule"], [0.0, 0.0, 0.0, 0.0])
        by_rule[r["rule"]] = [max(mem_req, r["mem_req_mb"] or 0), max(mem, r["mem_used_mb"]),
                              max(t_req, (r["time_req_min"] or 0)), max(t, r["wall_s"] / 60)]  # fmt: skip
    names = sorted(by_rule)
    fig = figure(10, 0.5 * max(4, len(names)) + 1.5)
    ys = range(len(names))
    for ax, (i_req, i_used, unit) in zip(
        fig.subplots(1, 2), ((0, 1, "memory (MB)"), (2, 3, "time (min)")), strict=True
    ):
        ax.barh([y + 0.2 for y in ys], [by_rule[n][i_req] for n in names], 0.4,
                label="requested", color="#bbbbbb")  # fmt: skip
        ax.barh([y - 0.2 for y in ys], [by_rule[n][i_used] for n in names], 0.4,
                label="used (peak)", color="#1f77b4")  # fmt: skip
        ax.set_yticks(list(ys), names)
        ax.set_xlabel(unit)
        ax.set_xscale("log")  # use is often 10-1000x below the request: both stay visible
        ax.legend(loc="lower right")
    fig.suptitle("Requested vs used, largest job per rule")
    save_png(fig, path)

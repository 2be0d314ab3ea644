"""The usage meter on a real process tree, the ranks' merge, sizing from manifests, the trace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hpcpipe.sizing import history, sized
from hpcpipe.usage import RANKS_DIR, Meter, collect_ranks, leave_for_rank0, merge
from hpcpipe.usage_report import rows, table

# A child that holds 200 MB for a second and burns CPU meanwhile.
HOG = "import time; b = b'x' * (200 * 2**20); t = time.time()\nwhile time.time() - t < 1.2: pass"


def test_meter_counts_a_child_process_memory_and_cpu() -> None:
    meter = Meter().start()
    subprocess.run([sys.executable, "-c", HOG], check=True)
    usage = meter.stop()
    assert usage["peak_rss_mb"] > 200, usage  # the child's 200 MB, sampled while it lived
    assert usage["cpu_s"] >= 1.0, usage  # reaped child's CPU counted
    # a bound against a runaway sampler; its share is measured by scripts/bench usage
    assert usage["meter_cpu_s"] < 0.05 * usage["wall_s"] + 0.01, usage


def test_merge_adds_ranks_only_where_their_samples_coincide() -> None:
    a = {"wall_s": 10, "cpu_s": 5, "peak_rss_mb": 300, "read_mb": 1, "write_mb": 1,
         "buckets": {"1": 300, "2": 100}}  # fmt: skip
    b = {"wall_s": 9, "cpu_s": 4, "peak_rss_mb": 300, "read_mb": 2, "write_mb": 0,
         "buckets": {"1": 50, "2": 300}}  # fmt: skip
    got = merge([a, b])
    assert got["peak_rss_mb"] == 400  # not 600, the sum of peaks that did not coincide
    assert got["cpu_s"] == 9 and got["wall_s"] == 10 and got["ranks"] == 2


def test_rank0_collects_the_other_ranks_usage(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    outputs = [str(tmp_path / "model.pt")]
    own = {"wall_s": 5, "cpu_s": 5, "peak_rss_mb": 100, "buckets": {"7": 100}}
    leave_for_rank0({**own, "cpu_s": 4, "buckets": {"7": 90}}, outputs, "42", 1)
    got = collect_ranks(own, outputs, "42", world=3, wait_s=0.3)  # rank 2 never reports
    assert got["ranks"] == 2 and got["cpu_s"] == 9 and got["peak_rss_mb"] == 190
    assert got["missing_ranks"] == [2]
    assert not (tmp_path / RANKS_DIR).exists()  # nothing left for the next run, nor litter


def _manifest(root: Path, name: str, rule: str, wildcards: dict, peak: float, wall: float,
              job_peak: float | None = None) -> None:  # fmt: skip
    usage = {"wall_s": wall, "cpu_s": wall, "peak_rss_mb": peak}
    if job_peak is not None:
        usage["job_peak_rss_mb"] = job_peak
    data = {"step": rule, "rule": rule, "wildcards": wildcards, "outputs": {name: "x"},
            "usage": usage,
            "requested": {"threads": 1, "mem_mb": 4000, "runtime_min": 60}}  # fmt: skip
    (root / f"{name}.manifest.json").write_text(json.dumps(data))


def test_sizing_takes_the_largest_job_with_headroom_floor_limit_and_attempt(tmp_path) -> None:
    _manifest(tmp_path, "a", "train", {"model": "cnn", "seed": "0"}, 300, 100)
    _manifest(tmp_path, "b", "train", {"model": "unet", "seed": "0"}, 250, 500, job_peak=390)
    _manifest(tmp_path, "c", "summary", {}, 10, 1)
    history.cache_clear()
    on = {"from_usage": True, "limits": {"gpu": {"mem_mb": 1000}}}
    wc = {"model": "cnn", "seed": "1"}  # never ran: the rule's other jobs decide
    args = dict(root=str(tmp_path))
    assert sized(on, "train", wc, "mem_mb", 4000, 1, **args) == 600  # 390 x 1.5 -> 600
    assert sized(on, "train", wc, "runtime", 120, 1, **args) == 13  # 500 s x 1.5 -> 13 min
    assert sized(on, "train", wc, "mem_mb", 4000, 3, "gpu", **args) == 1000  # the limit
    assert sized(on, "summary", {}, "mem_mb", 1000, 1, **args) == 200  # the floor
    assert sized(on, "evaluate", wc, "mem_mb", 4000, 2, **args) == 8000  # no history: tier
    assert sized({}, "train", wc, "mem_mb", 4000, 1, **args) == 4000  # off by default
    data = rows(tmp_path)
    assert [r["rule"] for r in data] == ["summary", "train", "train"]
    assert all("mem x" in r["flags"] for r in data)
    assert "3 step runs; 3 ask for more than 2x" in table(data)

"""What a step used: wall and CPU time, peak memory and I/O of its whole process tree, GPUs.

How, and why so:

- **Peak memory** is the largest *sum* of the resident set sizes of the step's process tree
  (this process and every descendant: Dask worker processes, local ranks), sampled in a
  daemon thread, the way SLURM's ``jobacct_gather/linux`` computes ``MaxRSS``: the peak of
  the tree at one moment, never a sum of peaks that did not coincide. This process's own
  ``ru_maxrss`` is a floor (it catches a spike of the main process between two samples).
  Ranks started outside the tree (``srun -n N``, ``hpcpipe launch``'s siblings) each sample
  their own tree in wall-clock buckets of :data:`BUCKET_S`; rank 0 adds them bucket by bucket
  (:func:`merge`), so their peaks count together only where they coincided.
- **Inside a SLURM job** the same sum is also taken over every process of the job on this
  node (the processes in the job's memory cgroup: the Snakemake that runs the job's rules,
  the shells, the step), as ``job_peak_rss_mb``: what the job's ``--mem`` must cover, and
  what sizing from usage goes by. Sampled like SLURM's ``jobacct_gather/linux`` (RSS of the
  processes, page cache not counted), so it compares with sacct's ``MaxRSS``.
- **CPU** is user + system time of this process and of its reaped descendants
  (``getrusage``), plus what descendants still alive at the end had used (``/proc``).
- **I/O** is the bytes passed through read/write calls (``rchar``/``wchar`` of
  ``/proc/<pid>/io``, which includes reaped children), page-cache hits included.
- **GPU**: the peak memory torch reserved on this process's devices, when the step used CUDA,
  and the mean of the GPU's utilisation at each sample (NVML, through torch).
- **Cost**: the sampler scans ``/proc`` (about 1 ms per 100 processes) and waits at least
  :data:`MAX_SHARE` times that long between scans, so it takes under 0.5 % of one core;
  its own CPU time is recorded (``meter_cpu_s``), which the benchmark reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hpcpipe.runtime.cgroup import job_cgroup

MIN_INTERVAL_S = 0.2  # between two samples: short steps still get several
MAX_INTERVAL_S = 2.0  # SLURM's accounting samples every 2 s on the local cluster
# Wall-clock bucket in which the ranks' samples are added up: no shorter than the longest
# interval, so every rank has a sample in every bucket (out of phase, they would miss).
BUCKET_S = MAX_INTERVAL_S
MAX_SHARE = 0.005  # at most this share of one core goes to sampling
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
MB = 2**20
# where ranks other than 0 leave their usage for rank 0 (Snakemake's own hidden directory)
RANKS_DIR = os.path.join(".snakemake", "hpcpipe-usage")
RANK_WAIT_S = 15.0  # how long rank 0 waits for the other ranks' usage after its step


def _stat(pid: int) -> tuple[int, float, int] | None:
    """(parent pid, CPU seconds incl. reaped children, RSS bytes) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()  # the name may hold spaces and parentheses
    cpu = sum(int(x) for x in fields[11:15]) / TICK  # utime stime cutime cstime
    return int(fields[1]), cpu, int(fields[21]) * PAGE


def _io(pid: int | str = "self") -> tuple[int, int]:
    """(rchar, wchar) of a process: bytes through read and write calls, reaped children's in."""
    try:
        with open(f"/proc/{pid}/io") as f:
            values = dict(line.split(": ") for line in f.read().splitlines())
    except (OSError, ValueError):
        return 0, 0
    return int(values.get("rchar", 0)), int(values.get("wchar", 0))


def _cgroup_rss(where: Path) -> int:
    """Summed RSS (bytes) of every process in a cgroup and the cgroups below it."""
    total = 0
    for here, _, _ in os.walk(where):
        try:
            with open(os.path.join(here, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            continue
        total += sum(st[2] for pid in pids if (st := _stat(pid)) is not None)
    return total


def _children(pid: int) -> list[int]:
    """The child pids of ``pid``, from its threads' ``children`` lists (no scan of /proc:
    on a node with thousands of processes that would cost the sampler its budget)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return out


def _descendants(root: int) -> dict[int, tuple[float, int]]:
    """pid -> (CPU s, RSS bytes) of every live descendant of ``root``."""
    out: dict[int, tuple[float, int]] = {}
    todo = _children(root)
    while todo:
        pid = todo.pop()
        if pid in out or (st := _stat(pid)) is None:
            continue
        out[pid] = st[1:]
        todo += _children(pid)
    return out


class Meter:
    """Samples this process's tree in a daemon thread from :meth:`start` to :meth:`stop`."""

    def __init__(self) -> None:
        self.root = os.getpid()
        self.buckets: dict[int, float] = {}  # wall-clock bucket -> largest tree RSS (MB)
        self.alive: dict[int, tuple[float, int]] = {}  # descendants at the last sample
        self.io_rss: dict[int, tuple[int, int]] = {}
        self.job = job_cgroup()
        self.job_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hpcpipe-usage", daemon=True)
        self.meter_cpu_s = 0.0
        self.gpu_util: list[float] = []  # % at each sample, once the step uses CUDA

    def start(self) -> Meter:
        self._thread.start()
        return self

    def _sample(self) -> float:
        """One sample; the CPU time it took (not wall time: on a busy node that would
        stretch the interval for nothing)."""
        start = time.thread_time()
        desc = _descendants(self.root)
        own = _stat(self.root)
        rss = (own[2] if own else 0) + sum(r for _, r in desc.values())
        key = int(time.time() // BUCKET_S)
        self.buckets[key] = max(self.buckets.get(key, 0.0), rss / MB)
        self.alive = desc
        self.io_rss = {pid: _io(pid) for pid in desc}
        if self.job is not None:
            self.job_peak = max(self.job_peak, _cgroup_rss(self.job))
        if (util := _gpu_util()) is not None:
            self.gpu_util.append(util)
        return time.thread_time() - start

    def _loop(self) -> None:
        t_cpu = time.thread_time()
        interval = MIN_INTERVAL_S
        while True:
            took = self._sample()
            interval = min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, took / MAX_SHARE))
            if self._stop.wait(interval):
                break
        self.meter_cpu_s = time.thread_time() - t_cpu

    def stop(self) -> dict[str, Any]:
        """Stop sampling; this rank's usage (with its buckets, for :func:`merge`)."""
        self._stop.set()
        self._thread.join()
        self._sample()  # the descendants still alive now: not in getrusage's children
        # The whole process from its start (interpreter and imports too), as sacct counts it.
        cpu = _own_cpu() + sum(c for c, _ in self.alive.values())
        rchar, wchar = _io()
        rchar += sum(r for r, _ in self.io_rss.values())
        wchar += sum(w for _, w in self.io_rss.values())
        # Floors: this process's own peak, and the largest single child's (a short child
        # between two samples); the tree at one moment held at least either.
        floor = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF,
                    resource.RUSAGE_CHILDREN)) / 1024  # KiB on Linux  # fmt: skip
        peak = max([floor, *self.buckets.values()])
        usage = {
            "wall_s": round(_elapsed(), 3),
            "cpu_s": round(cpu, 3),
            "peak_rss_mb": round(peak, 1),
            "read_mb": round(rchar / MB, 2),
            "write_mb": round(wchar / MB, 2),
            "meter_cpu_s": round(self.meter_cpu_s, 4),
            "ranks": 1,
            "method": "peak of the process tree's summed RSS, sampled in a thread",
        }
        if self.job is not None:
            usage["job_peak_rss_mb"] = round(max(self.job_peak / MB, peak), 1)
        usage.update(_gpu_usage())
        if self.gpu_util:
            usage["gpu_util_mean_percent"] = round(sum(self.gpu_util) / len(self.gpu_util), 1)
        return {**usage, "buckets": {str(k): round(v, 1) for k, v in self.buckets.items()}}


def _elapsed() -> float:
    """Seconds since this process started (the kernel's start time, so imports count)."""
    with open("/proc/self/stat", "rb") as f:
        raw = f.read()
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - int(raw[raw.rfind(b")") + 2 :].split()[19]) / TICK


def _own_cpu() -> float:
    ru_self = resource.getrusage(resource.RUSAGE_SELF)
    ru_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru_self.ru_utime + ru_self.ru_stime + ru_children.ru_utime + ru_children.ru_stime


def _gpu_usage() -> dict[str, Any]:
    """Peak GPU memory torch reserved in this process; nothing when the step never used CUDA."""
    torch = sys.modules.get("torch")  # never imported here: array steps do not load torch
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    peak = sum(torch.cuda.max_memory_reserved(d) for d in range(torch.cuda.device_count()))
    return {"gpu_peak_mem_mb": round(peak / MB, 1)}


def _gpu_util() -> float | None:
    """This process's GPU's utilisation now (%), once the step initialised CUDA; None
    before, or without NVML's Python bindings (unknown, not an error)."""
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_initialized():
            return None
        return float(torch.cuda.utilization())
    # also while the step is still importing torch (this runs in the meter's thread): a
    # partly initialised module has no .cuda yet
    except Exception:
        return None


def merge(ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """One step's usage from its ranks' (rank 0 first): times and bytes add up, wall is rank
    0's, and peak memory is the largest sum of the ranks' samples in one wall-clock bucket."""
    if len(ranks) == 1:
        return {k: v for k, v in ranks[0].items() if k != "buckets"}
    total: dict[str, float] = {}
    for r in ranks:
        for key, rss in r.get("buckets", {}).items():
            total[key] = total.get(key, 0.0) + rss
    out = {k: v for k, v in ranks[0].items() if k != "buckets"}
    for key in ("cpu_s", "read_mb", "write_mb", "meter_cpu_s", "gpu_peak_mem_mb"):  # summed
        if any(key in r for r in ranks):
            out[key] = round(sum(r.get(key, 0.0) for r in ranks), 3)
    if utils := [r["gpu_util_mean_percent"] for r in ranks if "gpu_util_mean_percent" in r]:
        out["gpu_util_mean_percent"] = round(sum(utils) / len(utils), 1)  # one GPU per rank
    out["peak_rss_mb"] = round(max([ranks[0]["peak_rss_mb"], *total.values()]), 1)
    out["ranks"] = len(ranks)
    return out


def _ranks_dir(outputs: list[str], job: str | None) -> Path:
    import hashlib

    key = hashlib.sha1("\0".join([job or "local", *map(os.path.abspath, outputs)]).encode())
    return Path(RANKS_DIR) / key.hexdigest()[:16]


def leave_for_rank0(usage: dict[str, Any], outputs: list[str], job: str | None, rank: int) -> None:
    """On a rank other than 0: leave this rank's usage where rank 0 collects it."""
    from hpcpipe.atomic import write_json

    where = _ranks_dir(outputs, job)
    where.mkdir(parents=True, exist_ok=True)
    write_json(where / f"rank-{rank}.json", usage)


def clear_ranks(outputs: list[str], job: str | None) -> None:
    """Rank 0 at its start: nothing an earlier run's ranks left is taken for this run's."""
    shutil.rmtree(_ranks_dir(outputs, job), ignore_errors=True)


def collect_ranks(
    own: dict[str, Any], outputs: list[str], job: str | None, world: int,
    wait_s: float = RANK_WAIT_S,
) -> dict[str, Any]:  # fmt: skip
    """Rank 0: its usage merged with the other ranks' (waiting for them a little: they end
    at about the same time); ranks that never reported are named in ``missing_ranks``."""
    where = _ranks_dir(outputs, job)
    deadline = time.monotonic() + (wait_s if world > 1 else 0)
    found: dict[int, dict[str, Any]] = {}
    while True:
        for rank in range(1, world):
            path = where / f"rank-{rank}.json"
            if rank not in found and path.exists():
                found[rank] = json.loads(path.read_text())
        if len(found) == world - 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    shutil.rmtree(where, ignore_errors=True)
    with contextlib.suppress(OSError):
        where.parent.rmdir()  # when no other step's ranks are reporting now
    merged = merge([own, *(found[r] for r in sorted(found))])
    if missing := sorted(set(range(1, world)) - set(found)):
        merged["missing_ranks"] = missing
    return merged


def parse_wildcards(text: str | None) -> dict[str, str]:
    """Snakemake's ``{wildcards}`` ("model=cnn,seed=0") as a dict ({} for none)."""
    pairs = (p.split("=", 1) for p in (text or "").split(",") if "=" in p)
    return {k.strip(): v.strip() for k, v in pairs}

"""Running one step: its allocation, its Dask runtime, its outputs' manifests, its exit code.

What every step shares, in order: read the allocation; on a Dask worker rank of a multi-task
step, serve as a worker and stop; otherwise remove partial outputs a killed run left, run
the step inside its Dask runtime, and (rank 0 only: the rank that writes outputs) write the
provenance manifests. Errors reach the user as one plain sentence (exit 1), the traceback
goes to the step's log; a training run stopped by a signal exits 128 + signal.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import logging
import os
import sys
import time
from typing import Any

from hpcpipe import logs
from hpcpipe.steps import Step

log = logging.getLogger("hpcpipe")
# ValueError covers ConfigError, DatasetError and the steps' own checks; the rest are the
# store, checkpoint and Dask errors, whose messages name the path or mode.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, RuntimeError)


def run_step(step: Step, ns: argparse.Namespace) -> int:
    """Run ``step`` with its parsed arguments ``ns``; the process's exit code."""
    from hpcpipe.runtime.allocation import allocation
    from hpcpipe.runtime.dask import serve_allocation_worker, settings_for_step
    from hpcpipe.train.stop import TrainingStopped
    from hpcpipe.usage import Meter

    logs.setup(ns.log)
    start = time.monotonic()
    meter = Meter().start()  # what the step's process tree uses, until its manifests
    try:
        alloc = allocation(ns.threads)
        settings = settings_for_step(ns.dask)
        if serve_allocation_worker(settings, alloc):
            # A worker rank of a multi-task step: rank 0 runs the step and writes its outputs.
            _leave_usage(step, ns, meter)
            log.info("hpcpipe %s: worker rank done", step.name)
            return 0
        log.info(
            "hpcpipe %s: %d CPUs, %.1f GB, %d GPUs%s",
            step.name, alloc.cpus, alloc.memory_gb, alloc.gpus, _where(),
        )  # fmt: skip
        _run_with_manifests(step, ns, alloc, settings, start, meter)
    except TrainingStopped as exc:
        # Not a failure of the step but not done either: Snakemake must see it unfinished.
        log.warning("%s", exc)
        print(f"hpcpipe {step.name}: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except Exception as exc:
        if (full := _disk_full(exc)) is not None:
            where = full or ", ".join(map(str, step.paths(ns, "output")))
            log.error(
                "%s failed: no space left on the device of %s. Free space there and rerun: "
                "nothing half-written is left under an output's name.", step.name, where,
            )  # fmt: skip
            return 1
        # Errors the steps raise on purpose name the file/key/variable: no traceback needed.
        expected = isinstance(exc, EXPECTED_ERRORS) and not _want_traceback()
        logs.failure(step.name, exc, expected=expected)
        return 1
    log.info("hpcpipe %s finished in %.1f s", step.name, time.monotonic() - start)
    return 0


def _disk_full(exc: BaseException | None) -> str | None:
    """The path that a "no space left on device" error (perhaps wrapped) was writing ("" when
    it names none); None for any other error."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return str(exc.filename or "")
        exc = exc.__cause__ or exc.__context__
    return None


def _run_with_manifests(
    step: Step, ns: argparse.Namespace, alloc: Any, settings: Any, start: float, meter: Any
) -> None:
    from hpcpipe.runtime.dask import dask_runtime
    from hpcpipe.runtime.environment import launcher_rank, slurm_job_id
    from hpcpipe.usage import clear_ranks

    started = datetime.datetime.now(datetime.UTC)
    inputs, outputs = step.paths(ns, "input"), step.paths(ns, "output")
    if launcher_rank() != 0:  # only rank 0 of a multi-rank step writes outputs and manifests
        with dask_runtime(alloc, settings):
            step.run(ns)
        _leave_usage(step, ns, meter)
        return
    clear_ranks(outputs, slurm_job_id())
    _remove_leftovers(outputs)
    with dask_runtime(alloc, settings):
        step.run(ns)
    if outputs:
        try:
            usage = _step_usage(outputs, meter)
        except Exception as exc:  # measuring must never fail a step that succeeded
            log.warning("usage: not recorded (%s: %s)", type(exc).__name__, exc)
            usage = {"error": f"{type(exc).__name__}: {exc}"}
        _write_manifests(step, ns, inputs, outputs, started, alloc, start, usage)


def _leave_usage(step: Step, ns: argparse.Namespace, meter: Any) -> None:
    """A rank other than 0: its usage goes to rank 0, which records the step's."""
    from hpcpipe.runtime.environment import launcher_rank, slurm_job_id
    from hpcpipe.usage import leave_for_rank0

    outputs = step.paths(ns, "output")
    try:
        leave_for_rank0(meter.stop(), outputs, slurm_job_id(), launcher_rank())
    except Exception as exc:  # rank 0 then names this rank as missing; the step went well
        log.warning("usage: not left for rank 0 (%s: %s)", type(exc).__name__, exc)


def _step_usage(outputs: list[str], meter: Any) -> dict[str, Any]:
    from hpcpipe.runtime.environment import DistEnv, slurm_job_id
    from hpcpipe.usage import collect_ranks

    world = DistEnv.from_environ().world_size
    usage = collect_ranks(meter.stop(), outputs, slurm_job_id(), world)
    if usage.get("missing_ranks"):
        log.warning("usage: no record from ranks %s; their use is not counted",
                    usage["missing_ranks"])  # fmt: skip
    return usage


def _requested(ns: argparse.Namespace, alloc: Any, usage: dict[str, Any]) -> dict[str, Any]:
    """What the rule asked for (Snakemake's resources), else what the step was given."""
    from hpcpipe.runtime.environment import slurm_job_id

    return {
        "threads": ns.threads or alloc.cpus,
        "mem_mb": ns.mem_mb or round(alloc.memory_bytes / 2**20),
        "runtime_min": ns.runtime,
        "gpus": alloc.gpus,
        "tasks": usage.get("ranks", 1),
        "slurm_job_id": slurm_job_id(),
    }


def _write_manifests(
    step: Step, ns: argparse.Namespace, inputs: list[str], outputs: list[str],
    started: datetime.datetime, alloc: Any, start: float, usage: dict[str, Any],
) -> None:  # fmt: skip
    from hpcpipe.provenance import write_manifests
    from hpcpipe.store import CHECKSUM_SECONDS
    from hpcpipe.usage import parse_wildcards

    t0 = time.monotonic() - CHECKSUM_SECONDS[0]  # chunk checksums count as manifest cost
    resources = {"cpus": alloc.cpus, "memory_gb": round(alloc.memory_gb, 2), "gpus": alloc.gpus}
    # The rule is the step's name with underscores (check-raw runs in rule check_raw)
    job = {"rule": ns.rule or step.name.replace("-", "_"), "wildcards": parse_wildcards(ns.wildcards),
           "usage": usage, "requested": _requested(ns, alloc, usage)}  # fmt: skip
    write_manifests(step.name, ns.params, inputs, outputs, started, resources, job)
    took = time.monotonic() - t0
    log.info(
        "provenance: manifests and chunk checksums took %.3f s (%.2f%% of the step)",
        took, 100 * took / max(time.monotonic() - start, 1e-9),
    )  # fmt: skip


def _remove_leftovers(outputs: list[str]) -> None:
    from hpcpipe.atomic import remove_leftovers

    for out in outputs:
        for p in remove_leftovers(out):
            log.info("removed %s, a partial output left by a killed run", p)


def _where() -> str:
    from hpcpipe.runtime.environment import node_name, slurm_job

    job = slurm_job()
    if job is None:
        return " (local)"
    part = job.get("job_partition", "?")
    # A requeued job runs again under the same id: say which run this is.
    again = f", restart {job['restart_count']}" if job.get("restart_count", "0") != "0" else ""
    return f" (SLURM job {job['job_id']}{again}, partition {part}, node {node_name()})"


def _want_traceback() -> bool:
    return os.environ.get("HPCPIPE_TRACEBACK", "") not in ("", "0")

"""The one module that owns Dask's runtime inside a step.

Modes (``dask.mode`` in the config's runtime section, or HPCPIPE_DASK_MODE, which wins):

- ``threads``: the threaded scheduler sized to the CPUs the step was given; fastest for data
  that fit in memory (the default).
- ``synchronous``: one thread, for debugging.
- ``local``: a distributed LocalCluster, one single-threaded worker process per CPU given, with
  a memory limit per worker so that data larger than memory spill instead of being killed.
- ``allocation``: scheduler and workers over the ranks of a multi-task SLURM step
  (``srun -n N hpcpipe <step> ...``): rank 0 starts the scheduler and runs the step, every
  other rank is a worker; they meet through a scheduler file on the shared filesystem, so one
  step can span several nodes.
- ``jobqueue``: dask-jobqueue's SLURMCluster; worker jobs are submitted with ``sbatch`` and
  scaled adaptively between ``jobqueue.min_jobs`` and ``jobqueue.max_jobs``, and retire with
  ``--lifetime`` before their walltime.
- ``address``: connect to a scheduler that is already running (``address`` or
  ``scheduler_file``); it is left running afterwards.

The dashboard address is logged; whatever the step started is closed, also on error. A
cluster that cannot start raises :class:`DaskClusterError` naming the mode and the cause.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask

from hpcpipe.runtime.allocation import DASK_MEMORY_FRACTION, MIN_WORKER_MEMORY, Allocation
from hpcpipe.runtime.environment import DistEnv, slurm_job

log = logging.getLogger("hpcpipe.dask")
MODES = ("threads", "synchronous", "local", "allocation", "jobqueue", "address")
# Environment variables that override the config (profiles and users set them).
ENV = {
    "mode": "HPCPIPE_DASK_MODE",
    "address": "HPCPIPE_DASK_ADDRESS",
    "scheduler_file": "HPCPIPE_DASK_SCHEDULER_FILE",
    "timeout": "HPCPIPE_DASK_TIMEOUT",
}


class DaskClusterError(RuntimeError):
    """The Dask runtime could not start; the message names the mode and the cause."""


@dataclass(frozen=True)
class JobqueueSettings:
    """Worker jobs of ``jobqueue`` mode (defaults equal those of config/config.schema.yaml)."""

    min_jobs: int = 1
    max_jobs: int = 4
    cores: int = 1
    processes: int = 1
    memory: str = "4GB"
    walltime: str = "01:00:00"
    lifetime: str = "55m"
    lifetime_stagger: str = "4m"
    partition: str | None = None
    account: str | None = None
    job_name: str = "hpcpipe-dask"
    interface: str | None = None
    job_extra_directives: list[str] = field(default_factory=list)
    worker_extra_args: list[str] = field(default_factory=list)
    log_directory: str | None = None


@dataclass(frozen=True)
class DaskSettings:
    """The runtime section ``dask:`` of the config, after the environment's overrides."""

    mode: str = "threads"
    address: str | None = None
    scheduler_file: str | None = None
    timeout: float = 60.0
    jobqueue: JobqueueSettings = field(default_factory=JobqueueSettings)

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any] | None = None, environ: Mapping[str, str] = os.environ
    ) -> DaskSettings:
        """Settings from the config's ``dask`` section, overridden by HPCPIPE_DASK_* variables."""
        section = dict(section or {})
        jq = dict(section.pop("jobqueue", None) or {})
        _check_keys(section, cls, "dask")
        _check_keys(jq, JobqueueSettings, "dask.jobqueue")
        for key, var in ENV.items():
            if environ.get(var, "").strip():
                section[key] = environ[var].strip()
        if "timeout" in section:
            try:
                section["timeout"] = float(section["timeout"])
            except ValueError:
                raise DaskClusterError(
                    f"dask timeout {section['timeout']!r} is not a number of seconds"
                ) from None
        mode = section.get("mode", cls.mode)
        if mode not in MODES:
            raise DaskClusterError(
                f"unknown Dask mode {mode!r} (dask.mode or HPCPIPE_DASK_MODE); use one of {MODES}"
            )
        for key in ("min_jobs", "max_jobs", "cores", "processes"):
            if key in jq:  # a profile's --config gives strings
                jq[key] = int(jq[key])
        return cls(**section, jobqueue=JobqueueSettings(**jq))


def _check_keys(section: Mapping[str, Any], cls: type, where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise DaskClusterError(f"unknown key(s) {unknown} in {where}; known: {sorted(known)}")


@contextlib.contextmanager
def dask_runtime(
    alloc: Allocation, settings: DaskSettings | str | None = None
) -> Iterator[Any | None]:
    """Run the body under the configured Dask runtime; yield the distributed Client or None.

    ``settings`` may be a mode name (tests, benchmarks). In ``allocation`` mode only rank 0
    gets here: the other ranks are workers (:func:`serve_allocation_worker`).
    """
    if settings is None or isinstance(settings, str):
        settings = DaskSettings.from_config({"mode": settings} if settings else None)
    mode = settings.mode
    if mode == "threads":
        log.info("dask: threaded scheduler, %d workers", alloc.cpus)
        with dask.config.set(scheduler="threads", num_workers=alloc.cpus):
            yield None
        return
    if mode == "synchronous":
        log.info("dask: synchronous scheduler")
        with dask.config.set(scheduler="synchronous"):
            yield None
        return
    starters = {
        "local": _local,
        "allocation": _allocation,
        "jobqueue": _jobqueue,
        "address": _address,
    }
    # The client is the default scheduler once made; dask.config says so explicitly as well.
    with starters[mode](alloc, settings) as client, dask.config.set(scheduler=client):
        yield client


def _fail(mode: str, cause: str, exc: BaseException | None = None) -> DaskClusterError:
    detail = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    return DaskClusterError(f"dask mode {mode!r}: {cause}{detail}")


def _check_worker_memory(mode: str, per_worker: int, workers: str, fix: str) -> None:
    if per_worker < MIN_WORKER_MEMORY:
        raise _fail(
            mode,
            f"{workers} would get {per_worker / 2**20:.0f} MB each, under the "
            f"{MIN_WORKER_MEMORY / 2**20:.0f} MB a Dask worker needs for itself; {fix}",
        )


def _log_dashboard(client: Any, what: str) -> None:
    try:
        info = client.scheduler_info(n_workers=-1)  # all workers, not the first five
    except TypeError:  # distributed before 2025.4 lists all of them anyway
        info = client.scheduler_info()
    workers = info.get("workers", {})
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    memory = sum(w.get("memory_limit", 0) or 0 for w in workers.values())
    log.info(
        "dask: %s at %s, %d workers, %d threads, %.1f GB; dashboard %s",
        what, client.scheduler.address, len(workers), threads, memory / 1e9,
        client.dashboard_link,
    )  # fmt: skip


@contextlib.contextmanager
def _local(alloc: Allocation, settings: DaskSettings) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    per_worker = int(alloc.memory_bytes * DASK_MEMORY_FRACTION / alloc.cpus)
    _check_worker_memory(
        "local", per_worker, f"{alloc.cpus} workers",
        "give the step more memory (its mem_mb) or fewer CPUs",
    )  # fmt: skip
    try:
        cluster = LocalCluster(
            n_workers=alloc.cpus, threads_per_worker=1, memory_limit=per_worker,
            dashboard_address=":0", processes=True,
        )  # fmt: skip
    except Exception as exc:
        raise _fail("local", "LocalCluster did not start", exc) from exc
    try:
        with Client(cluster) as client:
            _log_dashboard(client, "LocalCluster")
            yield client
    finally:
        cluster.close()


@contextlib.contextmanager
def _address(alloc: Allocation, settings: DaskSettings) -> Iterator[Any]:
    from distributed import Client

    if not settings.address and not settings.scheduler_file:
        raise _fail("address", "set dask.address or dask.scheduler_file (HPCPIPE_DASK_ADDRESS)")
    where = settings.address or f"scheduler file {settings.scheduler_file}"
    if (
        settings.scheduler_file
        and not settings.address
        and not Path(settings.scheduler_file).exists()
    ):
        raise _fail("address", f"scheduler file {settings.scheduler_file} does not exist")
    try:
        client = Client(
            settings.address, scheduler_file=settings.scheduler_file, timeout=settings.timeout
        )
    except (OSError, TimeoutError, ValueError) as exc:
        raise _fail(
            "address", f"no scheduler answered at {where} within {settings.timeout:g} s", exc
        ) from exc
    try:
        _log_dashboard(client, "existing scheduler")
        yield client
    finally:
        client.close()  # the scheduler is someone else's: leave it running


# --- allocation: scheduler and workers over the ranks of one srun step ----------------------


def _step_env() -> DistEnv:
    return DistEnv.from_environ()


def scheduler_file_for(settings: DaskSettings, env: Any) -> Path:
    """Where the ranks of one step meet: the configured file, or one unique to this job step.

    The default lives in the working directory (a shared filesystem under SLURM, as Snakemake
    needs) and is named after the step's rendezvous address and port, which differ between
    concurrent steps, so a stale file from an earlier step is never read.
    """
    if settings.scheduler_file:
        return Path(settings.scheduler_file)
    job = (slurm_job() or {}).get("job_id", "nojob")
    return Path(".hpcpipe-dask") / f"scheduler-{job}-{env.master_addr}-{env.master_port}.json"


def serve_allocation_worker(settings: DaskSettings, alloc: Allocation) -> bool:
    """On a worker rank of ``allocation`` mode: run a Dask worker until the step ends.

    Returns True on such a rank (the caller then skips the step's own code), False on rank 0
    and in every other mode.
    """
    if settings.mode != "allocation":
        return False
    env = _step_env()
    if env.world_size < 2:
        raise _fail(
            "allocation",
            "not a multi-task srun step (run the step as `srun -n N hpcpipe ...` with N >= 2: "
            "rank 0 runs the scheduler and the step, ranks 1..N-1 the workers)",
        )
    if env.rank == 0:
        return False
    from hpcpipe.runtime.allocation import memory_per_task

    path = scheduler_file_for(settings, env)
    memory = int(memory_per_task(alloc) * DASK_MEMORY_FRACTION)
    _check_worker_memory(
        "allocation", memory, f"worker rank {env.rank}",
        "give the step more memory per task (its mem_mb or mem_mb_per_cpu)",
    )  # fmt: skip
    log.info(
        "dask: worker rank %d/%d, %d threads, %.1f GB, scheduler file %s",
        env.rank, env.world_size, alloc.cpus, memory / 1e9, path,
    )  # fmt: skip
    import asyncio

    asyncio.run(_run_worker(path, alloc.cpus, memory, settings.timeout))
    return True


async def _run_worker(path: Path, nthreads: int, memory: int, timeout: float) -> None:
    from distributed import Worker

    deadline = time.monotonic() + timeout
    while not path.exists():  # rank 0 may still be starting the scheduler
        if time.monotonic() > deadline:
            raise _fail("allocation", f"no scheduler file {path} appeared within {timeout:g} s")
        await _sleep(0.1)
    local = tempfile.mkdtemp(prefix="hpcpipe-dask-worker-")
    try:
        # death_timeout: a worker whose scheduler is gone (rank 0 failed) exits instead of
        # keeping the step alive until its time limit.
        async with Worker(
            scheduler_file=str(path), nthreads=nthreads, memory_limit=memory,
            local_directory=local, death_timeout=timeout, dashboard=False,
        ) as worker:  # fmt: skip
            await worker.finished()
    finally:
        shutil.rmtree(local, ignore_errors=True)


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


@contextlib.contextmanager
def _allocation(alloc: Allocation, settings: DaskSettings) -> Iterator[Any]:
    from distributed import Client

    env = _step_env()
    if env.world_size < 2 or env.rank != 0:
        raise _fail("allocation", f"rank {env.rank} of {env.world_size} cannot run the step")
    path = scheduler_file_for(settings, env)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    n_workers = env.world_size - 1
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file", str(path),
         "--port", "0", "--dashboard-address", ":0", "--no-show"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    client = None
    try:
        deadline = time.monotonic() + settings.timeout
        while not path.exists():
            if scheduler.poll() is not None:
                raise _fail(
                    "allocation", f"the scheduler exited: {scheduler.stderr.read()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise _fail("allocation", f"the scheduler did not start in {settings.timeout:g} s")
            time.sleep(0.1)
        client = Client(scheduler_file=str(path), timeout=settings.timeout)
        try:
            client.wait_for_workers(n_workers, timeout=settings.timeout)
        except TimeoutError as exc:
            have = len(client.scheduler_info().get("workers", {}))
            raise _fail(
                "allocation",
                f"{have} of {n_workers} worker ranks joined within {settings.timeout:g} s",
            ) from exc
        _log_dashboard(client, f"scheduler on rank 0 of {env.world_size}")
        yield client
    finally:
        if client is not None:
            # Shuts the scheduler and every worker down, so the worker ranks exit too.
            with contextlib.suppress(Exception):
                client.shutdown()
            client.close()
        try:
            scheduler.wait(timeout=10)
        except subprocess.TimeoutExpired:
            scheduler.kill()
            scheduler.wait()
        path.unlink(missing_ok=True)


# --- jobqueue: worker jobs submitted with sbatch ---------------------------------------------


def slurm_cluster_kwargs(settings: DaskSettings) -> dict[str, Any]:
    """SLURMCluster's arguments from the settings (the job script follows from them)."""
    jq = settings.jobqueue
    return {
        "cores": jq.cores,
        "processes": jq.processes,
        "memory": jq.memory,
        "walltime": jq.walltime,
        "queue": jq.partition,
        "account": jq.account,
        "job_name": jq.job_name,
        "interface": jq.interface,
        "job_extra_directives": list(jq.job_extra_directives),
        # Workers retire (their data moved to others) before SLURM kills them at walltime;
        # the stagger keeps workers started together from leaving together.
        "worker_extra_args": ["--lifetime", jq.lifetime, "--lifetime-stagger", jq.lifetime_stagger]
        + list(jq.worker_extra_args),
        "python": sys.executable,
        "log_directory": jq.log_directory,
        "death_timeout": settings.timeout,
        "scheduler_options": {"dashboard_address": ":0"},
    }


@contextlib.contextmanager
def _jobqueue(alloc: Allocation, settings: DaskSettings) -> Iterator[Any]:
    jq = settings.jobqueue
    try:
        per_worker = dask.utils.parse_bytes(jq.memory) // max(jq.processes, 1)
    except ValueError:
        raise _fail("jobqueue", f"dask.jobqueue.memory {jq.memory!r} is not a size") from None
    _check_worker_memory(
        "jobqueue", int(per_worker * DASK_MEMORY_FRACTION), f"{jq.processes} worker(s) per job",
        "raise dask.jobqueue.memory or lower dask.jobqueue.processes",
    )  # fmt: skip
    missing = [c for c in ("sbatch", "squeue", "scancel") if shutil.which(c) is None]
    if missing:
        raise _fail("jobqueue", f"SLURM command(s) {missing} not found on PATH (no SLURM here?)")
    if not 0 <= jq.min_jobs <= jq.max_jobs or jq.max_jobs < 1:
        raise _fail(
            "jobqueue", f"need 0 <= min_jobs <= max_jobs, max_jobs >= 1 (got {jq.min_jobs}, "
            f"{jq.max_jobs})",
        )  # fmt: skip
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    try:
        cluster = SLURMCluster(**slurm_cluster_kwargs(settings))
    except Exception as exc:
        raise _fail("jobqueue", "SLURMCluster did not start", exc) from exc
    try:
        log.debug("dask: worker job script:\n%s", cluster.job_script())
        # At least one job even when min_jobs is 0: the step has work to do now.
        cluster.adapt(minimum_jobs=jq.min_jobs, maximum_jobs=jq.max_jobs)
        with Client(cluster) as client:
            if jq.min_jobs == 0:
                cluster.scale(jobs=1)
            try:
                client.wait_for_workers(1, timeout=settings.timeout)
            except TimeoutError as exc:
                raise _fail(
                    "jobqueue",
                    f"no worker joined within {settings.timeout:g} s; worker jobs "
                    f"{_job_states(cluster)} (squeue -n {jq.job_name}): queued behind "
                    "other jobs, or failing at start (see their logs"
                    f"{' in ' + jq.log_directory if jq.log_directory else ''})?",
                ) from exc
            _log_dashboard(
                client, f"SLURMCluster ({jq.min_jobs}-{jq.max_jobs} jobs of {jq.cores} cores)"
            )
            yield client
    finally:
        cluster.close()


def _job_states(cluster: Any) -> str:
    ids = [getattr(job, "job_id", None) for job in cluster.workers.values()]
    ids = [str(i) for i in ids if i]
    if not ids:
        return "(none submitted: sbatch failed?)"
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", "--format=%i:%T", f"--jobs={','.join(ids)}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return " ".join(out.stdout.split()) or ",".join(ids)


def settings_from_json(text: str | None) -> DaskSettings:
    """DaskSettings from the step's ``--dask`` JSON (the config's ``dask`` section) and env."""
    section = json.loads(text) if text else {}
    if not isinstance(section, dict):
        raise DaskClusterError("--dask must be a JSON object (the config's dask section)")
    return DaskSettings.from_config(section)

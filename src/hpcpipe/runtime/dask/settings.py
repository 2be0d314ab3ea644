"""A step's Dask settings: the config's ``dask:`` section, then the HPCPIPE_DASK_* overrides."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hpcpipe.runtime.dask.common import DaskClusterError

MODES = ("threads", "synchronous", "local", "allocation", "jobqueue", "address")
# Environment variables that override single keys of the config (profiles and users set them).
ENV = {
    "mode": "HPCPIPE_DASK_MODE",
    "address": "HPCPIPE_DASK_ADDRESS",
    "scheduler_file": "HPCPIPE_DASK_SCHEDULER_FILE",
    "timeout": "HPCPIPE_DASK_TIMEOUT",
}
# The whole section as a JSON object: the workflow sets it for every step it starts.
SECTION_VARIABLE = "HPCPIPE_DASK"
# Keys a profile's --config gives as strings.
_INT_KEYS = ("min_jobs", "max_jobs", "cores", "processes")


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
        given = {key: f"dask.{key}" for key in section}
        for key, var in ENV.items():
            if environ.get(var, "").strip():
                section[key] = environ[var].strip()
                given[key] = var
        if "timeout" in section:
            section["timeout"] = _seconds(section["timeout"], given["timeout"])
        mode = section.get("mode", cls.mode)
        if mode not in MODES:
            raise DaskClusterError(
                f"unknown Dask mode {str(mode)[:80]!r} ({given.get('mode', 'dask.mode')}); "
                f"use one of {MODES}"
            )
        for key in _INT_KEYS:
            if key in jq:
                jq[key] = int(jq[key])
        return cls(**section, jobqueue=JobqueueSettings(**jq))


def settings_for_step(
    given: Mapping[str, Any] | None = None, environ: Mapping[str, str] = os.environ
) -> DaskSettings:
    """A step's settings: its ``--dask`` section if given, else $HPCPIPE_DASK, then overrides."""
    section = given if given is not None else _section_from(environ)
    return DaskSettings.from_config(section, environ)


def _section_from(environ: Mapping[str, str]) -> dict[str, Any]:
    text = environ.get(SECTION_VARIABLE, "").strip()
    if not text:  # a step started by hand, outside the workflow
        return {}
    try:
        section = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{SECTION_VARIABLE} is not valid JSON: {exc}") from None
    if not isinstance(section, dict):
        raise ValueError(f"{SECTION_VARIABLE} must be a JSON object (the config's dask section)")
    return section


def _seconds(value: Any, where: str = "dask.timeout") -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise DaskClusterError(
            f"dask timeout {str(value)[:80]!r} ({where}) is not a positive number of seconds"
        )
    return seconds


def check_environment(section: Mapping[str, Any] | None, environ: Mapping[str, str]) -> None:
    """At workflow start: $HPCPIPE_DASK (when set) and the HPCPIPE_DASK_* overrides are
    valid, each error naming its variable; an address that refuses connections fails now."""
    if environ.get(SECTION_VARIABLE, "").strip():
        DaskSettings.from_config(_section_from(environ), environ)
    settings = DaskSettings.from_config(section, environ)
    if settings.mode == "address" and settings.address:
        problem = refused(settings.address)
        if problem:
            raise DaskClusterError(problem)


def refused(address: str, wait: float = 2.0) -> str | None:
    """Why nothing listens at a tcp:// scheduler ``address`` (refused at once), or None.

    Only a refusal counts: a slow or filtered host is left to the client's own timeout."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or not parts.port:
        return None
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=wait):
            return None
    except ConnectionRefusedError:
        return (
            f"the Dask scheduler address {address} refuses connections (nothing listens "
            "there; dask.address or HPCPIPE_DASK_ADDRESS)"
        )
    except OSError:
        return None


def _check_keys(section: Mapping[str, Any], cls: type, where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - known)
    if unknown:
        raise DaskClusterError(f"unknown key(s) {unknown} in {where}; known: {sorted(known)}")

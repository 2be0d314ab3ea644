"""Sizing a rule's memory and time from what its earlier runs used (the runtime section `sizing`).

Off by default: each rule asks for its tier (workflow/rules/common.smk). On
(``sizing: {from_usage: true}`` in a profile), a rule whose outputs carry a recorded usage
(their manifests, :mod:`hpcpipe.usage`) asks for the largest peak memory (in a SLURM job: of the whole job on its node) and wall time of its
earlier jobs with the same wildcard names (all ``train`` jobs, whatever the model and seed),
times ``headroom``, rounded up (memory to ``mem_step_mb``, time to whole minutes), at least
``min_mem_mb`` / ``min_runtime``; the retry of a job killed for either still asks for that
times ``attempt``; and the result is held to the limits the profile declares for the rule's
partition (``limits: {gpu: {mem_mb: ..., runtime: ...}}``; ``default`` for rules without one).
A rule without history keeps its tier. Like Nextflow's ``resourceLimits``, a limit caps;
it never raises.
"""

from __future__ import annotations

import ast
import functools
import math
import os
from collections.abc import Mapping
from typing import Any

from hpcpipe.provenance import manifests

DEFAULTS: dict[str, Any] = {
    "from_usage": False,
    "headroom": 1.5,
    "min_mem_mb": 200,
    "min_runtime": 5,
    "mem_step_mb": 100,
    "limits": {},
}
NO_PARTITION = "default"  # the limits of rules that name no slurm_partition (a laptop)


def settings(section: Mapping[str, Any] | None) -> dict[str, Any]:
    """The section with its defaults; values given on the command line may be strings."""
    out = {**DEFAULTS, **(section or {})}
    out["from_usage"] = str(out["from_usage"]).lower() in ("true", "1", "yes")
    for key in ("headroom", "min_mem_mb", "min_runtime", "mem_step_mb"):
        out[key] = float(out[key])
    return out


@functools.cache
def history(root: str) -> dict[tuple[str, tuple[str, ...]], dict[str, float]]:
    """(rule, wildcard names) -> the largest peak memory (MB) and wall time (s) recorded.

    Read once per process: the run sizes every job from what earlier runs left, not from
    the jobs it has just run itself.
    """
    out: dict[tuple[str, tuple[str, ...]], dict[str, float]] = {}
    for m in manifests(root):
        usage = m.get("usage")
        if not usage or "rule" not in m:
            continue
        key = (m["rule"], tuple(sorted(m.get("wildcards", {}))))
        seen = out.setdefault(key, {"mem_mb": 0.0, "wall_s": 0.0, "jobs": 0})
        # In a SLURM job, what the whole job held (its Snakemake too): what --mem must cover.
        peak = max(float(usage["peak_rss_mb"]), float(usage.get("job_peak_rss_mb", 0)))
        seen["mem_mb"] = max(seen["mem_mb"], peak)
        seen["wall_s"] = max(seen["wall_s"], float(usage["wall_s"]))
        seen["jobs"] += 1
    return out


def _limit(cfg: dict[str, Any], partition: str | None, resource: str) -> float | None:
    limits = cfg["limits"].get(partition or NO_PARTITION) or {}
    return float(limits[resource]) if resource in limits else None


def sized(
    section: Mapping[str, Any] | None, rule: str, wildcards: Any, resource: str,
    tier_value: int, attempt: int, partition: str | None = None, root: str = ".",
) -> int:  # fmt: skip
    """``resource`` ("mem_mb" or "runtime", minutes) of a job of ``rule`` at ``attempt``."""
    cfg = settings(section)
    if not cfg["from_usage"]:  # off: no manifest is read (the plan stays as fast as before)
        return tier_value * attempt
    seen = history(os.path.abspath(root)).get((rule, tuple(sorted(dict(wildcards.items())))))
    if not seen:  # no history: the tier, held to the partition's limits like the rest
        value = tier_value * attempt
    elif resource == "mem_mb":
        step = cfg["mem_step_mb"]
        base = max(cfg["min_mem_mb"], math.ceil(seen["mem_mb"] * cfg["headroom"] / step) * step)
        value = base * attempt
    else:
        base = max(cfg["min_runtime"], math.ceil(seen["wall_s"] * cfg["headroom"] / 60))
        value = base * attempt
    if (cap := _limit(cfg, partition, resource)) is not None:
        value = min(value, cap)
    return int(value)


def partition_of(resource_settings: Any, rule: str) -> str | None:
    """The slurm_partition a profile gives ``rule`` (set-resources, else default-resources)."""
    for mapping in (
        (getattr(resource_settings, "overwrite_resources", None) or {}).get(rule),
        getattr(resource_settings, "default_resources", None),
    ):
        value = _get(mapping, "slurm_partition")
        if value:
            return str(value).strip("'\"")
    return None


def _get(mapping: Any, key: str) -> Any:
    """A value of a resource mapping, whichever of Snakemake's forms it takes."""
    if mapping is None:
        return None
    parsed = getattr(mapping, "parsed", None)
    if isinstance(parsed, Mapping):
        mapping = parsed
    try:
        value = mapping.get(key)
    except AttributeError:
        return None
    if getattr(value, "is_evaluable", lambda: False)():
        # A profile's value is an expression Snakemake evaluates per job ("'gpu'"): a
        # literal is read as such; anything else names no partition here.
        try:
            return ast.literal_eval(str(value.raw))
        except (ValueError, SyntaxError, AttributeError):
            return None
    return getattr(value, "value", value)

"""Provenance: a small manifest next to every output, and the chain back to the raw data.

Each step writes `<output>.manifest.json` for each of its outputs: what made it (step,
params and their hash, hpcpipe version and git commit, library versions, host, SLURM job and
resources, start and end), the checksum of every output, and the checksum of every input as
recorded in that input's own manifest. Zarr stores get a checksum derived from per-chunk
CRC32s computed when they are written, so checking an input costs one small JSON read.
`hpcpipe provenance OUTPUT [--check]` prints the chain and verifies it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import zlib
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

from hpcpipe import __version__
from hpcpipe.atomic import write_json
from hpcpipe.runtime.environment import slurm_job

SUFFIX = ".manifest.json"
BIG_FILE = 256 * 2**20  # external inputs above this are fingerprinted by size and mtime
# Snakemake stamps directory outputs with this file after the step: not part of the content.
IGNORED = frozenset({".snakemake_timestamp"})
LIBRARIES = ("numpy", "dask", "xarray", "zarr", "torch", "snakemake")


class ProvenanceError(ValueError):
    """A manifest is missing or does not match the files; the message says which and why."""


def manifest_path(output: str | os.PathLike[str]) -> Path:
    p = Path(output)
    return p.with_name(p.name + SUFFIX)


def checksum(path: str | os.PathLike[str]) -> str:
    """Content checksum: sha256 of a file, or of (name, CRC32) of every file in a directory."""
    p = Path(path)
    if p.is_dir():
        from hpcpipe.store import WRITTEN, combine_checksums

        if (known := WRITTEN.get(os.path.abspath(p))) is not None:
            return known  # recorded chunk by chunk while this process wrote the store
        crcs = {}
        for f in sorted(p.rglob("*")):
            if f.is_file() and f.name not in IGNORED:
                crc = 0
                with open(f, "rb") as fh:
                    while block := fh.read(1 << 22):
                        crc = zlib.crc32(block, crc)
                crcs[f.relative_to(p).as_posix()] = crc
        return combine_checksums(crcs)
    if p.stat().st_size > BIG_FILE:
        st = p.stat()
        return f"size-mtime:{st.st_size}:{int(st.st_mtime)}"
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return "sha256:" + h.hexdigest()


def recorded_checksum(path: str | os.PathLike[str]) -> str:
    """An input's checksum as its manifest recorded it at write time, else computed now."""
    m = manifest_path(path)
    if m.exists():
        data = json.loads(m.read_text())
        return data["outputs"][_key(path, data)]
    return checksum(path)


def _key(path: str | os.PathLike[str], manifest: dict) -> str:
    name = Path(path).name
    for k in manifest["outputs"]:
        if Path(k).name == name:
            return k
    raise ProvenanceError(f"{manifest_path(path)} does not list {path}")


@cache
def _git(src: str) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", src, *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(dirty) if dirty is not None else None}


def _libraries() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    import sys

    torch = sys.modules.get("torch")  # only where the step imported it: no slow import here
    out["cuda"] = getattr(getattr(torch, "version", None), "cuda", None) if torch else None
    return out


def write_manifests(
    step: str,
    params: dict,
    inputs: Iterable[str | os.PathLike[str]],
    outputs: Iterable[str | os.PathLike[str]],
    started: dt.datetime,
    resources: dict[str, Any] | None = None,
    job: dict[str, Any] | None = None,
) -> dict:
    """Write one manifest next to each output (all alike: they list every output).

    ``job``: the Snakemake rule and wildcards, and what the step asked for and used
    (``requested``, ``usage``: :mod:`hpcpipe.usage`)."""
    params_json = json.dumps(params, sort_keys=True, separators=(",", ":"))
    src = str(Path(__file__).resolve().parent)
    manifest = {
        "step": step,
        "params": params,
        "params_sha256": hashlib.sha256(params_json.encode()).hexdigest(),
        "inputs": {str(p): recorded_checksum(p) for p in inputs},
        "outputs": {str(p): checksum(p) for p in outputs},
        "hpcpipe": {"version": __version__, **_git(src)},
        "libraries": _libraries(),
        "host": platform.node(),
        "slurm": slurm_job(),
        "resources": resources,
        "started": started.isoformat(timespec="seconds"),
        "ended": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **(job or {}),
    }
    for out in manifest["outputs"]:
        write_json(manifest_path(out), manifest)
    return manifest


def read_manifest(output: str | os.PathLike[str]) -> dict:
    m = manifest_path(output)
    if not m.exists():
        raise ProvenanceError(
            f"{output}: no manifest ({m.name}); it was not made by hpcpipe, or by a version without manifests"
        )
    try:
        return json.loads(m.read_text())
    except json.JSONDecodeError as exc:
        raise ProvenanceError(f"{m}: not valid JSON ({exc})") from exc


def chain(output: str | os.PathLike[str]) -> list[tuple[int, str, dict | None]]:
    """(depth, path, manifest or None) from ``output`` back to inputs without manifests."""
    rows: list[tuple[int, str, dict | None]] = []
    seen: set[str] = set()

    def walk(path: str, depth: int) -> None:
        m = manifest_path(path)
        data = json.loads(m.read_text()) if m.exists() else None
        rows.append((depth, path, data))
        if data is None or path in seen:
            return
        seen.add(path)
        for inp in data["inputs"]:
            walk(inp, depth + 1)

    walk(str(output), 0)
    return rows


def check(output: str | os.PathLike[str]) -> list[str]:
    """Problems along the chain: outputs that do not match their manifests, inputs changed since."""
    problems = []
    read_manifest(output)  # the output itself must have one
    checked: set[str] = set()
    for _, path, data in chain(output):
        if data is None or path in checked:
            continue
        checked.add(path)
        key = _key(path, data)
        if not Path(path).exists():
            problems.append(f"{path}: listed in its manifest but missing")
            continue
        now = checksum(path)
        if now != data["outputs"][key]:
            problems.append(
                f"{path}: content does not match its manifest (edited by hand or copied from elsewhere?)"
            )
        for inp, recorded in data["inputs"].items():
            if not Path(inp).exists():
                problems.append(f"{path}: its input {inp} is missing")
            elif (current := recorded_checksum(inp)) != recorded:
                problems.append(
                    f"{path}: made from {inp} with checksum {recorded[:24]}…, which now has {current[:24]}…"
                )
    return problems


def describe(output: str | os.PathLike[str]) -> str:
    lines = []
    for depth, path, data in chain(output):
        pad = "  " * depth
        if data is None:
            lines.append(f"{pad}{path}  (no manifest: external input)")
            continue
        job = f", SLURM job {data['slurm']['job_id']}" if data.get("slurm") else ""
        git = data["hpcpipe"].get("commit") or "no git"
        dirty = " dirty" if data["hpcpipe"].get("dirty") else ""
        lines.append(
            f"{pad}{path}  <- {data['step']} on {data['host']}{job}, {data['ended']}, "
            f"hpcpipe {data['hpcpipe']['version']} ({git[:10]}{dirty}), params {data['params_sha256'][:12]}"
        )
    return "\n".join(lines)


def manifests(root: str | os.PathLike[str] = ".") -> Iterator[dict[str, Any]]:
    """Every output manifest under ``root``, once per step run (a run lists all its outputs).

    Hidden directories (.snakemake, .checkpoints) and outputs themselves (a Zarr store
    has thousands of chunk files, never a manifest) are not walked into.
    """
    seen: set[tuple[str, ...]] = set()
    for here, dirs, files in os.walk(root):
        names = set(files)
        dirs[:] = [d for d in dirs if not d.startswith(".") and d + SUFFIX not in names]
        for name in sorted(f for f in files if f.endswith(SUFFIX)):
            try:
                data = json.loads((Path(here) / name).read_text())
            except (OSError, ValueError):
                continue
            key = tuple(sorted(data.get("outputs", {})))
            if key not in seen:
                seen.add(key)
                yield data

"""A cheap fingerprint of external inputs, so that a changed ``ingest.path`` reruns ingest.

Snakemake reruns a job when an input is newer than its outputs; a file replaced by other
content with its old mtime kept (``cp -p``, ``touch -d``) slips through. Each input path gets
a token, and the ingest rule's params carry the tokens: a changed token reruns ingest and
everything after it.

- A path's *stat*: size, mtime and inode of each of its files (every file of a Zarr store).
  A changed stat changes the token (``stat:<hash>``); nothing is read.
- Ingest records, in the raw store's ``inputs`` attribute, each path's stat, its ctime, a
  content checksum (CRC32 of every byte: one more read of the input at ingest, at GB/s) and
  the token it was ingested under.
- While the stat matches the record, the token is the recorded one. Content rewritten in
  place with the old size and mtime put back still moves the ctime (nobody can set it): only
  then is the content read again, and a different checksum gives a new token
  (``content:<checksum>``). A ``chmod`` also moves the ctime; its checksum matches, the token
  stays, and the ctime that was verified is remembered in ``.snakemake/hpcpipe-verified.json``
  so the file is not read again at the next plan.

Plain Python: Snakemake computes it while parsing the workflow (in every SLURM job too).
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

VERIFIED = os.path.join(".snakemake", "hpcpipe-verified.json")
_BLOCK = 1 << 22


def _files(path: str) -> Iterator[tuple[str, os.stat_result]]:
    if os.path.isdir(path):
        for root, dirs, names in os.walk(path):
            dirs.sort()
            for name in sorted(names):
                p = os.path.join(root, name)
                yield os.path.relpath(p, path), os.stat(p)
    elif os.path.exists(path):
        yield os.path.basename(path), os.stat(path)


def _stat(path: str) -> tuple[str, int]:
    """(hash of size, mtime and inode of every file of ``path``, the newest ctime)."""
    h, ctime = hashlib.sha256(), 0
    for rel, st in _files(path):
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
        ctime = max(ctime, st.st_ctime_ns)
    return h.hexdigest()[:16], ctime


def content_checksum(path: str) -> str:
    """CRC32 (hex) of the names and bytes of every file of ``path``, in name order."""
    crc = 0
    for rel, _ in _files(path):
        crc = zlib.crc32(rel.encode() + b"\0", crc)
        with open(os.path.join(path, rel) if os.path.isdir(path) else path, "rb") as f:
            while block := f.read(_BLOCK):
                crc = zlib.crc32(block, crc)
    return f"{crc:08x}"


def _paths(paths: str | Iterable[str]) -> list[str]:
    return [paths] if isinstance(paths, str) else [str(p) for p in paths]


def recorded(raw_store: str) -> dict[str, dict[str, Any]]:
    """The records ingest left in ``raw_store`` (its ``inputs`` attribute); {} if none."""
    for name in (".zattrs", "zarr.json"):
        try:
            with open(os.path.join(raw_store, name)) as f:
                attrs = json.load(f)
        except (OSError, ValueError):
            continue
        attrs = attrs.get("attributes", attrs)  # zarr.json nests them
        inputs = attrs.get("inputs")
        return inputs if isinstance(inputs, dict) else {}
    return {}


def _verified() -> dict[str, Any]:
    try:
        with open(VERIFIED) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _remember(path: str, stat: str, ctime: int) -> None:
    try:
        from hpcpipe.atomic import write_json

        write_json(VERIFIED, {**_verified(), path: [stat, ctime]})
    except OSError:  # a read-only working directory: verify again next time
        pass


def tokens(paths: str | Iterable[str], raw_store: str) -> dict[str, str]:
    """{path: token} of every input path (see the module's docstring)."""
    records = recorded(raw_store)
    out = {}
    for path in _paths(paths):
        stat, ctime = _stat(path)
        rec = records.get(path)
        if not rec or rec.get("stat") != stat:
            out[path] = f"stat:{stat}"
            continue
        seen = _verified().get(path)
        if rec.get("ctime") == ctime or seen == [stat, ctime]:
            out[path] = rec["token"]
            continue
        # Same size, mtime and inode, but the ctime moved: read the content again.
        checksum = content_checksum(path)
        if checksum == rec.get("checksum"):
            _remember(path, stat, ctime)
            out[path] = rec["token"]
        else:
            out[path] = f"content:{checksum}"
    return out


def records(paths: str | Iterable[str], tokens: dict[str, str]) -> dict[str, dict[str, Any]]:
    """What ingest records of its inputs, ingested under ``tokens`` (the rule's params)."""
    out = {}
    for path in _paths(paths):
        stat, ctime = _stat(path)
        out[path] = {
            "stat": stat,
            "ctime": ctime,
            "checksum": content_checksum(path),
            "token": tokens.get(path, f"stat:{stat}"),
        }
    return out

"""A cheap fingerprint of external inputs, so that a changed ``ingest.path`` reruns ingest.

Snakemake reruns a job when an input is newer than its outputs; a file replaced by other
content with its old mtime kept (``cp -p``, ``rsync -t``, ``touch -d``) slips through. The
fingerprint hashes, for every file of the inputs (every file of a Zarr store), its size, mtime
and inode, and for an input that is a single file (NetCDF) also its first and last
:data:`SAMPLE` bytes: two short reads, never a pass over the data. Not ctime: a ``chmod`` or a
backup's extended attributes change it, and would rerun the whole pipeline for nothing. The
ingest rule gives it as a param: a changed fingerprint reruns ingest and everything after it.

Plain Python: Snakemake computes it while parsing the workflow.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator

SAMPLE = 1 << 20  # bytes read at each end of a single input file


def _files(path: str) -> Iterator[tuple[str, os.stat_result]]:
    if os.path.isdir(path):
        for root, dirs, names in os.walk(path):
            dirs.sort()
            for name in sorted(names):
                p = os.path.join(root, name)
                yield p, os.stat(p)
    elif os.path.exists(path):
        yield path, os.stat(path)


def fingerprint(paths: str | Iterable[str]) -> str:
    """SHA-256 (hex, 16 characters) of size, mtime and inode of every input file, and of the
    two ends of each input that is a single file."""
    h = hashlib.sha256()
    for top in [paths] if isinstance(paths, str) else paths:
        for p, st in _files(str(top)):
            rel = os.path.relpath(p, top) if os.path.isdir(top) else os.path.basename(p)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
            if not os.path.isdir(top):
                h.update(_ends(p, st.st_size))
    return h.hexdigest()[:16]


def _ends(path: str, size: int) -> bytes:
    with open(path, "rb") as f:
        head = f.read(SAMPLE)
        if size > 2 * SAMPLE:
            f.seek(size - SAMPLE)
        return head + f.read(SAMPLE)

"""A cheap fingerprint of external inputs, so that a changed ``ingest.path`` reruns ingest.

Snakemake reruns a job when an input is newer than its outputs; a file replaced by other
content with its old mtime kept (``cp -p``, ``rsync -t``, ``touch -d``) slips through. The
fingerprint hashes, for every file of the inputs (every file of a Zarr store), its size,
mtime, inode and ctime: ctime is set by the kernel on every write, rename or metadata change
and cannot be set back, so any change of content changes it. Nothing is read, so it costs a
``stat`` per file at every plan, never a pass over the data. The ingest rule gives it as a
param: a changed fingerprint reruns ingest and everything after it.

Plain Python: Snakemake computes it while parsing the workflow.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator


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
    """SHA-256 (hex, 16 characters) of size, mtime, inode and ctime of every input file."""
    h = hashlib.sha256()
    for top in [paths] if isinstance(paths, str) else paths:
        for p, st in _files(str(top)):
            rel = os.path.relpath(p, top) if os.path.isdir(top) else os.path.basename(p)
            h.update(
                f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_ctime_ns}\n".encode()
            )
    return h.hexdigest()[:16]

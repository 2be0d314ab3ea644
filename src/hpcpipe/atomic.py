"""Atomic outputs: write to a hidden temporary sibling, then rename into place.

A killed job therefore never leaves a file or Zarr store under its final name, and
Snakemake (or a user) never mistakes half-written output for finished output.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove(path: Path) -> None:
    """Delete a file or a directory tree (a store), if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    Works for files and directories (Zarr stores). On error the temporary is removed
    and an existing ``path`` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary output for {final}")
        if final.is_dir() and not final.is_symlink():
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            old = _tmp_sibling(final)
            final.rename(old)
            tmp.rename(final)
            remove(old)
        else:
            os.replace(tmp, final)
    except BaseException:
        remove(tmp)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays reach JSON from metrics code.
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Temporaries left by killed writers under ``directory`` (for clean-up and tests)."""
    root = Path(directory)
    if not root.exists():
        return []
    return sorted(p for p in root.rglob(f"*{TMP_MARK}*") if p.name.startswith("."))


def remove_leftovers(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries that killed writers of ``path`` left next to it.

    Only one job writes a given output at a time (Snakemake guarantees it), so at the start of
    a step every temporary sibling of one of its outputs belongs to an earlier, killed run.
    Returns what was removed.
    """
    final = Path(path)
    if not final.parent.is_dir():
        return []
    found = sorted(final.parent.glob(f".{final.name}{TMP_MARK}*"))
    for p in found:
        remove(p)
    return found

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcpipe.atomic import atomic_path, stale_temporaries, write_json


def test_file_appears_only_when_complete(tmp_path: Path):
    target = tmp_path / "out" / "a.json"
    write_json(target, {"x": 1})
    assert target.read_text().strip().startswith("{") and not stale_temporaries(tmp_path)


def test_error_keeps_old_output_and_removes_temporary(tmp_path: Path):
    target = tmp_path / "store.zarr"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "half").write_text("half")
        raise RuntimeError("killed")
    assert (target / "old").read_text() == "old" and not stale_temporaries(tmp_path)


def test_directory_is_replaced_whole(tmp_path: Path):
    target = tmp_path / "store.zarr"
    target.mkdir()
    (target / "old").write_text("old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
    assert sorted(os.listdir(target)) == ["new"]


def test_killed_writer_leaves_nothing_under_the_final_name(tmp_path: Path):
    code = (
        "import os, signal\n"
        "from hpcpipe.atomic import atomic_path\n"
        f"with atomic_path({str(tmp_path / 'x.zarr')!r}) as t:\n"
        "    t.mkdir(); (t / 'chunk').write_text('1')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    assert not (tmp_path / "x.zarr").exists()
    assert len(stale_temporaries(tmp_path)) == 1


def test_remove_leftovers_of_killed_writers(tmp_path: Path) -> None:
    from hpcpipe.atomic import remove_leftovers

    out = tmp_path / "store.zarr"
    (tmp_path / ".store.zarr.tmp-123-abcd").mkdir()  # a killed writer's half-written store
    (tmp_path / ".store.zarr.tmp-123-abcd" / "chunk").write_text("x")
    (tmp_path / ".other.zarr.tmp-1-ab").mkdir()  # another output's: not ours to touch
    assert [p.name for p in remove_leftovers(out)] == [".store.zarr.tmp-123-abcd"]
    assert [p.name for p in tmp_path.iterdir()] == [".other.zarr.tmp-1-ab"]

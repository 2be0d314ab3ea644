"""GPU tests (marker ``gpu``; ``gpu(2)``: needs two). Where CUDA is missing they are skipped
(CI machines have no GPU), unless ``HPCPIPE_EXPECT_GPU=N`` says this machine has N GPUs:
then a test that needs up to N GPUs and finds fewer fails, naming what is missing, instead
of passing by skipping. (A test needing more GPUs than expected is still skipped.)"""

from __future__ import annotations

import os

import pytest
import torch

EXPECT_GPU = "HPCPIPE_EXPECT_GPU"
_MISSING = pytest.StashKey[str]()


def _expected() -> int:
    raw = os.environ.get(EXPECT_GPU, "").strip()
    if raw in ("", "0"):
        return 0
    if not raw.isdigit():
        raise pytest.UsageError(f"{EXPECT_GPU}={raw!r}: give the number of GPUs expected (1, 2)")
    return int(raw)


def _available() -> tuple[int, str]:
    if not torch.cuda.is_available():
        why = (
            f"torch.cuda.is_available() is False (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda}; "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
        )
        return 0, why
    n = torch.cuda.device_count()
    return n, f"{n} CUDA GPU(s) visible"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    expected = _expected()
    available, why = _available()
    for item in items:
        marker = item.get_closest_marker("gpu")
        if marker is None:
            continue
        needed = int(marker.args[0]) if marker.args else 1
        if available >= needed:
            continue
        if available < min(needed, expected):
            item.stash[_MISSING] = (
                f"{EXPECT_GPU}={expected}, but this test needs {needed} GPU(s) and "
                f"{available} can be used: {why}"
            )
        else:
            item.add_marker(pytest.mark.skip(reason=f"needs {needed} CUDA GPU(s): {why}"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    missing = item.stash.get(_MISSING, None)
    if missing is not None:
        pytest.fail(missing, pytrace=False)

"""What a model costs: parameters, bytes, and CPU inference latency (median of repeats).

Latency is measured at a fixed thread count (``optimize.benchmark.threads``) on fixed
inputs, the variant and its teacher taking turns: eagerly, and compiled with Inductor where asked (the int8 model's only fast path;
the float models are compiled too, so the comparison is like for like).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

BATCHES = (1, 64)
WARMUP = 3


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer the module holds (weights as stored)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def nonzero_parameters(module: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in module.parameters())


def latencies(
    modules: dict[str, nn.Module], inputs: torch.Tensor, repeats: int, threads: int, compile: bool
) -> dict[str, dict[str, float]]:
    """Per module: ``latency_ms_b1``, ``latency_ms_b64`` (median) and ``samples_per_s`` (at
    batch 64) on ``inputs`` (repeated up to 64 samples), eager or compiled.

    The modules take turns call by call, so a machine that gets busier or quieter meanwhile
    slows them alike and their ratio holds (CI runners and shared nodes are noisy).
    """
    torch.set_num_threads(int(threads))
    if len(inputs) < max(BATCHES):
        inputs = inputs.repeat(-(-max(BATCHES) // len(inputs)), 1, 1, 1)
    fns: dict[str, Callable[[torch.Tensor], Any]] = dict(modules)
    if compile:
        import torch._inductor.config as inductor

        inductor.freezing = True  # weights as constants: what lets Inductor fuse int8 convs
        fns = {k: torch.compile(m, dynamic=False) for k, m in modules.items()}
    out: dict[str, dict[str, float]] = {k: {} for k in fns}
    with torch.inference_mode():
        for b in BATCHES:
            x = inputs[:b].contiguous(memory_format=torch.channels_last)
            times: dict[str, list[float]] = {k: [] for k in fns}
            for i in range(WARMUP + repeats):
                for k, fn in fns.items():
                    start = time.perf_counter()
                    fn(x)
                    if i >= WARMUP:
                        times[k].append(time.perf_counter() - start)
            for k in fns:
                out[k][f"latency_ms_b{b}"] = 1e3 * statistics.median(times[k])
    for t in out.values():
        t["samples_per_s"] = max(BATCHES) / (t[f"latency_ms_b{max(BATCHES)}"] / 1e3)
    return out


def file_bytes(path: str | os.PathLike[str]) -> int:
    return Path(path).stat().st_size

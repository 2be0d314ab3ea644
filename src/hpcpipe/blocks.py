"""Dask passes over time blocks, one task per block that reads its own block.

A task reads its block's chunks of every variable (and whatever Dask does to make them: a
rechunk, coarsening) itself, reduces it or writes it, and drops it; no block is ever a task's
result. Dask counts every task result as managed memory and spills past its target, so data
larger than the workers' memory streams through them without spilling (the preprocess passes,
:mod:`hpcpipe.preprocess`). Sums are added as a tree in a fixed order (:func:`tree_sum`).
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.core import flatten


def _add(*parts: np.ndarray) -> np.ndarray:
    total = parts[0].copy()
    for part in parts[1:]:
        total += part
    return total


def tree_sum(parts: list[Any], split_every: int = 4) -> Any:
    """Sum of delayed arrays as a tree of small additions, in a fixed order.

    Memory stays bounded (a task holds ``split_every`` parts, never all of them), and the
    order of the additions is set by the list alone, so results do not depend on the number
    of workers or on which part finishes first.
    """
    if not parts:
        raise ValueError("nothing to sum")
    while len(parts) > 1:
        parts = [
            dask.delayed(_add)(*parts[i : i + split_every]) if len(parts[i : i + split_every]) > 1
            else parts[i]
            for i in range(0, len(parts), split_every)
        ]  # fmt: skip
    return parts[0]


class Blocks:
    """The time blocks of the variables ``fields`` (Dask arrays (time, ...), in the same time
    blocks), each computed inside the task that uses it.

    A task of the passes reads its block's chunks of every variable, and whatever Dask does
    to make them (a rechunk that merges chunks of the input, coarsening), itself: none is
    ever a task's result. Dask counts every such result as managed memory, a view as much
    as a copy, and spills past its target, which a worker whose own memory is most of its
    limit passes with one block; blockwise fusion does not reach through a rechunk.
    """

    def __init__(self, fields: list[da.Array]) -> None:
        fields = [f.rechunk({i: -1 for i in range(1, f.ndim)}) for f in fields]  # whole fields
        self.chunks: tuple[int, ...] = fields[0].chunks[0]
        self.starts = np.concatenate([[0], np.cumsum(self.chunks)]).astype(int)
        self.grid: tuple[int, ...] = fields[0].shape[1:]
        self.n_fields = len(fields)
        self.graphs: list[tuple[dict, list]] = []
        for b in range(len(self.chunks)):
            graph: dict = {}
            keys = []
            for f in fields:
                block = f.blocks[b]
                keys.append(next(iter(flatten(block.__dask_keys__()))))
                graph.update(block.__dask_optimize__(block.__dask_graph__(), keys[-1:]))
            self.graphs.append((graph, keys))
        self.name = "blocks-" + tokenize(*(f.name for f in fields))

    def read(self, b: int, idx: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """Block ``b`` of every variable, computed here by the synchronous scheduler, and the
        block's rows of ``idx`` (a value per time step of the whole array)."""
        graph, keys = self.graphs[b]
        fields = tuple(dask.get(graph, keys))
        return fields, idx[self.starts[b] : self.starts[b] + fields[0].shape[0]]

    def ids(self) -> da.Array:
        return da.arange(len(self.chunks), chunks=1)

    def node(self) -> Any:
        """This object as one node of a graph (sent once to each worker, not with each task)."""
        return dask.delayed(self, name=self.name)


def sum_over_steps(
    func: Any,
    blocks: Blocks,
    idx: np.ndarray,
    steps: slice,
    shape: tuple[int, ...],
    *whole: Any,
    **kw: Any,
) -> np.ndarray:
    """The sum over the blocks that hold some of the time ``steps`` of
    ``func(fields_block, idx_block, *whole, **kw)``, a small float64 result of ``shape``
    per block, of the block's rows within ``steps`` only. One task per block, which reads
    the block, reduces it and drops it (see :class:`Blocks`); the sums as a tree in a fixed
    order. ``idx``: the period index of each time step; ``idx``, ``whole``: arrays for
    every task, each one node of the graph."""
    counted, used = _counted_steps(blocks, idx, steps)
    rows = tuple(f"r{i}" for i in range(len(shape)))
    parts = da.blockwise(
        _one_row, ("b", *rows), blocks.ids(), ("b",), blocks.node(), None, dask.delayed(counted),
        None, *(a for w in whole for a in (dask.delayed(w), None)), reduce=func, reduce_kw=kw,
        dtype=np.float64, new_axes=dict(zip(rows, shape, strict=True)),
    ).to_delayed().ravel()  # fmt: skip
    return tree_sum([parts[b] for b in used]).compute()[0]


def _one_row(
    b: np.ndarray, blocks: Blocks, idx: np.ndarray, *whole: Any, reduce: Any, reduce_kw: dict
) -> Any:
    fields, idx = blocks.read(int(b[0]), idx)
    # Only the block's steps that count (those of the training period, contiguous): the
    # same rows, in the same slices, as the block of the training period alone would have.
    rows = np.flatnonzero(idx >= 0)
    rows = slice(rows[0], rows[-1] + 1) if rows.size else slice(0, 0)
    return reduce(tuple(f[rows] for f in fields), idx[rows], *whole, **reduce_kw)[None]


def fields_of(x: xr.DataArray) -> list[da.Array]:
    """The variables (axis 1) of ``x`` (time, variable, ...) apart, as Dask arrays."""
    data = as_dask(x.data)
    return [data[:, v] for v in range(x.shape[1])]


def _counted_steps(blocks: Blocks, idx: np.ndarray, steps: slice) -> tuple[np.ndarray, list[int]]:
    """The period index of each time step (-1 outside ``steps``) and the blocks that hold
    some of ``steps``: the reductions run over the blocks of the whole array, so that the
    training period's blocks are the same blocks as the others'."""
    counted = np.full(idx.shape, -1, dtype=idx.dtype)
    counted[steps] = idx[steps]
    t0, t1, _ = steps.indices(idx.size)
    starts = blocks.starts
    return counted, [b for b in range(len(starts) - 1) if starts[b + 1] > t0 and starts[b] < t1]


def as_dask(a: Any) -> da.Array:
    """``a`` as a Dask array. Not by xarray's ``chunk()``: it tokenizes every coordinate,
    pickling a time index of cftime dates (about 1 s per 100,000 of them) each time."""
    return a if isinstance(a, da.Array) else da.from_array(a, chunks=a.shape)

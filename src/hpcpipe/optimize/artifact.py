"""A variant's file: a ``torch.export`` program (``.pt2``) with hpcpipe's metadata inside.

One format for every variant, float or int8, pruned or not: the graph and its weights, loaded
back with ``torch.export.load`` (the int8 one needs torchao imported, which registers its
quantize ops). The metadata (variant, teacher, leads, variables, parameter counts) travels
as an extra file of the archive, so the variant is one self-describing file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpcpipe.atomic import atomic_path

META_FILE = "hpcpipe.json"
# The example batch the program is traced with; the batch dimension stays dynamic.
EXAMPLE_BATCH = 2


class VariantFileError(RuntimeError):
    """A variant file is missing or unreadable; the message names the file."""


def example_of(inputs: torch.Tensor) -> tuple[torch.Tensor]:
    # A copy: a view would save its whole base tensor into the archive with the example.
    return (inputs[:EXAMPLE_BATCH].clone().contiguous(),)


def export(model: nn.Module, example: tuple[torch.Tensor]) -> torch.export.ExportedProgram:
    """``model`` traced to a program whose batch size is free (any N >= 1)."""
    batch = torch.export.Dim("batch", min=1)
    if not isinstance(model, torch.fx.GraphModule):  # an exported graph has no train/eval
        model = model.eval()
    return torch.export.export(model, example, dynamic_shapes=({0: batch},))


def save_variant(
    model: nn.Module, path: str | os.PathLike[str], example: tuple[torch.Tensor], meta: dict
) -> None:
    """Export ``model`` and write it with ``meta`` to ``path`` (atomically)."""
    program = export(model, example)
    buf = io.BytesIO()  # a buffer: torch.export.save wants a name ending .pt2, not a temporary
    torch.export.save(program, buf, extra_files={META_FILE: json.dumps(meta)})
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def load_variant(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """The variant at ``path`` as a callable module, and its metadata."""
    p = Path(path)
    if not p.is_file():
        raise VariantFileError(f"variant file not found: {p}")
    _register_quantized_ops()
    extra = {META_FILE: ""}
    try:
        program = torch.export.load(p, extra_files=extra)
    except Exception as exc:  # zip/deserialisation errors come in many types
        raise VariantFileError(
            f"cannot read variant file {p}: {type(exc).__name__}: {exc}"
        ) from exc
    return program.module(), json.loads(extra[META_FILE] or "{}")


def _register_quantized_ops() -> None:
    """Importing torchao registers the quantize/dequantize ops an int8 program calls."""
    # a float variant loads without it; an int8 one then names the op it misses
    with contextlib.suppress(ImportError):
        import torchao.quantization.pt2e  # noqa: F401

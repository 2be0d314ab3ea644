"""Knowledge distillation: the best trained model teaches a CNN of at most a quarter its size.

The teacher is the run with the lowest validation loss (``val_loss`` in model.pt). The
student is a CNN of ``optimize.distill.layers`` layers, as wide as the parameter budget
(``max_param_ratio`` x the teacher's) allows. It starts from the teacher's linear skip path
(both models have the same 1x1 ``skip``: a student that starts as the teacher's linear
predictor has only the correction to learn) and is trained on a mix of the teacher's outputs
and the targets (``alpha`` weighs the teacher).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpcpipe.models.nets import build_model

log = logging.getLogger("hpcpipe.optimize")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def best_teacher(paths: Sequence[str | os.PathLike[str]]) -> Path:
    """The model file of lowest validation loss (ties: the first given)."""
    from hpcpipe.models.files import ModelFileError

    best: tuple[float, Path] | None = None
    for p in paths:
        meta = torch.load(p, map_location="cpu", weights_only=True)
        loss = meta.get("val_loss") if isinstance(meta, dict) else None
        if loss is None or not math.isfinite(float(loss)):
            continue
        if best is None or float(loss) < best[0]:
            best = (float(loss), Path(p))
    if best is None:
        raise ModelFileError(f"no model file among {[str(p) for p in paths]} has a val_loss")
    log.info("teacher: %s (validation loss %.5g)", best[1], best[0])
    return best[1]


def student_for(teacher: nn.Module, meta: dict[str, Any], cfg: dict[str, Any]) -> nn.Module:
    """The widest CNN student within ``cfg['max_param_ratio']`` of the teacher's parameters."""
    budget = cfg["max_param_ratio"] * parameter_count(teacher)
    leads, variables = list(meta["leads"]), list(meta["variables"])
    args = (int(meta["in_channels"]), len(leads) * len(variables), tuple(meta["grid"]),
            bool(meta.get("periodic", True)))  # fmt: skip
    best = None
    for channels in range(1, 257):
        shape = {"channels": channels, "layers": cfg["layers"], "kernel_size": cfg["kernel_size"]}
        candidate = build_model("cnn", shape, *args)
        if parameter_count(candidate) > budget:
            break
        best = (candidate, shape)
    if best is None:
        raise ValueError(
            f"optimize.distill: no CNN of {cfg['layers']} layers fits "
            f"{cfg['max_param_ratio']} x the teacher's {parameter_count(teacher)} parameters; "
            "lower optimize.distill.layers or raise max_param_ratio"
        )
    student, shape = best
    student.skip.load_state_dict(teacher.skip.state_dict())  # start as its linear path
    student.output_shape = (len(leads), len(variables))
    student.student_config = shape
    return student


def teacher_outputs(teacher: nn.Module, inputs: torch.Tensor, batch: int = 64) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([teacher(inputs[s : s + batch]) for s in range(0, len(inputs), batch)])

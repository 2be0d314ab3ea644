"""The ``model.pt`` file of a trained model: its content, loading it back, and prediction.

A model file holds the best epoch's weights with what is needed to rebuild the network
(model name, config, channels, leads, variables, grid); see docs/data-contracts.md. It is not
a resume checkpoint: those are :mod:`hpcpipe.train.checkpoint`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hpcpipe.models.nets import Residual, build_model

MODEL_FILE_KEYS = (
    "model",
    "model_config",
    "state_dict",
    "in_channels",
    "variables",
    "leads",
    "grid",
)


class ModelFileError(RuntimeError):
    """A model file is missing, unreadable or incomplete; the message names the file."""


def model_file(
    model: nn.Module,
    name: str,
    model_cfg: dict[str, Any],
    meta: dict[str, Any],
    state: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The model.pt dict of docs/data-contracts.md; ``meta`` adds in_channels, variables, ...

    ``state``: the weights as ordinary CPU tensors, when ``model`` cannot give them itself
    (a sharded model's are gathered by all ranks).
    """
    if state is None:
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return {"model": name, "model_config": dict(model_cfg), "state_dict": state, **meta}


def load_model(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved at ``path``; returns it in eval mode and the file's metadata."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"model checkpoint not found: {p}")
    try:
        # weights_only: a model file holds tensors and plain containers, never code to run.
        content = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types
        raise ModelFileError(
            f"cannot read model checkpoint {p}: {type(exc).__name__}: {exc}"
        ) from exc
    missing = [k for k in MODEL_FILE_KEYS if not isinstance(content, dict) or k not in content]
    if missing:
        raise ModelFileError(
            f"model checkpoint {p} lacks {missing}; was it written by hpcpipe train?"
        )
    leads, variables = list(content["leads"]), list(content["variables"])
    try:
        model = build_model(
            content["model"],
            content["model_config"],
            int(content["in_channels"]),
            len(leads) * len(variables),
            tuple(content["grid"]),
            bool(content.get("periodic", True)),
        )
        model.load_state_dict(content["state_dict"])
    except (ValueError, RuntimeError) as exc:
        raise ModelFileError(f"model checkpoint {p} does not match its model: {exc}") from exc
    model.output_shape = (len(leads), len(variables))
    model.to(map_location).eval()
    meta = {k: v for k, v in content.items() if k != "state_dict"}
    return model, meta


def predict(
    model: nn.Module, inputs: np.ndarray, batch_size: int = 64, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Forecasts ``(N, lead, variable, lat, lon)`` float32 for ``inputs`` ``(N, C, lat, lon)``.

    The flat output channels are split lead-major with ``model.output_shape`` (set by
    :func:`load_model` and by training); a model without it gets one lead.
    """
    x = np.asarray(inputs, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"inputs must be (sample, channel, lat, lon), got shape {x.shape}")
    leads = int(getattr(model, "output_shape", (1, -1))[0])
    n, _, n_lat, n_lon = x.shape
    step = max(1, int(batch_size))
    model = model.to(device, memory_format=torch.channels_last).eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, n, step):
            xb = torch.from_numpy(x[start : start + step]).to(device)
            xb = xb.contiguous(memory_format=torch.channels_last)  # the faster layout on CPU
            parts.append(model(xb).float().cpu().numpy())
    if not parts:
        out_channels = model.skip.out_channels if isinstance(model, Residual) else leads
        return np.empty((0, leads, out_channels // leads, n_lat, n_lon), dtype=np.float32)
    out = np.concatenate(parts)
    return np.ascontiguousarray(out.reshape(n, leads, -1, n_lat, n_lon), dtype=np.float32)

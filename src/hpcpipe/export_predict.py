"""Forecasts from an exported hpcpipe model with plain torch and numpy (no hpcpipe needed).

This file is copied into every artifact made by `hpcpipe export` (results/export/<model>/<run>/),
next to model.pt2 (torch.export; or model.torchscript.pt where export could not),
metadata.json (channels, leads, variables, grid, normalisation) and climatology.npy.

    import numpy as np, predict
    art = predict.Artifact(".")                  # the artifact's directory
    x = art.inputs(anomalies)                    # (N, lags, variable, lat, lon) normalised
    a = art.predict(x)                           # (N, lead, variable, lat, lon) normalised
    phys = art.to_physical(a, periods)           # + climatology at each valid time's period

``python predict.py DIR INPUTS.npy OUT.npy`` predicts a saved (N, channel, lat, lon) array.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch


class Artifact:
    """An exported model and what it needs to turn fields into forecasts and back."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.meta: dict[str, Any] = json.loads((self.dir / "metadata.json").read_text())
        path = self.dir / self.meta["file"]
        if self.meta["format"] == "torch.export":
            self.module = torch.export.load(str(path)).module()
        else:  # TorchScript
            self.module = torch.jit.load(str(path), map_location="cpu").eval()
        norm = self.meta["normalisation"]
        self.variables = list(self.meta["output"]["variables"])
        self.mean = np.array([norm["mean"][v] for v in self.variables])
        self.std = np.array([norm["std"][v] for v in self.variables])

    def inputs(self, anomalies: np.ndarray) -> np.ndarray:
        """Model inputs (N, channel, lat, lon) from normalised anomalies (N, lag, variable, lat,
        lon) at the lags of metadata ``input.lags`` (NaN -> 0; gradients of lag 0 appended)."""
        a = np.nan_to_num(np.asarray(anomalies, dtype=np.float32))
        n, n_lag, n_var = a.shape[:3]
        parts = [a.reshape(n, n_lag * n_var, *a.shape[3:])]
        if "gradient" in self.meta["input"]["derived"]:
            x0 = a[:, 0]
            if self.meta["grid"]["periodic"]:
                ddx = 0.5 * (np.roll(x0, -1, axis=-1) - np.roll(x0, 1, axis=-1))
            else:
                ddx = np.gradient(x0, axis=-1) if x0.shape[-1] > 1 else np.zeros_like(x0)
            ddy = np.gradient(x0, axis=-2) if x0.shape[-2] > 1 else np.zeros_like(x0)
            parts += [ddx, ddy]
        return np.concatenate(parts, axis=1).astype(np.float32)

    def predict(self, inputs: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Normalised-anomaly forecasts (N, lead, variable, lat, lon) float32."""
        x = np.asarray(inputs, dtype=np.float32)
        leads, n_var = len(self.meta["output"]["leads"]), len(self.variables)
        out = []
        with torch.inference_mode():
            for s in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[s : s + batch_size]))
                xb = xb.contiguous(memory_format=torch.channels_last)  # as hpcpipe predicts
                out.append(self.module(xb).float().numpy())
        y = np.concatenate(out) if out else np.empty((0, leads * n_var, *x.shape[2:]), np.float32)
        return y.reshape(len(x), leads, n_var, *x.shape[2:])

    def to_physical(self, anomalies: np.ndarray, periods: np.ndarray) -> np.ndarray:
        """x = a * std + mean + C[period]: ``periods`` (N, lead) the climatology period of each
        valid time (day of year, month, ...: metadata ``climatology``)."""
        clim = np.load(self.dir / self.meta["climatology"]["file"])
        index = {int(p): i for i, p in enumerate(self.meta["climatology"]["periods"])}
        c = clim[np.vectorize(index.__getitem__)(np.asarray(periods, dtype=np.int64))]
        shape = (1, 1, len(self.variables), 1, 1)
        return anomalies * self.std.reshape(shape) + self.mean.reshape(shape) + c


if __name__ == "__main__":
    directory, inputs_npy, out_npy = sys.argv[1:4]
    np.save(out_npy, Artifact(directory).predict(np.load(inputs_npy)))

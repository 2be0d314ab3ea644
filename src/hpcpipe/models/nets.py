"""The forecast networks: a periodic convolution, a CNN and a U-Net, and ``build_model``.

Both models map ``(N, C_in, lat, lon) -> (N, C_out, lat, lon)`` where the output channels are
the targets flattened lead-major, ``(lead, variable)``. Convolutions wrap around in longitude
on a global grid (the globe is periodic there), see zeros beyond the edges of a regional box,
and zeros beyond the poles: the inputs are normalised
anomalies, so zero is the neutral value, and the convolution pads it without an extra copy.

Both models have a *residual output*: a linear 1x1 path from the inputs plus a non-linear
body whose last layer starts at zero. A fresh model is therefore a per-point linear predictor
(which already reaches persistence, and with the gradient channels first-order advection);
training only has to learn the correction, which keeps the number of epochs small.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hpcpipe.models import MODELS, unet_grid_problem


class _LonCircularPad(torch.autograd.Function):
    """Circular padding of the last dimension with a lean backward.

    ``F.pad(mode="circular")`` backpropagates through zero-filled slices (fill + copies), about
    a tenth of a CPU training step here; this backward is one copy and two small adds.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, pad: int) -> torch.Tensor:
        ctx.pad = pad
        return torch.cat([x[..., -pad:], x, x[..., :pad]], dim=-1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        p = ctx.pad
        gx = grad[..., p:-p].clone()
        gx[..., :p] += grad[..., -p:]
        gx[..., -p:] += grad[..., :p]
        return gx, None


class PeriodicConv2d(nn.Module):
    """A same-size 2-D convolution, circular in longitude (last dim) on a global grid,
    zero-padded in latitude, and in longitude too on a regional grid (``periodic=False``)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, periodic: bool = True
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the grid size, got {kernel_size}")
        self.pad = kernel_size // 2
        self.periodic = periodic
        # The convolution pads latitude itself (zeros); longitude wraps via _LonCircularPad.
        # Zeros rather than replicate: replicate padding has no deterministic CUDA backward.
        padding = (self.pad, 0) if periodic else (self.pad, self.pad)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad and self.periodic:
            x = _LonCircularPad.apply(x, self.pad)
        return self.conv(x)


class Residual(nn.Module):
    """Base: ``skip(x) + body(x)``; ``output_shape`` = (leads, variables) for :func:`predict`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.skip = nn.Conv2d(in_channels, out_channels, 1)
        # (leads, variables) of the flat output channels; load_model/train set the real values.
        self.output_shape: tuple[int, int] = (1, out_channels)

    @staticmethod
    def _zero(layer: nn.Module) -> None:
        # The body starts as exactly zero, so the model starts as the linear skip path.
        conv = layer.conv if isinstance(layer, PeriodicConv2d) else layer
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)


class CNN(Residual):
    """``layers`` same-resolution convolutions with ``channels`` hidden channels and GELU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: int = 32,
        layers: int = 4,
        kernel_size: int = 3,
        periodic: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels)
        widths = [in_channels] + [channels] * (layers - 1) + [out_channels]
        body: list[nn.Module] = []
        for i, (cin, cout) in enumerate(itertools.pairwise(widths)):
            body.append(PeriodicConv2d(cin, cout, kernel_size, periodic))
            if i < layers - 1:
                body.append(nn.GELU())
        self._zero(body[-1])
        self.body = nn.Sequential(*body)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class _Block(nn.Sequential):
    """A periodic 3x3 convolution with GELU: the unit of every U-Net level.

    One convolution per level, not the classic two: on CPU it halves the cost and, with the
    few epochs a pipeline run affords, the shallower net also reached a lower validation loss.
    """

    def __init__(self, cin: int, cout: int, periodic: bool = True) -> None:
        super().__init__(PeriodicConv2d(cin, cout, periodic=periodic), nn.GELU())


class UNet(Residual):
    """U-Net: ``depth`` average-pool/transposed-conv levels, channels doubling, skip concatenation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: int = 16,
        depth: int = 2,
        periodic: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels)
        width = [channels * 2**i for i in range(depth + 1)]
        self.inc = _Block(in_channels, width[0], periodic)
        self.down = nn.ModuleList(_Block(width[i], width[i + 1], periodic) for i in range(depth))
        # Transposed 2x2/stride-2 convolutions rather than interpolation: deterministic on GPU.
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(width[i + 1], width[i], 2, stride=2) for i in reversed(range(depth))
        )
        self.dec = nn.ModuleList(
            _Block(2 * width[i], width[i], periodic) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(width[0], out_channels, 1)
        self._zero(self.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inc(x)
        skips = [h]
        for block in self.down:
            h = block(F.avg_pool2d(h, 2))
            skips.append(h)
        skips.pop()  # the bottleneck is h itself
        for up, block in zip(self.up, self.dec, strict=True):
            h = block(torch.cat([up(h), skips.pop()], dim=1))
        return self.skip(x) + self.head(h)


def build_model(
    name: str,
    cfg: dict[str, Any],
    in_channels: int,
    out_channels: int,
    grid: tuple[int, int],
    periodic: bool = True,
) -> nn.Module:
    """The model ``name`` ("cnn" | "unet") with hyper-parameters ``cfg`` (config
    ``models.<name>``); ``periodic``: a global grid (circular padding in longitude)."""
    n_lat, n_lon = (int(g) for g in grid)
    if name == "cnn":
        return CNN(
            in_channels,
            out_channels,
            channels=int(cfg.get("channels", 32)),
            layers=int(cfg.get("layers", 4)),
            kernel_size=int(cfg.get("kernel_size", 3)),
            periodic=periodic,
        )
    if name == "unet":
        depth = int(cfg.get("depth", 2))
        problem = unet_grid_problem(depth, n_lat, n_lon)
        if problem:
            raise ValueError(
                f"models.unet.depth={depth} {problem}; lower models.unet.depth "
                "or change the grid (preprocess.coarsen; dataset.builtin.n_lat/n_lon for the "
                "built-in data)"
            )
        channels = int(cfg.get("channels", 16))
        return UNet(in_channels, out_channels, channels, depth, periodic=periodic)
    raise ValueError(f"unknown model {name!r}; choose one of {list(MODELS)} (train.models)")

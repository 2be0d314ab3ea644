"""Magnitude pruning: global unstructured (weights zeroed) and structured (channels removed).

Unstructured pruning zeroes the smallest-magnitude weights across every convolution at once
(``torch.nn.utils.prune.global_unstructured``), then makes the zeros permanent. It keeps the
shapes: the file and the dense kernels stay the same size, only the count of non-zero weights
falls. Channel pruning removes whole hidden channels (the filters of smallest L1 norm) and
rebuilds every convolution that reads them with fewer input channels, so the layers really
shrink. The input and output channels of a model are never pruned.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from hpcpipe.models.nets import CNN, PeriodicConv2d, UNet

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def conv_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _CONVS)]


def sparsity(model: nn.Module) -> float:
    """The share of convolution weights that are exactly zero."""
    weights = [m.weight for m in conv_layers(model)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / max(total, 1)


def prune_global(model: nn.Module, amount: float) -> nn.Module:
    """A copy of ``model`` with the ``amount`` share of all convolution weights (the smallest
    in magnitude, over all layers together) masked to zero. The masks stay attached, so a
    fine-tune keeps them at zero; :func:`make_permanent` removes them."""
    pruned = copy.deepcopy(model)
    params = [(m, "weight") for m in conv_layers(pruned)]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=amount)
    return pruned


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold the pruning masks into the weights (plain parameters again, ready to export)."""
    for m in conv_layers(model):
        if tprune.is_pruned(m):
            tprune.remove(m, "weight")
    return model


def _keep(conv: nn.Module, fraction: float) -> torch.Tensor:
    """Indices (sorted) of the output channels to keep: the largest L1 norms."""
    w = conv.weight.detach()
    norms = (
        w.abs().sum((0, 2, 3)) if isinstance(conv, nn.ConvTranspose2d) else w.abs().sum((1, 2, 3))
    )
    n_keep = max(1, round(len(norms) * (1 - fraction)))
    return torch.sort(torch.topk(norms, n_keep).indices).values


def _slice(conv: nn.Module, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> None:
    """Keep only ``out_idx`` output and ``in_idx`` input channels of ``conv`` (in place)."""
    transposed = isinstance(conv, nn.ConvTranspose2d)
    out_dim, in_dim = (1, 0) if transposed else (0, 1)
    w = conv.weight.detach()
    if out_idx is not None:
        w = w.index_select(out_dim, out_idx)
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.detach()[out_idx].clone())
        conv.out_channels = len(out_idx)
    if in_idx is not None:
        w = w.index_select(in_dim, in_idx)
        conv.in_channels = len(in_idx)
    conv.weight = nn.Parameter(w.clone())


def _conv(m: nn.Module) -> nn.Module:
    """The convolution inside a PeriodicConv2d or a U-Net block."""
    if isinstance(m, nn.Sequential):
        m = m[0]
    return m.conv if isinstance(m, PeriodicConv2d) else m


def prune_channels(model: nn.Module, fraction: float) -> nn.Module:
    """A copy of ``model`` (CNN or U-Net) with ``fraction`` of every hidden layer's channels
    removed, the layers rebuilt with the smaller shapes."""
    if not 0 <= fraction < 1:
        raise ValueError(f"optimize.prune.channel_fraction must be in [0, 1), got {fraction}")
    pruned = copy.deepcopy(model)
    if isinstance(pruned, CNN):
        _prune_cnn(pruned, fraction)
    elif isinstance(pruned, UNet):
        _prune_unet(pruned, fraction)
    else:
        raise ValueError(f"channel pruning knows CNN and UNet, not {type(model).__name__}")
    return pruned


def _prune_cnn(net: CNN, fraction: float) -> None:
    convs = [_conv(m) for m in net.body if isinstance(m, PeriodicConv2d)]
    keeps = [_keep(c, fraction) for c in convs[:-1]]  # the last layer's outputs are the targets
    for k, conv in enumerate(convs):
        _slice(conv, keeps[k] if k < len(keeps) else None, keeps[k - 1] if k else None)


def _prune_unet(net: UNet, fraction: float) -> None:
    depth = len(net.down)
    # Keep sets of every feature map, chosen from the original weights before any slicing:
    # h[i] the encoder level i (inc, then down), u[j]/d[j] the up-convolution and decoder j.
    h = [_keep(_conv(net.inc), fraction)] + [_keep(_conv(b), fraction) for b in net.down]
    u = [_keep(up, fraction) for up in net.up]
    d = [_keep(_conv(b), fraction) for b in net.dec]
    widths = [_conv(net.inc).out_channels] + [_conv(b).out_channels for b in net.down]
    _slice(_conv(net.inc), h[0], None)
    for i, block in enumerate(net.down):
        _slice(_conv(block), h[i + 1], h[i])
    for j, (up, block) in enumerate(zip(net.up, net.dec, strict=True)):
        level = depth - 1 - j
        _slice(up, u[j], h[depth] if j == 0 else d[j - 1])
        # the decoder reads cat([up-convolution, encoder skip]) along channels
        _slice(_conv(block), d[j], torch.cat([u[j], widths[level] + h[level]]))
    _slice(net.head, None, d[-1])

"""Post-training static int8 quantization for CPU inference: PT2E with X86InductorQuantizer.

The path PyTorch recommends for convolutional models on x86 CPUs (docs/optimize.md): export
the model (``torch.export``), let ``X86InductorQuantizer`` annotate it (int8 activations per
tensor, int8 weights per output channel, the layout oneDNN's int8 convolutions want),
``prepare_pt2e`` inserts observers, a pass over training samples calibrates them, and
``convert_pt2e`` folds the weights to int8 with quantize/dequantize around each operator. Run
eagerly that graph is a reference (dequantize, float op, quantize: slower than float);
``torch.compile`` (Inductor) fuses the patterns into oneDNN int8 kernels, which is where the
speed comes from. ``torch.ao.quantization`` (eager and FX modes) is deprecated and PT2E now
lives in torchao, so torchao is the dependency.
"""

from __future__ import annotations

import torch
from torch import nn

from hpcpipe.optimize.artifact import export

CALIBRATION_BATCH = 32


def quantize_int8(
    model: nn.Module, calibration: torch.Tensor, example: tuple[torch.Tensor]
) -> torch.fx.GraphModule:
    """``model`` quantized to int8, calibrated on ``calibration`` inputs ``(N, C, lat, lon)``."""
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as exc:
        raise RuntimeError(
            "optimize: int8 quantization needs torchao (pip install -e '.[optimize]'); "
            "or leave `quantized` out of optimize.variants"
        ) from exc
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(export(model, example).module(), quantizer)
    with torch.no_grad():
        for start in range(0, len(calibration), CALIBRATION_BATCH):
            prepared(calibration[start : start + CALIBRATION_BATCH])
    converted = convert_pt2e(prepared)
    _drop_unused_attributes(converted)
    return converted


def _drop_unused_attributes(gm: torch.fx.GraphModule) -> None:
    """Remove the float weights the int8 graph no longer reads (else the file keeps both)."""
    gm.graph.eliminate_dead_code()
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(gm.get_submodule(owner) if owner else gm, attr)
    gm.recompile()

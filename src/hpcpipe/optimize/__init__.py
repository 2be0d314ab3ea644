"""Compression of trained models: int8 quantization, pruning, distillation, and their cost.

Variants of a trained ``model.pt`` (``results/optimize/...``, docs/optimize.md):

* ``quantized``: post-training static int8 quantization, PT2E with the X86 Inductor quantizer
  (:mod:`hpcpipe.optimize.quantize`);
* ``pruned_global``, ``pruned_channel``: magnitude pruning, global unstructured or whole
  channels removed, each with a short fine-tune (:mod:`hpcpipe.optimize.prune`);
* ``distilled``: the best model (lowest validation loss) taught to a smaller CNN
  (:mod:`hpcpipe.optimize.distill`).

Every variant is stored as a ``torch.export`` program (``.pt2``), scored like a model and
measured (:mod:`hpcpipe.optimize.cost`). Torch lives in the submodules; this one stays light.
"""

from __future__ import annotations

# Made from one trained run each; ``distilled`` is made once, from the best run.
PER_RUN = ("quantized", "pruned_global", "pruned_channel")
VARIANTS = (*PER_RUN, "distilled")

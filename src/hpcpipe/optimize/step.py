"""The optimize steps: make a variant, distill a student, score and measure a variant.

``hpcpipe optimize-variant`` (quantized, pruned_global, pruned_channel of one trained run),
``hpcpipe optimize-distill`` (the student of the best run) and ``hpcpipe optimize-score``
(any variant against its teacher: the evaluate step's scoring plus the cost measures). Each
takes ``params`` = the config section ``optimize`` (score: also ``evaluate``, ``variables``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from hpcpipe.models.files import load_model
from hpcpipe.optimize import PER_RUN, cost, prune
from hpcpipe.optimize.artifact import example_of, save_variant
from hpcpipe.optimize.samples import Samples, load_samples, tune

log = logging.getLogger("hpcpipe.optimize")

StrPath = str | os.PathLike[str]
SEED = 0  # fine-tune and distillation order: fixed, so a rerun gives the same variant


def set_threads(threads: int | None) -> None:
    """Torch threads for the step: the CPUs it was granted (benchmarks set their own)."""
    if threads:
        torch.set_num_threads(int(threads))


def _meta(variant: str, teacher_path: StrPath, meta: dict, model: nn.Module) -> dict[str, Any]:
    keep = ("model", "leads", "variables", "grid", "in_channels", "periodic", "val_loss", "seed")
    return {
        "variant": variant,
        "teacher": str(teacher_path),
        **{k: meta[k] for k in keep if k in meta},
        "parameters": sum(p.numel() for p in model.parameters()),
        "nonzero_parameters": cost.nonzero_parameters(model),
    }


def make_variant(
    model_path: StrPath, train_path: StrPath, variant: str, output: StrPath, cfg: dict
) -> dict[str, Any]:
    """Write ``variant`` (one of PER_RUN) of the trained model at ``model_path``."""
    if variant not in PER_RUN:
        raise ValueError(f"unknown variant {variant!r}; one of {list(PER_RUN)}")
    teacher, meta = load_model(model_path)
    limit = cfg["calibration_samples"] if variant == "quantized" else cfg["prune"]["samples"]
    samples = load_samples(train_path, limit)
    example = example_of(samples.inputs)
    if variant == "quantized":
        from hpcpipe.optimize.quantize import quantize_int8

        out: nn.Module = quantize_int8(teacher, samples.inputs, example)
        info = _meta(variant, model_path, meta, teacher)  # same weights, now int8
    else:
        out = _pruned(teacher, variant, samples, cfg["prune"])
        info = {**_meta(variant, model_path, meta, out), "sparsity": prune.sparsity(out)}
    save_variant(out, output, example, info)
    log.info("%s of %s: %s", variant, model_path, info)
    return info


def _pruned(teacher: nn.Module, variant: str, samples: Samples, cfg: dict) -> nn.Module:
    if variant == "pruned_global":
        net = prune.prune_global(teacher, cfg["sparsity"])
    else:
        net = prune.prune_channels(teacher, cfg["channel_fraction"])
    losses = tune(net, samples, cfg["finetune_steps"], cfg["lr"], cfg["batch_size"], SEED)
    if losses:
        log.info("fine-tune: loss %.5g -> %.5g in %d steps", losses[0], losses[-1], len(losses))
    return prune.make_permanent(net)


def distill_student(
    teacher_paths: Sequence[StrPath], train_path: StrPath, output: StrPath, cfg: dict
) -> dict[str, Any]:
    """Distill the best of ``teacher_paths`` (lowest val_loss) into a small CNN at ``output``."""
    from hpcpipe.optimize.distill import best_teacher, student_for, teacher_outputs

    d = cfg["distill"]
    path = best_teacher(teacher_paths)
    teacher, meta = load_model(path)
    samples = load_samples(train_path, d["samples"])
    student = student_for(teacher, meta, d)
    soft = teacher_outputs(teacher, samples.inputs)
    losses = tune(student, samples, d["steps"], d["lr"], d["batch_size"], SEED, soft, d["alpha"])
    info = {**_meta("distilled", path, meta, student), "student_config": student.student_config,
            "model": f"{meta['model']}->cnn"}  # fmt: skip
    if losses:
        log.info("distill: loss %.5g -> %.5g in %d steps", losses[0], losses[-1], len(losses))
    save_variant(student, output, example_of(samples.inputs), info)
    log.info("student of %s: %s", path, info)
    return info


def predict_norm(module: nn.Module, test: xr.Dataset, block: int = 256) -> xr.DataArray:
    """The module's normalised-anomaly forecasts on the test store, shaped like its targets."""
    targets = test["targets"]
    n, parts = test.sizes["sample"], []
    with torch.inference_mode():
        for s in range(0, n, block):
            x = np.asarray(test["inputs"].isel(sample=slice(s, s + block)).values, np.float32)
            parts.append(module(torch.from_numpy(x)).float().numpy())
    pred = np.concatenate(parts).reshape(targets.shape)
    return xr.DataArray(pred, dims=targets.dims, coords=targets.coords)

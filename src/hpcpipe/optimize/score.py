"""``hpcpipe optimize-score``: a variant scored like a model, against its teacher, and measured.

Skill: :func:`hpcpipe.evaluate.scoring.evaluate_forecasts` (the evaluate step's scoring) on
the test features, for the variant and for its teacher, so both meet the same baselines on
the same samples. Cost: parameters, bytes, file size, latency at batch 1 and 64 (eager and,
where ``optimize.benchmark.compile``, compiled), for both, measured in the same process.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpcpipe.atomic import write_json
from hpcpipe.evaluate.scoring import check_not_empty, evaluate_forecasts
from hpcpipe.models.files import load_model
from hpcpipe.optimize import cost
from hpcpipe.optimize.artifact import example_of, load_variant, save_variant
from hpcpipe.optimize.step import predict_norm
from hpcpipe.store import open_store

log = logging.getLogger("hpcpipe.optimize")

StrPath = str | os.PathLike[str]


def score_variant(
    variant_path: StrPath,
    teacher_paths: Sequence[StrPath],
    features_test_dir: StrPath,
    preprocessed_dir: StrPath,
    thresholds_dir: StrPath,
    output: StrPath,
    params: dict,
) -> dict[str, Any]:
    """Score and measure the variant at ``variant_path``; write its metrics.json to ``output``.

    ``teacher_paths``: model files, one of them the variant's teacher (as its file records).
    ``params``: ``benchmark`` (optimize.benchmark), ``evaluate`` and ``variables``.
    """
    from hpcpipe.evaluate.step import with_quantile

    module, meta = load_variant(variant_path)
    teacher_path = _teacher_of(variant_path, meta, teacher_paths)
    teacher, _ = load_model(teacher_path)
    test = open_store(features_test_dir, "test features")
    check_not_empty(test)
    pre = with_quantile(open_store(preprocessed_dir, "preprocessed data"), thresholds_dir)
    ev = {"variables": params["variables"], **params["evaluate"]}
    scores = {
        "variant": evaluate_forecasts(predict_norm(module, test), test, pre, ev)["metrics"],
        "teacher": evaluate_forecasts(predict_norm(teacher, test), test, pre, ev)["metrics"],
    }
    bench = params["benchmark"]
    inputs = torch.from_numpy(test["inputs"].isel(sample=slice(0, 64)).values.astype("float32"))
    costs = _costs(module, variant_path, meta, teacher, teacher_path, inputs, bench)
    result = {
        **{k: meta[k] for k in ("variant", "model", "seed", "teacher") if k in meta},
        "headline_lead": scores["variant"]["headline_lead"],
        "variables": scores["variant"]["variables"],
        "rmse_ratio": _ratio(scores, "rmse"),
        "scores": scores,
        "cost": costs,
        "benchmark": bench,
    }
    write_json(output, result)
    log.info("%s: headline RMSE / teacher's %s; cost %s", variant_path, result["rmse_ratio"],
             costs["variant"])  # fmt: skip
    return result


def _teacher_of(variant_path: StrPath, meta: dict, teacher_paths: Sequence[StrPath]) -> Path:
    """The teacher the variant file names, which must be one of the given model files."""
    given = {os.path.normpath(str(p)): Path(p) for p in teacher_paths}
    found = given.get(os.path.normpath(str(meta.get("teacher", ""))))
    if found is None:
        raise ValueError(
            f"{variant_path} was made from {meta.get('teacher')!r}, which is not among the "
            f"model files given ({sorted(given)}): make the variant again"
        )
    return found


def _ratio(scores: dict, key: str) -> dict[str, dict[str, float | None]]:
    """variant / teacher per variable and lead (1.02: two per cent worse)."""
    v, t = scores["variant"][key]["model"], scores["teacher"][key]["model"]
    return {
        var: {lead: (v[var][lead] / t[var][lead] if v[var][lead] and t[var][lead] else None)
              for lead in v[var]}
        for var in v
    }  # fmt: skip


def _sizes(module: nn.Module, path: StrPath, params: int, nonzero: int) -> dict[str, Any]:
    return {
        "parameters": int(params),
        "nonzero_parameters": int(nonzero),
        "file_bytes": cost.file_bytes(path),
        "weight_bytes": cost.tensor_bytes(module),
    }


def _costs(
    module: nn.Module,
    path: StrPath,
    meta: dict,
    teacher: nn.Module,
    teacher_path: StrPath,
    inputs: torch.Tensor,
    bench: dict,
) -> dict[str, dict[str, Any]]:
    """Sizes and latencies of the variant and of its teacher, measured the same way: the
    teacher as an exported program too (.pt2), timed in turns with the variant."""
    with tempfile.TemporaryDirectory() as tmp:
        program = Path(tmp) / "teacher.pt2"
        save_variant(teacher, program, example_of(inputs), {"variant": "float"})
        float_module, _ = load_variant(program)
        n = sum(p.numel() for p in teacher.parameters())
        out = {
            "variant": _sizes(module, path, meta["parameters"], meta["nonzero_parameters"]),
            "teacher": _sizes(float_module, program, n, cost.nonzero_parameters(teacher)),
        }
    out["teacher"]["model_file_bytes"] = cost.file_bytes(teacher_path)
    pair = {"variant": module, "teacher": float_module}
    modes = ("eager", "compiled") if bench["compile"] else ("eager",)
    for mode in modes:
        timed = cost.latencies(pair, inputs, bench["repeats"], bench["threads"], mode != "eager")
        for who, t in timed.items():
            out[who][mode] = t
    return out

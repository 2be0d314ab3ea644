"""The optimize steps: their rows of the table of steps (:mod:`hpcpipe.steps`) and their entry
points, each of which sets the step's torch threads and calls its module, imported only then
(torch loads with it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hpcpipe.step_spec import Arg, Step


def run_optimize_variant(ns: argparse.Namespace) -> None:
    from hpcpipe.optimize.step import make_variant, set_threads

    set_threads(ns.threads)
    make_variant(ns.model, ns.train, ns.variant, ns.output, ns.params)


def run_optimize_distill(ns: argparse.Namespace) -> None:
    from hpcpipe.optimize.step import distill_student, set_threads

    set_threads(ns.threads)
    distill_student(ns.teachers, ns.train, ns.output, ns.params)


def run_optimize_score(ns: argparse.Namespace) -> None:
    from hpcpipe.optimize.score import score_variant
    from hpcpipe.optimize.step import set_threads

    set_threads(ns.threads)
    score_variant(ns.variant, ns.teachers, ns.features, ns.preprocessed, ns.thresholds,
                  ns.output, ns.params)  # fmt: skip


def run_optimize_summary(ns: argparse.Namespace) -> None:
    from hpcpipe.optimize.summary import summarize

    summarize([Path(p) for p in ns.metrics], Path(ns.output_csv), Path(ns.output_png))


def optimize_steps() -> tuple[Step, ...]:
    """The optimize-* rows of :data:`hpcpipe.steps.STEPS`."""

    def _in(flag: str, help: str = "", many: bool = False) -> Arg:
        return Arg(flag, "input", help, many=many)

    def _out(flag: str, help: str = "") -> Arg:
        return Arg(flag, "output", help)

    return (
        Step(
            "optimize-variant",
            "an int8-quantized or pruned (and fine-tuned) variant of one trained model",
            run_optimize_variant,
            (
                _in("--model", "model.pt"),
                _in("--train", "the training split's feature store (calibration, fine-tune)"),
                Arg("--variant", "option", "quantized | pruned_global | pruned_channel"),
                _out("--output", "the variant (.pt2)"),
            ),
        ),
        Step(
            "optimize-distill",
            "the trained model of lowest validation loss distilled into a small CNN",
            run_optimize_distill,
            (
                _in("--teachers", "every trained run's model.pt (the best one teaches)", many=True),
                _in("--train", "the training split's feature store"),
                _out("--output", "the student (.pt2)"),
            ),
        ),
        Step(
            "optimize-score",
            "a variant scored like a model, against its teacher, and its cost measured",
            run_optimize_score,
            (
                _in("--variant", "the variant (.pt2)"),
                _in("--teachers", "model.pt files, among them the variant's teacher", many=True),
                _in("--features", "the test split's feature store"),
                _in("--preprocessed"),
                _in("--thresholds"),
                _out("--output", "metrics.json"),
            ),
        ),
        Step(
            "optimize-summary",
            "every variant's skill against its cost: a table and a chart",
            run_optimize_summary,
            (
                _in("--metrics", "every variant's metrics.json", many=True),
                _out("--output-csv"),
                _out("--output-png"),
            ),
        ),
    )

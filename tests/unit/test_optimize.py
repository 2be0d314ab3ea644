"""Compression of the trained models (hpcpipe.optimize) on tiny real networks and arrays."""

from __future__ import annotations

import pytest
import torch

from hpcpipe.models.nets import build_model
from hpcpipe.optimize import cost, prune
from hpcpipe.optimize.artifact import example_of, load_variant, save_variant
from hpcpipe.optimize.distill import best_teacher, parameter_count, student_for
from hpcpipe.optimize.samples import Samples, masked_mse, tune

GRID = (8, 16)
IN, OUT = 4, 6  # 4 input channels; 3 leads x 2 variables


def _net(name: str, **cfg) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = cfg or ({"channels": 8, "layers": 3} if name == "cnn" else {"channels": 4, "depth": 2})
    net = build_model(name, cfg, IN, OUT, GRID)
    with torch.no_grad():  # the body starts at zero: give every layer weights to prune
        for p in net.parameters():
            p.normal_(0, 0.3)
    return net.eval()


def _samples(n: int = 48) -> Samples:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, IN, *GRID, generator=g)
    y = torch.randn(n, OUT, *GRID, generator=g)
    return Samples(x, y, torch.full((1, OUT, *GRID), 1.0 / (OUT * GRID[0] * GRID[1])))


def test_int8_predictions_are_close_to_float():
    pytest.importorskip("torchao", reason="int8 quantization needs torchao (the optimize extra)")
    from hpcpipe.optimize.quantize import quantize_int8

    net, x = _net("cnn"), _samples().inputs
    q = quantize_int8(net, x, example_of(x))
    with torch.no_grad():
        ref, out = net(x), q(x)
    rel = float((out - ref).square().mean().sqrt() / ref.square().mean().sqrt())
    assert 0 < rel < 0.05  # int8, so not identical; within a few per cent of the signal
    # the weights are stored as int8: about a quarter of the float bytes
    assert cost.tensor_bytes(q) < 0.4 * cost.tensor_bytes(net)


def test_global_pruning_reaches_the_sparsity_and_keeps_it_through_the_fine_tune():
    net = _net("cnn")
    pruned = prune.prune_global(net, 0.6)
    tune(pruned, _samples(), steps=5, lr=1e-2, batch_size=8)
    pruned = prune.make_permanent(pruned)
    assert prune.sparsity(pruned) == pytest.approx(0.6, abs=0.005)
    assert prune.sparsity(net) == 0  # the teacher is left as it was
    assert not any(n.endswith("_orig") for n, _ in pruned.named_parameters())


@pytest.mark.parametrize("name", ["cnn", "unet"])
def test_channel_pruning_shrinks_the_layers(name: str):
    net = _net(name)
    pruned = prune.prune_channels(net, 0.5)
    before = [tuple(m.weight.shape) for m in prune.conv_layers(net)]
    after = [tuple(m.weight.shape) for m in prune.conv_layers(pruned)]
    assert len(before) == len(after)
    assert sum(a != b for a, b in zip(after, before, strict=True)) >= 3
    assert parameter_count(pruned) < 0.6 * parameter_count(net)
    x = _samples(2).inputs
    with torch.no_grad():
        assert pruned(x).shape == net(x).shape == (2, OUT, *GRID)
    # the skip path and the output layer keep the model's input and output channels
    assert pruned.skip.weight.shape == net.skip.weight.shape


def test_the_student_has_at_most_a_quarter_of_the_teachers_parameters():
    teacher = _net("unet", channels=8, depth=2)
    meta = {"leads": [1, 2, 3], "variables": ["a", "b"], "in_channels": IN, "grid": list(GRID)}
    cfg = {"max_param_ratio": 0.25, "layers": 3, "kernel_size": 3}
    student = student_for(teacher, meta, cfg)
    n_s, n_t = parameter_count(student), parameter_count(teacher)
    assert n_s <= n_t / 4
    # as wide as the budget allows: one channel more would not fit
    wider = build_model("cnn", {**student.student_config, "channels": student.student_config[
        "channels"] + 1, "layers": 3}, IN, OUT, GRID)  # fmt: skip
    assert parameter_count(wider) > n_t / 4
    assert torch.equal(student.skip.weight, teacher.skip.weight)  # starts as its linear path
    s = _samples()
    with torch.no_grad():
        soft = teacher(s.inputs)
        before = float(masked_mse(student(s.inputs), soft, s.weights))
    tune(student, s, steps=15, lr=1e-2, batch_size=16, teacher_out=soft, alpha=1.0)
    with torch.no_grad():
        assert float(masked_mse(student(s.inputs), soft, s.weights)) < before


def test_best_teacher_is_the_lowest_validation_loss(tmp_path):
    for name, loss in (("a", 0.5), ("b", 0.3), ("c", float("nan"))):
        torch.save({"val_loss": loss}, tmp_path / f"{name}.pt")
    assert best_teacher([tmp_path / f"{n}.pt" for n in "abc"]) == tmp_path / "b.pt"


def test_a_variant_file_round_trips_and_its_cost_is_sane(tmp_path):
    net, x = prune.prune_channels(_net("cnn"), 0.25), _samples(4).inputs
    path = tmp_path / "v.pt2"
    save_variant(net, path, example_of(x), {"variant": "pruned_channel", "parameters": 1})
    module, meta = load_variant(path)
    assert meta == {"variant": "pruned_channel", "parameters": 1}
    with torch.no_grad():
        torch.testing.assert_close(module(x), net(x))  # any batch size, not just the example's
    both = cost.latencies({"v": module, "f": net}, x, repeats=3, threads=1, compile=False)
    t = both["v"]
    assert set(both) == {"v", "f"} and all(v > 0 for v in both["f"].values())
    assert 0 < t["latency_ms_b1"] < t["latency_ms_b64"]
    assert t["samples_per_s"] == pytest.approx(64 / (t["latency_ms_b64"] / 1e3))
    assert cost.tensor_bytes(module) == 4 * parameter_count(net)  # float32 weights
    assert cost.file_bytes(path) > cost.tensor_bytes(module)


def _metrics(variant: str, rmse: float, params: int, teacher: str = "m/cnn/0/model.pt") -> dict:
    def scores(r: float) -> dict:
        by = {"model": r, "persistence": 2.0, "climatology": 3.0}
        return {"rmse": {k: {"t2m": {"1": x}} for k, x in by.items()},
                "acc": {k: {"t2m": {"1": 0.5}} for k in by}}  # fmt: skip

    def costs(n: int) -> dict:
        t = {"latency_ms_b1": 1.0, "latency_ms_b64": 8.0, "samples_per_s": 8000.0}
        return {"parameters": n, "nonzero_parameters": n, "file_bytes": 10 * n,
                "weight_bytes": 4 * n, "eager": t}  # fmt: skip

    return {
        "variant": variant, "model": "cnn", "seed": 0, "teacher": teacher, "headline_lead": 1,
        "variables": ["t2m"], "rmse_ratio": {"t2m": {"1": rmse}},
        "scores": {"variant": scores(rmse), "teacher": scores(1.0)},
        "cost": {"variant": costs(params), "teacher": costs(100)},
    }  # fmt: skip


def test_the_summary_has_each_variant_and_its_teacher_once(tmp_path):
    import json

    from hpcpipe.optimize.summary import summarize

    paths = []
    for variant, rmse, n in (("quantized", 1.01, 100), ("distilled", 1.03, 20)):
        paths.append(tmp_path / f"{variant}.json")
        paths[-1].write_text(json.dumps(_metrics(variant, rmse, n)))
    df = summarize(paths, tmp_path / "s.csv", tmp_path / "s.png")
    assert sorted(df["variant"]) == ["distilled", "float", "quantized"]  # the teacher once
    row = df.set_index("variant").loc["distilled"]
    assert row["rmse_vs_teacher"] == 1.03 and row["parameters_vs_teacher"] == 0.2
    assert (tmp_path / "s.png").stat().st_size > 0 and (tmp_path / "s.csv").exists()

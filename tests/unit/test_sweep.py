"""Sweeps: expansion, run ids, per-run params, the checks before any job, the leaderboard."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from hpcpipe import sweep
from hpcpipe.config import load, validate
from hpcpipe.evaluate.leaderboard import leaderboard, write

CONFIG = Path(__file__).parents[2] / "config" / "config.yaml"
GRID = {
    "train.lr": [0.001, 0.003, 0.01],
    "models.cnn.channels": [8, 16],
    "models.unet.depth": [1, 2],
}


@pytest.fixture(scope="module")
def base() -> dict:
    return load(CONFIG)


def with_sweep(base: dict, **section) -> dict:
    c = copy.deepcopy(base)
    c["sweep"] = section
    return validate(c)


def test_no_sweep_is_todays_fan_out_with_todays_params(base: dict):
    plan = sweep.plan(base)
    assert list(plan) == [("cnn", "0"), ("unet", "0")]
    params = json.loads(plan["cnn", "0"][1])
    assert set(params) == {"train", "model"} and "models" not in params["train"]
    assert params["model"] == base["models"]["cnn"]


def test_grid_fans_out_per_model_keys_only(base: dict):
    plan = sweep.plan(with_sweep(base, parameters=GRID))
    by_model = {m: [r for (mm, _), (r, _) in plan.items() if mm == m] for m in ("cnn", "unet")}
    # unet.depth does not multiply cnn's runs, nor cnn.channels unet's
    assert len(by_model["cnn"]) == 3 * 2 and len(by_model["unet"]) == 3 * 2
    run, text = plan["cnn", by_model["cnn"][0].run_dir]
    params = json.loads(text)
    assert params["train"]["lr"] == 0.001 and params["model"]["channels"] == 8
    assert params["point"] == {
        "id": run.point,
        "values": {"models.cnn.channels": 8, "train.lr": 0.001},
    }
    assert run.run_dir == f"0-{run.point}" and len(run.point) == sweep.POINT_ID_CHARS


def test_ids_are_stable_adding_points_keeps_the_others(base: dict):
    small = sweep.plan(with_sweep(base, parameters={"train.lr": [0.001, 0.003]}))
    more = sweep.plan(with_sweep(base, parameters={"train.lr": [0.001, 0.003, 0.03]}))
    assert set(small) < set(more) and all(more[k][1] == small[k][1] for k in small)
    changed = sweep.plan(with_sweep(base, parameters={"train.lr": [0.001, 0.004]}))
    assert len(set(changed) - set(small)) == 2  # one new run per model; the other keeps its id


def test_random_points_keep_their_values_when_n_grows(base: dict):
    params = {
        "train.lr": {"distribution": "log_uniform", "low": 1e-4, "high": 1e-1},
        "train.weight_decay": {"distribution": "uniform", "low": 0.0, "high": 0.01},
        "models.unet.depth": {"values": [1, 2, 3]},
    }
    a = sweep.runs(
        with_sweep(base, method="random", n=20, seed=3, parameters=params)["sweep"], ["unet"], [0]
    )
    b = sweep.runs(
        with_sweep(base, method="random", n=30, seed=3, parameters=params)["sweep"], ["unet"], [0]
    )
    assert len(a) == 20 and [r.id for r in b[:20]] == [r.id for r in a]
    assert all(
        1e-4 <= r.values["train.lr"] <= 1e-1 and r.values["models.unet.depth"] in (1, 2, 3)
        for r in a
    )


def test_random_draws_that_repeat_a_point_are_said(base: dict):
    # 3 x 2 discrete values, 12 draws: some points come twice, each is one run
    params = {"models.unet.depth": {"values": [1, 2, 3]}, "train.lr": {"values": [0.01, 0.02]}}
    c = with_sweep(base, method="random", n=12, seed=0, parameters=params)
    c["train"]["models"] = ["unet"]
    planned = sweep.plan(c)
    assert len(planned) <= 6
    said = sweep.repeated_draws(c, planned)
    assert said and f"{12 - len(planned)} of 12 random draws repeat" in said
    grid = with_sweep(base, parameters=GRID)
    assert sweep.repeated_draws(grid, sweep.plan(grid)) is None


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"parameters": {"train.lr": [0.01, -1]}}, "sweep point with train.lr=-1"),
        ({"parameters": {"train.lrr": [0.1]}}, "train.lrr is not a key that can be swept"),
        ({"parameters": {"models.cnn.width": [1]}}, "models.cnn has no key 'width'"),
        ({"parameters": {"train.seeds": [[1]]}}, "train.seeds is the fan-out itself"),
        ({"parameters": {"train.lr": []}}, "sweep.parameters.train.lr: an empty list"),
        ({"parameters": {}}, "sweep.parameters: empty"),
        ({"parameters": {"models.unet.depth": [6]}}, "models.unet.depth=6"),
        (
            {"parameters": {"train.lr": [0.1, 0.2]}, "max_runs": 3},
            "4 runs (models x seeds x points) are more than sweep.max_runs 3",
        ),
        (
            {
                "method": "random",
                "parameters": {"train.epochs": {"distribution": "uniform", "low": 1, "high": 5}},
            },
            "give {values: [...]}",
        ),
        (
            {
                "method": "random",
                "parameters": {"train.lr": {"distribution": "log_uniform", "low": 0, "high": 1}},
            },
            "log_uniform needs low > 0",
        ),
    ],
)
def test_a_bad_sweep_is_a_named_error(base: dict, section: dict, named: str):
    with pytest.raises(ValueError) as info:
        sweep.plan(with_sweep(base, **section))
    assert named in str(info.value), str(info.value)


def test_ten_thousand_runs_plan_in_seconds(base: dict):
    c = with_sweep(
        base,
        parameters={
            "train.lr": [1e-3 * (1 + i) for i in range(100)],
            "models.cnn.channels": list(range(1, 101)),
        },
    )
    c["train"]["models"] = ["cnn"]
    plan = sweep.plan(c)  # its time is the benchmark's (scripts/bench sweep), not a test's
    assert len(plan) == 10_000
    c["sweep"]["parameters"]["models.cnn.layers"] = [1, 2]
    with pytest.raises(ValueError, match="20000 runs"):
        sweep.plan(c)


def metrics(val: float, rmse: float) -> dict:
    by = {"t2m": {"1": rmse}}
    return {
        "headline_lead": 1,
        "val_loss": val,
        "beats_baselines": {"t2m": rmse < 2},
        "rmse": {
            "model": by,
            "persistence": {"t2m": {"1": 2.0}},
            "climatology": {"t2m": {"1": 3.0}},
        },
        "acc": {"model": {"t2m": {"1": 0.5}}},
    }


def test_leaderboard_ranks_by_validation_loss_never_test(base: dict, tmp_path: Path):
    s = with_sweep(base, parameters={"train.lr": [0.001, 0.01, 0.1]})["sweep"]
    runs = sweep.runs(s, ["cnn"], [0])
    # the best test RMSE (run 0) has the worst validation loss: rank follows validation
    paths = []
    for i, (val, rmse) in enumerate([(0.9, 1.0), (0.1, 1.8), (0.5, 1.5)]):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(metrics(val, rmse)))
    df = write(
        runs,
        paths,
        ["train.lr"],
        tmp_path / "lb.csv",
        tmp_path / "sweep.png",
        tmp_path / "sweep.rst",
    )
    assert list(df["train.lr"]) == [0.01, 0.1, 0.001] and list(df["best"]) == [True, False, False]
    assert (
        (tmp_path / "lb.csv")
        .read_text()
        .splitlines()[0]
        .startswith("rank,run,model,seed,point,train.lr,val_loss,rmse_t2m")
    )
    assert (
        "Top 3 runs" in (tmp_path / "sweep.rst").read_text()
        and (tmp_path / "sweep.png").stat().st_size > 1000
    )


def test_leaderboard_of_ten_thousand_runs_is_fast_and_short(base: dict):
    s = with_sweep(
        base,
        method="random",
        n=10_000,
        parameters={"train.lr": {"distribution": "log_uniform", "low": 1e-4, "high": 1e-1}},
    )["sweep"]
    runs = sweep.runs(s, ["cnn"], [0])
    table = [{"run": r.id, "model": "cnn", "seed": 0, "point": r.point, **r.values, "val_loss": i % 97,
              "rmse_t2m": 1.0, "rmse_persistence_t2m": 2.0, "acc_t2m": 0.5, "beats_baselines": True}
             for i, r in enumerate(runs)]  # fmt: skip
    df = leaderboard(table, ["train.lr"])
    from hpcpipe.evaluate.leaderboard import effects, report_rst

    assert len(effects(df, "train.lr")) <= 8 and len(report_rst(df, ["train.lr"])) < 10_000

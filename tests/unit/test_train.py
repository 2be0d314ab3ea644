"""Training on a small synthetic feature store (docs/data-contracts.md): it learns, it is
reproducible, it stops early, and its outputs follow the checkpoint contract."""

from __future__ import annotations

import csv
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import xarray as xr
from trainingdata import GRID, LEADS, VARIABLES, make_features

from hpcpipe.atomic import stale_temporaries
from hpcpipe.models.files import load_model, predict
from hpcpipe.train import data as train_data
from hpcpipe.train.state import HISTORY_COLUMNS
from hpcpipe.train.trainer import train

CNN = {"channels": 12, "layers": 3, "kernel_size": 3}
TRAIN_CFG = {
    "epochs": 12,
    "batch_size": 16,
    "lr": 0.005,
    "weight_decay": 0.0,
    "lr_schedule": "cosine",
    "patience": 12,
    "deterministic": True,
}


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_features(tmp_path_factory.mktemp("features"))


def _persistence_mse(features: Path) -> float:
    ds = xr.open_zarr(features / "val.zarr")
    x, y, m = ds["inputs"].values, ds["targets"].values, ds["mask"].values
    lag0 = x[:, [list(ds["channel"].values).index(f"{v}_lag0") for v in VARIABLES]]
    return float(((lag0[:, None] - y) ** 2 * m).sum() / (m.sum() * len(LEADS) * len(x)))


def _run(features: Path, out: Path, name: str = "cnn", model_cfg: dict = CNN, **overrides) -> dict:
    cfg = TRAIN_CFG | overrides
    return train(
        name, model_cfg, cfg, 0, features, out / "model.pt", out / "history.csv", threads=1
    )


def _history(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(features: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cnn")
    return out, _run(features, out)


def test_learns_advection(features: Path, trained: tuple[Path, dict]) -> None:
    _, summary = trained
    baseline = _persistence_mse(features)
    assert summary["best_val_loss"] < 0.3 * baseline, (summary, baseline)
    assert summary["epochs_run"] == TRAIN_CFG["epochs"] and not summary["stopped_early"]


def test_outputs_follow_the_contract(features: Path, trained: tuple[Path, dict]) -> None:
    out, summary = trained
    rows = _history(out / "history.csv")
    assert tuple(rows[0]) == HISTORY_COLUMNS
    assert [int(r["epoch"]) for r in rows] == list(range(1, TRAIN_CFG["epochs"] + 1))
    val = [float(r["val_loss"]) for r in rows]
    assert min(val) == pytest.approx(summary["best_val_loss"])
    assert int(np.argmin(val)) + 1 == summary["best_epoch"]
    assert float(rows[0]["lr"]) == pytest.approx(TRAIN_CFG["lr"])
    assert float(rows[-1]["lr"]) < 0.1 * TRAIN_CFG["lr"]  # cosine anneals towards zero
    assert val[-1] < 0.5 * val[0]

    ckpt = torch.load(out / "model.pt", weights_only=True)
    assert ckpt["model"] == "cnn" and ckpt["model_config"] == CNN
    assert ckpt["in_channels"] == 8 and ckpt["grid"] == list(GRID)
    assert ckpt["variables"] == VARIABLES and ckpt["leads"] == LEADS
    assert ckpt["channels"][:2] == ["t2m_lag0", "z500_lag0"]
    assert ckpt["epoch"] == summary["best_epoch"]
    assert ckpt["val_loss"] == pytest.approx(summary["best_val_loss"])
    assert ckpt["train_config"] == TRAIN_CFG and ckpt["seed"] == 0
    assert stale_temporaries(out) == []


def test_load_model_predict_round_trip(features: Path, trained: tuple[Path, dict]) -> None:
    """predict() of the saved model reproduces the best validation loss: same weights, same
    lead-major channel order, same masked MSE."""
    out, summary = trained
    model, meta = load_model(out / "model.pt")
    assert meta["epoch"] == summary["best_epoch"]
    val = xr.open_zarr(features / "val.zarr")
    pred = predict(model, val["inputs"].values, batch_size=7)
    y, m = val["targets"].values, val["mask"].values
    assert pred.shape == y.shape and pred.dtype == np.float32
    mse = float(((pred - y) ** 2 * m).sum() / (m.sum() * len(LEADS) * len(y)))
    assert mse == pytest.approx(summary["best_val_loss"], rel=1e-4)


def test_same_seed_is_bitwise_identical(features: Path, tmp_path: Path) -> None:
    runs = []
    for i in range(2):
        out = tmp_path / str(i)
        _run(features, out, epochs=3)
        runs.append(
            (torch.load(out / "model.pt", weights_only=True), _history(out / "history.csv"))
        )
    (a, ha), (b, hb) = runs
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for col in ("train_loss", "val_loss", "lr"):
        assert [r[col] for r in ha] == [r[col] for r in hb]  # repr() of floats: exact


def test_early_stopping(features: Path, tmp_path: Path) -> None:
    # A learning rate too small to improve anything: validation loss stalls from epoch 1.
    summary = _run(features, tmp_path, epochs=30, lr=1e-9, lr_schedule="constant", patience=3)
    assert summary["stopped_early"] and summary["epochs_run"] == 4
    assert summary["best_epoch"] == 1
    assert len(_history(tmp_path / "history.csv")) == 4


def test_unet_plateau_and_chunked_reading(
    features: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The U-Net trains too, and so does the out-of-core path (features read chunk by chunk)."""
    monkeypatch.setattr(train_data, "IN_MEMORY_SHARE", 0.0)
    summary = _run(
        features, tmp_path, "unet", {"channels": 8, "depth": 2}, epochs=6, lr_schedule="plateau"
    )
    assert summary["epochs_run"] == 6
    assert summary["best_val_loss"] < 0.6 * _persistence_mse(features)


def test_bad_schedule(features: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"train\.lr_schedule"):
        _run(features, tmp_path, lr_schedule="linear")
    assert not (tmp_path / "model.pt").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_rank(rank: int, world: int, port: int, features: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    # Only rank 0 writes; the other rank gets paths that must stay unwritten.
    target = Path(out) if rank == 0 else Path(out) / "not-rank0"
    summary = _run(Path(features), target, epochs=3)
    (Path(out) / f"summary{rank}.txt").write_text(repr(summary["best_val_loss"]))


def test_ddp_two_ranks_match_one_process(features: Path, tmp_path: Path) -> None:
    """World 2 with the same global batch gives (up to rounding) the single-process run."""
    single = _run(features, tmp_path / "single", epochs=3)
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    ctx = mp.spawn(_ddp_rank, args=(2, _free_port(), str(features), str(ddp)), nprocs=2, join=False)
    deadline = time.monotonic() + 300  # a hung rank fails the test instead of the CI run
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("a DDP rank did not finish within 300 s")
    assert (ddp / "model.pt").exists() and not (ddp / "not-rank0").exists()
    losses = {float((ddp / f"summary{r}.txt").read_text()) for r in range(2)}
    assert len(losses) == 1  # all-reduced: every rank saw the same validation loss
    assert losses.pop() == pytest.approx(single["best_val_loss"], rel=1e-3)
    history = [float(r["train_loss"]) for r in _history(ddp / "history.csv")]
    reference = [float(r["train_loss"]) for r in _history(tmp_path / "single" / "history.csv")]
    np.testing.assert_allclose(history, reference, rtol=1e-3)
    # The parameters after the same steps agree to float rounding (different summation order).
    a = torch.load(tmp_path / "single" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(ddp / "model.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5)

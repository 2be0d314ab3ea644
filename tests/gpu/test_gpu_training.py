"""Training on a GPU: bf16 autocast, torch.compile, NCCL, checkpoints (marker ``gpu``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainingdata import make_features

from hpcpipe.train.trainer import train

pytestmark = pytest.mark.gpu

UNET = {"channels": 16, "depth": 2}
CFG = {
    "epochs": 4, "batch_size": 16, "lr": 0.005, "weight_decay": 0.0, "lr_schedule": "cosine",
    "patience": 4, "deterministic": False, "precision": "auto", "compile": False,
    "checkpoint_every": 5,
}  # fmt: skip


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_features(tmp_path_factory.mktemp("features"))


def _train(features: Path, out: Path, **cfg) -> dict:
    from hpcpipe import logs

    logs.setup(out / "train.log")
    return train(
        "unet", UNET, CFG | cfg, 0, features, out / "model.pt", out / "history.csv",
        checkpoint_dir=out / "ckpt",
    )  # fmt: skip


def test_trains_on_the_gpu_in_bf16(features: Path, tmp_path: Path) -> None:
    summary = _train(features, tmp_path)
    assert summary["device"].startswith("cuda")
    assert "bf16 autocast" in (tmp_path / "train.log").read_text()
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(v.device.type == "cpu" for v in ckpt["state_dict"].values())  # portable
    assert summary["best_val_loss"] < 1.0


def test_compiled_model_gives_the_same_kind_of_result(features: Path, tmp_path: Path) -> None:
    eager = _train(features, tmp_path / "eager")
    compiled = _train(features, tmp_path / "compiled", compile=True)
    assert compiled["best_val_loss"] == pytest.approx(eager["best_val_loss"], rel=0.1)


def test_nccl_world_of_one(features: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DDP over NCCL with one rank: the process group comes up, trains and shuts down."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    summary = _train(features, tmp_path)
    assert summary["world_size"] == 1 and summary["device"].startswith("cuda")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpu_ranks_over_nccl(features: Path, tmp_path: Path) -> None:
    params = json.dumps({"train": CFG, "model": UNET})
    cmd = [
        sys.executable, "-m", "hpcpipe.cli", "launch", "-n", "2",
        sys.executable, "-m", "hpcpipe.cli", "train", "--params", params,
        "--features", str(features), "--model", "unet", "--seed", "0",
        "--output", str(tmp_path / "model.pt"), "--history", str(tmp_path / "history.csv"),
        "--log", str(tmp_path / "train.log"),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=600)
    assert (tmp_path / "model.pt").exists()
    assert "cuda:0 x 2 rank(s)" in (tmp_path / "train.log").read_text()

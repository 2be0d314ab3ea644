"""Sharded training on GPUs (marker ``gpu``): FSDP2 over NCCL with bf16 mixed precision.

Unmeasured so far (no GPU has run them yet); the CPU/gloo equivalents are in
tests/unit/test_strategy.py.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from test_gpu_training import CFG, LEARNED, UNET, features, untrained_loss  # noqa: F401

from hpcpipe.runtime.environment import DistEnv
from hpcpipe.train import process_group
from hpcpipe.train.strategy import full_state_dict, shard, state_bytes

pytestmark = pytest.mark.gpu


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_fsdp2_bf16_policy_on_one_gpu() -> None:
    """FSDP2 itself on this GPU (a forced 1-rank NCCL group): the forward computes in bf16,
    the sharded weights, their gradients and Adam's state stay float32, and the full state
    dict is ordinary float32 CPU tensors."""
    with process_group.init(DistEnv(world_size=1), "cuda") as device:
        dist.init_process_group(
            "nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
            device_id=device,
        )  # fmt: skip
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(8, 2, 1)
        ).to(device)
        seen: list[torch.dtype] = []
        model[0].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        shard(model, "fsdp", (1,), device, bf16=True)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randn(8, 4, 16, 16, device=device)
        loss = model(x).float().square().mean()
        loss.backward()
        opt.step()
        assert seen == [torch.bfloat16]
        assert all(
            p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters()
        )
        held = state_bytes(model, opt)
        assert held["optimizer"] == 2 * held["parameters"] + 4 * len(list(model.parameters()))
        full = full_state_dict(model)
        assert all(type(v) is torch.Tensor and v.device.type == "cpu" for v in full.values())
        assert all(v.dtype == torch.float32 for v in full.values())


def _launch(features: Path, out: Path, **cfg) -> dict:  # noqa: F811
    params = json.dumps({"train": CFG | cfg, "model": UNET})
    cmd = [
        sys.executable, "-m", "hpcpipe.cli", "launch", "-n", "2",
        sys.executable, "-m", "hpcpipe.cli", "train", "--params", params,
        "--train", str(features / "train.zarr"), "--val", str(features / "val.zarr"),
        "--model", "unet", "--seed", "0",
        "--output", str(out / "model.pt"), "--history", str(out / "history.csv"),
        "--log", str(out / "train.log"),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=600)
    return torch.load(out / "model.pt", weights_only=True)


@pytest.mark.gpu(2)
def test_two_gpu_fsdp_bf16_learns_as_ddp(
    features: Path,  # noqa: F811
    tmp_path: Path,
    untrained_loss: float,  # noqa: F811
) -> None:
    """2 GPUs over NCCL: fsdp with FSDP2's bf16 policy learns as well as ddp under bf16
    autocast, holds about half the state per rank, and writes an ordinary model.pt."""
    ddp = _launch(features, tmp_path / "ddp", precision="bf16", strategy="ddp")
    fsdp = _launch(features, tmp_path / "fsdp", precision="bf16", strategy="fsdp")
    log = (tmp_path / "fsdp" / "train.log").read_text()
    assert "bf16 (FSDP2 mixed precision)" in log and "fsdp: sharded over 2 ranks" in log
    assert all(type(v) is torch.Tensor for v in fsdp["state_dict"].values())
    assert fsdp["val_loss"] < LEARNED * untrained_loss
    assert fsdp["val_loss"] == pytest.approx(ddp["val_loss"], rel=0.1)  # bf16, non-deterministic
    held = {}
    for name in ("ddp", "fsdp"):
        text = (tmp_path / name / "train.log").read_text()
        held[name] = int(text.split("rank 0 holds ")[1].split(" bytes")[0])
    assert 0.45 < held["fsdp"] / held["ddp"] < 0.6


@pytest.mark.gpu(2)
def test_two_gpu_fsdp_fp32_deterministic_matches_ddp(
    features: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """fp32 with deterministic kernels: fsdp ends with ddp's weights (as on CPU, where they
    agree bit for bit; here within float32 rounding)."""
    cfg = {"precision": "fp32", "deterministic": True, "epochs": 3}
    a = _launch(features, tmp_path / "ddp", strategy="ddp", **cfg)["state_dict"]
    b = _launch(features, tmp_path / "fsdp", strategy="fsdp", **cfg)["state_dict"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)

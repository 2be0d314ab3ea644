"""Sharded training (``train.strategy``): FSDP2 and hybrid sharding on real gloo groups give
DDP's weights, hold about 1/world of the state per rank, and their sharded checkpoints
(torch.distributed.checkpoint) resume on another number of ranks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from test_train import CNN, TRAIN_CFG
from trainingdata import make_features

from hpcpipe.models.files import load_model
from hpcpipe.runtime.environment import ranks_per_node
from hpcpipe.train import trainer as train_module
from hpcpipe.train.checkpoint import CheckpointError, Checkpoints, run_identity
from hpcpipe.train.stop import StopRequest, TrainingStopped
from hpcpipe.train.strategy import mesh_shape, strategy_of

# STEPS steps per epoch, 12 in all; a stopped run is asked to stop at step STOP_AT (epoch 2).
CFG = TRAIN_CFG | {"epochs": 2, "checkpoint_every": 0}
STEPS, STOP_AT, EVERY = 6, 9, 4
# FSDP's reduce-scatter and DDP's all-reduce add the same two numbers per gradient element
# and both divide by the world size: the weights agree to float32 rounding.
RTOL, ATOL = 1e-5, 1e-7
# A run resumed on another number of ranks sums each gradient over a different split of the
# batch for the rest of the run: float32 rounding (measured: at most 3e-8 apart, a tenth of
# this tolerance).
RESUME_RTOL, RESUME_ATOL = 1e-5, 1e-7


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_features(tmp_path_factory.mktemp("features"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _StopAt(StopRequest):
    """A stop request that arrives at step ``STOP_AT``, as SIGTERM would (the checkpointer
    reads ``signum`` once per step)."""

    def __init__(self) -> None:
        self._polls = 0
        super().__init__()

    @property
    def signum(self) -> int | None:
        self._polls += 1
        return signal.SIGTERM if self._polls >= STOP_AT else self._signum

    @signum.setter
    def signum(self, value: int | None) -> None:
        self._signum = value


def _train(features: Path, out: Path, strategy: str, stop: bool = False) -> dict | None:
    """One training run in this process (its rank from the environment); a stopped one also
    checkpoints every EVERY steps."""
    real = train_module.StopRequest
    train_module.StopRequest = _StopAt if stop else real  # type: ignore[misc]
    cfg = CFG | {"strategy": strategy, "checkpoint_every": EVERY if stop else 0}
    try:
        return train_module.train(
            "cnn", CNN, cfg, 0, features, out / "model.pt",
            out / "history.csv", threads=1, checkpoint_dir=out / "ckpt",
        )  # fmt: skip
    except TrainingStopped:
        return None
    finally:
        train_module.StopRequest = real


def _rank(rank: int, world: int, runs: list[tuple], features: str) -> None:
    """Rank ``rank`` of ``world`` runs ``runs`` one after the other, each in its own group:
    (strategy, out, ranks per node, port, stop)."""
    for strategy, out, per_node, port, stop in runs:
        os.environ.update(
            RANK=str(rank), LOCAL_RANK=str(rank % per_node), WORLD_SIZE=str(world),
            LOCAL_WORLD_SIZE=str(per_node), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        )  # fmt: skip
        summary = _train(Path(features), Path(out), strategy, stop)
        if summary is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            Path(out, f"bytes{rank}.txt").write_text(repr(summary["state_bytes"]))


def _spawn(world: int, runs: list[tuple], features: Path, timeout: float = 300) -> None:
    ctx = mp.spawn(_rank, args=(world, runs, str(features)), nprocs=world, join=False)
    deadline = time.monotonic() + timeout  # a hung rank fails the test instead of the CI run
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"a rank did not finish within {timeout} s")


def _weights(out: Path) -> dict[str, torch.Tensor]:
    state = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    assert all(type(v) is torch.Tensor for v in state.values())  # ordinary, no DTensor
    return state


def _worst(a: dict, b: dict, rtol: float, atol: float) -> tuple[float, float]:
    """The largest absolute difference, and the largest difference over what the tolerance
    allows (assert_close passes below 1)."""
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    share = max(float(((a[k] - b[k]).abs() / (atol + rtol * b[k].abs())).max()) for k in a)
    return diff, share


def _assert_same_weights(got: Path, want: Path, rtol: float, atol: float) -> None:
    a, b = _weights(got), _weights(want)
    assert a.keys() == b.keys()
    diff, share = _worst(a, b, rtol, atol)
    print(f"{got.name} vs {want.name}: max |difference| {diff:.2e}, {share:.2f} of the tolerance")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)


@pytest.fixture(scope="module")
def runs(features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fsdp on 1 rank stopped at STOP_AT; then on 2 ranks: ddp, fsdp, hybrid as 2 nodes x 1
    rank, fsdp stopped at STOP_AT, and the 1-rank run resumed (``resumed1to2``)."""
    root = tmp_path_factory.mktemp("strategies")
    assert _train(features, root / "stopped1", "fsdp", stop=True) is None
    shutil.copytree(root / "stopped1" / "ckpt", root / "resumed1to2" / "ckpt")
    plan = [
        ("ddp", root / "ddp", 2, _free_port(), False),
        ("fsdp", root / "fsdp", 2, _free_port(), False),
        ("hybrid", root / "hybrid", 1, _free_port(), False),  # torchrun's view of 2 nodes
        ("fsdp", root / "stopped2", 2, _free_port(), True),
        ("fsdp", root / "resumed1to2", 2, _free_port(), False),
    ]
    _spawn(2, plan, features)
    return root


def test_fsdp_and_hybrid_end_with_ddps_weights(runs: Path) -> None:
    _assert_same_weights(runs / "fsdp", runs / "ddp", RTOL, ATOL)
    _assert_same_weights(runs / "hybrid", runs / "ddp", RTOL, ATOL)
    model, meta = load_model(runs / "fsdp" / "model.pt")  # evaluate's view: one state dict
    assert meta["train_config"]["strategy"] == "fsdp" and not model.training


def test_fsdp_holds_half_the_state_per_rank(runs: Path) -> None:
    held = {s: eval((runs / s / "bytes0.txt").read_text()) for s in ("ddp", "fsdp", "hybrid")}
    print("parameter + gradient + optimizer bytes on rank 0:", held)
    ddp, fsdp = held["ddp"], held["fsdp"]
    assert ddp["gradients"] == ddp["parameters"] and ddp["optimizer"] >= 2 * ddp["parameters"]
    # Half, give or take the uneven split of parameters with an odd first dimension.
    assert 0.45 < fsdp["total"] / ddp["total"] < 0.6
    assert held["hybrid"]["total"] == ddp["total"]  # 1 rank per node: replicated


def _checkpoints(ckpt: Path, stopped_at: int) -> None:
    saved = sorted(p.name for p in ckpt.glob("*/step-*"))
    # The interval's (every 4 steps; the older of the two is pruned) and the stop request's.
    assert saved == [f"step-{EVERY * 2:09d}.dcp", f"step-{stopped_at:09d}.dcp"], saved


def test_sharded_checkpoint_resumes_on_one_rank(runs: Path, features: Path, tmp_path: Path) -> None:
    """Stopped mid-epoch 2 on 2 ranks, resumed on 1: the weights of the uninterrupted run on
    2 ranks. (Two ranks agree on a stop request one step late: process_group.AnyRank.)"""
    _checkpoints(runs / "stopped2" / "ckpt", STOP_AT + 1)
    shutil.copytree(runs / "stopped2" / "ckpt", tmp_path / "ckpt")
    summary = _train(features, tmp_path, "fsdp")
    assert summary is not None and summary["resumed_from"] == (2, STOP_AT + 1 - STEPS)
    _assert_same_weights(tmp_path, runs / "fsdp", RESUME_RTOL, RESUME_ATOL)
    assert not (tmp_path / "ckpt").exists()  # finished: its checkpoints are gone


def test_sharded_checkpoint_resumes_on_two_ranks(runs: Path) -> None:
    """Stopped mid-epoch 2 on 1 rank, resumed on 2: the weights of the uninterrupted run."""
    _checkpoints(runs / "stopped1" / "ckpt", STOP_AT)
    _assert_same_weights(runs / "resumed1to2", runs / "fsdp", RESUME_RTOL, RESUME_ATOL)
    assert not (runs / "resumed1to2" / "ckpt").exists()


def test_broken_shard_fails_naming_the_checkpoint(
    runs: Path, features: Path, tmp_path: Path
) -> None:
    shutil.copytree(runs / "stopped2" / "ckpt", tmp_path / "ckpt")
    newest = Checkpoints(tmp_path / "ckpt", _identity(features, "fsdp")).files()[0]
    for shard in newest.glob("*.distcp"):
        shard.write_bytes(shard.read_bytes()[:50])  # truncated, as by a full disk
    with pytest.raises(CheckpointError, match=r"cannot read the sharded checkpoint .*Delete"):
        _train(features, tmp_path, "fsdp")


def test_sharded_checkpoint_of_another_run_is_refused(runs: Path, features: Path) -> None:
    found = sorted((runs / "stopped2" / "ckpt").glob("*/step-*.dcp"))[-1]
    theirs = Checkpoints(runs / "stopped2" / "ckpt", _identity(features, "fsdp"))
    assert theirs.files()[0] == found
    ours = Checkpoints(runs / "foreign", _identity(features, "fsdp", lr=0.001))
    ours.dir.mkdir(parents=True)
    shutil.copytree(found, ours.dir / found.name)  # copied by hand
    with pytest.raises(CheckpointError, match=r"different run \(train\.lr: 0\.005 .* 0\.001 now"):
        ours.load_latest()


def _identity(features: Path, strategy: str, **overrides) -> dict:
    return run_identity("cnn", CNN, CFG | {"strategy": strategy} | overrides, 0, features)


def test_strategy_is_part_of_the_identity(features: Path) -> None:
    key = {s: Checkpoints("x", _identity(features, s)).key for s in ("ddp", "fsdp", "hybrid")}
    assert len(set(key.values())) == 3
    # ddp is what checkpoints were before the key existed: they keep their directory.
    assert key["ddp"] == Checkpoints("x", run_identity("cnn", CNN, CFG, 0, features)).key


def test_bad_strategy_names_the_key(features: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"train\.strategy must be ddp, fsdp or hybrid"):
        _train(features, tmp_path, "zero3")
    assert strategy_of({}) == "ddp"


@pytest.mark.parametrize(
    ("strategy", "world", "per_node", "shape"),
    [("fsdp", 4, 2, (4,)), ("hybrid", 2, 1, (2, 1)), ("hybrid", 4, 2, (2, 2)),
     ("hybrid", 8, 8, (1, 8))],
)  # fmt: skip
def test_mesh_shape(strategy: str, world: int, per_node: int, shape: tuple) -> None:
    assert mesh_shape(strategy, world, per_node) == shape


@pytest.mark.parametrize(("world", "per_node"), [(6, 4), (3, None)])
def test_hybrid_needs_even_nodes(world: int, per_node: int | None) -> None:
    with pytest.raises(ValueError, match=r"train\.strategy=hybrid needs the same number"):
        mesh_shape("hybrid", world, per_node)


def test_ranks_per_node_from_the_launcher() -> None:
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}
    assert ranks_per_node(torchrun) == 2
    assert ranks_per_node({"SLURM_STEP_TASKS_PER_NODE": "2(x3)"}) == 2
    assert ranks_per_node({"SLURM_STEP_TASKS_PER_NODE": "2(x3),1"}) is None
    assert ranks_per_node({}) is None


def test_fsdp2_bf16_policy_on_one_gloo_rank() -> None:
    """FSDP2's mixed precision on CPU (a forced 1-rank gloo group): the forward computes in
    bf16, the sharded weights, their gradients and Adam's state stay float32, and the full
    state dict is ordinary float32 tensors. (tests/gpu does the same over NCCL.)"""
    import torch.distributed as dist

    from hpcpipe.train.strategy import full_state_dict, shard, state_bytes

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.GELU(), torch.nn.Conv2d(8, 2, 1)
        )
        seen: list[torch.dtype] = []
        model[0].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        shard(model, "fsdp", (1,), torch.device("cpu"), bf16=True)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model(torch.randn(8, 4, 16, 16)).float().square().mean().backward()
        opt.step()
        assert seen == [torch.bfloat16]
        params = list(model.parameters())
        assert all(p.dtype == p.grad.dtype == torch.float32 for p in params)
        held = state_bytes(model, opt)
        assert held["gradients"] == held["parameters"]
        assert held["optimizer"] == 2 * held["parameters"] + 4 * len(params)  # + Adam's steps
        full = full_state_dict(model)
        assert all(type(v) is torch.Tensor and v.dtype == torch.float32 for v in full.values())
    finally:
        dist.destroy_process_group()


def test_fsdp2_refuses_channels_last_parameters() -> None:
    """Why sharded strategies keep the weights contiguous (torch 2.13). When this fails,
    FSDP2 takes channels-last weights and build_network can stop special-casing them."""
    import torch.distributed as dist

    from hpcpipe.train.strategy import shard

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
    )
    try:
        model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3)).to(memory_format=torch.channels_last)
        with pytest.raises(NotImplementedError, match="does not support non-contiguous param"):
            shard(model, "fsdp", (1,), torch.device("cpu"), bf16=False)
    finally:
        dist.destroy_process_group()

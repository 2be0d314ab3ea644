"""Checkpoints: a killed or stopped training run resumes to exactly the uninterrupted result;
corrupt, foreign and missing checkpoints are handled as the user would want."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pausepoints
import pytest
import torch
from test_train import CNN, TRAIN_CFG, _history
from trainingdata import make_features

from hpcpipe.train import process_group
from hpcpipe.train.checkpoint import KEEP, CheckpointError, Checkpoints, run_identity
from hpcpipe.train.stop import TrainingStopped
from hpcpipe.train.trainer import train

# 7 steps per epoch, 35 in all. Tests that stop a run mid-way pause it at a step first
# (tests/pausepoints.py): the kill or signal finds it there however fast the machine.
CFG = TRAIN_CFG | {"epochs": 5, "lr_schedule": "cosine", "checkpoint_every": 3}


def _train_cmd(
    features: Path, out: Path, ckpt: Path, cfg: dict = CFG, exe: Path | None = None
) -> list[str]:
    """The train step's command line; with ``exe`` (a pause-point wrapper) run through it."""
    params = json.dumps({"train": cfg, "model": CNN})
    head = [str(exe)] if exe else [sys.executable, "-m", "hpcpipe.cli"]
    return [
        *head, "train", "--params", params,
        "--train", str(features / "train.zarr"), "--val", str(features / "val.zarr"),
        "--model", "cnn", "--seed", "0", "--threads", "1",
        "--output", str(out / "model.pt"), "--history", str(out / "history.csv"),
        "--checkpoints", str(ckpt), "--log", str(out / "train.log"),
    ]  # fmt: skip


def _assert_same_result(a: Path, b: Path) -> None:
    ma, mb = (torch.load(p / "model.pt", weights_only=True) for p in (a, b))
    assert ma["epoch"] == mb["epoch"]
    for k in ma["state_dict"]:
        assert torch.equal(ma["state_dict"][k], mb["state_dict"][k]), k
    ha, hb = _history(a / "history.csv"), _history(b / "history.csv")
    for col in ("epoch", "train_loss", "val_loss", "lr"):
        assert [r[col] for r in ha] == [r[col] for r in hb], col


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_features(tmp_path_factory.mktemp("features"))


@pytest.fixture(scope="module")
def uninterrupted(features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    subprocess.run(_train_cmd(features, out, out / "ckpt"), check=True, timeout=300)
    assert not (out / "ckpt").exists()  # a finished run removes its checkpoints
    return out


@pytest.fixture(scope="module")
def paused_hpcpipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``hpcpipe`` that pauses at a point the test names (tests/pausepoints.py)."""
    return pausepoints.wrapper(tmp_path_factory.mktemp("bin"))


def _start_paused(cmd: list[str], pause: Path, after_step: int, **point) -> subprocess.Popen:
    """Start ``cmd`` with a pause after global step ``after_step``; return once it waits
    there. Whatever the test then does (kill, signal) reaches a run that is mid-training by
    construction, however slow or fast the machine."""
    env = {**os.environ, **pausepoints.pause_env(pause, step="train", after_step=after_step,
                                                 **point)}  # fmt: skip
    proc = subprocess.Popen(cmd, env=env)
    _wait_for(lambda: pausepoints.marker(pause, "paused"), proc, "the pause")
    return proc


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert proc.poll() is None, f"training ended (status {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)
    return value


def test_killed_run_resumes_bitwise(
    features: Path, uninterrupted: Path, paused_hpcpipe: Path, tmp_path: Path
) -> None:
    """SIGKILL (no chance to clean up) mid-training: the rerun continues from the last
    periodic checkpoint and ends bit for bit where the uninterrupted run ended."""
    ckpt, pause = tmp_path / "ckpt", tmp_path / "pause"
    cmd = _train_cmd(features, tmp_path, ckpt, exe=paused_hpcpipe)
    # Paused right after the first periodic checkpoint: killed between it and the end.
    proc = _start_paused(cmd, pause, after_step=CFG["checkpoint_every"])
    assert [p.name for p in ckpt.glob("*/step-*.pt")] == ["step-000000003.pt"]
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=120) == -signal.SIGKILL
    assert not (tmp_path / "model.pt").exists()
    subprocess.run(_train_cmd(features, tmp_path, ckpt), check=True, timeout=300)
    assert "resuming from" in (tmp_path / "train.log").read_text()
    _assert_same_result(uninterrupted, tmp_path)
    assert not ckpt.exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_writes_a_checkpoint_and_resumes_bitwise(
    features: Path,
    uninterrupted: Path,
    paused_hpcpipe: Path,
    tmp_path: Path,
    sig: int,
) -> None:
    """SIGTERM (scancel, time limit) or SIGUSR1 (SLURM's --signal): a checkpoint at the next
    step, exit 128+signal with a plain message, and the rerun resumes bitwise."""
    ckpt, pause = tmp_path / "ckpt", tmp_path / "pause"
    cfg = CFG | {"checkpoint_every": 1_000_000}  # only the stop request checkpoints
    cmd = _train_cmd(features, tmp_path, ckpt, cfg, exe=paused_hpcpipe)
    proc = _start_paused(cmd, pause, after_step=2)  # mid-training: step 2 of 35
    proc.send_signal(sig)
    got = _wait_for(lambda: pausepoints.marker(pause, "signalled"), proc, "the signal", 60)
    assert got == {"signal": signal.Signals(sig).name}
    pausepoints.release(pause)
    assert proc.wait(timeout=120) == 128 + sig
    text = (tmp_path / "train.log").read_text()
    assert f"training stopped by {signal.Signals(sig).name}" in text and "rerun to resume" in text
    assert not (tmp_path / "model.pt").exists()
    assert [p.name for p in ckpt.glob("*/step-*.pt")] == ["step-000000003.pt"]  # the next step
    subprocess.run(_train_cmd(features, tmp_path, ckpt, cfg), check=True, timeout=300)
    _assert_same_result(uninterrupted, tmp_path)


def _identity(features: Path, **train_overrides) -> dict:
    return run_identity("cnn", CNN, CFG | train_overrides, 0, features)


def test_corrupt_newest_checkpoint_falls_back(features: Path, tmp_path: Path) -> None:
    ckpts = Checkpoints(tmp_path, _identity(features))
    for step in (3, 6, 9):
        ckpts.save({"step": step}, step)
    assert [p.name for p in ckpts.files()] == ["step-000000009.pt", "step-000000006.pt"]
    assert len(ckpts.files()) == KEEP
    newest = ckpts.files()[0]
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a full disk
    state, path = ckpts.load_latest()
    assert state["step"] == 6 and path.name == "step-000000006.pt"
    ckpts.files()[1].write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"every checkpoint in .* is unreadable.*Delete"):
        ckpts.load_latest()


def test_checkpoint_of_another_run_is_refused_with_what_differs(
    features: Path,
    tmp_path: Path,
) -> None:
    theirs = Checkpoints(tmp_path, _identity(features, lr=0.001))
    theirs.save({"step": 1}, 1)
    ours = Checkpoints(tmp_path, _identity(features))
    assert ours.load_latest() is None and ours.others() == [theirs.dir]  # own directory
    ours.dir.mkdir()
    theirs.files()[0].rename(ours.dir / "step-000000001.pt")  # copied by hand
    with pytest.raises(CheckpointError, match=r"different run \(train\.lr: 0\.001 .* 0\.005 now"):
        ours.load_latest()


def test_checkpoint_identity_ignores_only_runtime_keys(features: Path) -> None:
    base = Checkpoints("x", _identity(features)).key
    assert Checkpoints("x", _identity(features, checkpoint_every=7)).key == base
    assert Checkpoints("x", _identity(features, epochs=6)).key != base
    assert Checkpoints("x", _identity(features, precision="bf16")).key != base


def test_requeued_job_without_checkpoint_fails_clearly(
    features: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.raises(CheckpointError, match=r"requeued \(restart 1\).*holds no checkpoint"):
        train(
            "cnn", CNN, CFG, 0, features, tmp_path / "model.pt", tmp_path / "history.csv",
            threads=1, checkpoint_dir=tmp_path / "ckpt",
        )  # fmt: skip
    assert not (tmp_path / "model.pt").exists()


def test_stop_request_in_process(features: Path, tmp_path: Path) -> None:
    """The flag a signal sets stops the loop at the next step with TrainingStopped."""
    from hpcpipe.train import trainer as train_module

    real = train_module.StopRequest

    class StopAtOnce(real):  # type: ignore[misc, valid-type]
        def __enter__(self):
            super().__enter__()
            self.signum = signal.SIGTERM
            return self

    train_module.StopRequest = StopAtOnce
    try:
        with pytest.raises(TrainingStopped, match="SIGTERM") as info:
            train(
                "cnn", CNN, CFG, 0, features, tmp_path / "model.pt", tmp_path / "history.csv",
                threads=1, checkpoint_dir=tmp_path / "ckpt",
            )  # fmt: skip
    finally:
        train_module.StopRequest = real
    assert info.value.checkpoint is not None and info.value.checkpoint.name == "step-000000001.pt"
    assert not info.value.requeued  # outside SLURM nothing is requeued


def test_any_rank_in_one_process_answers_at_once() -> None:
    agree = process_group.AnyRank()
    assert agree.poll(False) is False and agree.poll(True) is True
    agree.close()


def test_gpu_binding_check_names_the_shared_gpu() -> None:
    process_group.check_gpu_binding([("n1", "GPU-a"), ("n1", "GPU-b"), ("n2", "GPU-a")])
    with pytest.raises(RuntimeError, match=r"ranks 0 and 2 on n1 share one GPU.*tasks"):
        process_group.check_gpu_binding([("n1", "GPU-a"), ("n1", "GPU-b"), ("n1", "GPU-a")])


def test_checkpoint_dir_survives_a_failed_run(features: Path, tmp_path: Path) -> None:
    """A run that fails after a checkpoint (here: NaN loss) keeps its checkpoints."""
    ckpt = tmp_path / "ckpt"
    with pytest.raises(FloatingPointError):
        train(
            "cnn", CNN, CFG | {"lr": 1e30, "checkpoint_every": 2}, 0, features,
            tmp_path / "model.pt", tmp_path / "history.csv", threads=1, checkpoint_dir=ckpt,
        )  # fmt: skip
    assert list(ckpt.glob("*/step-*.pt")) and not (tmp_path / "model.pt").exists()


def test_stop_request_to_one_ddp_rank_stops_both_at_the_same_step(
    features: Path,
    uninterrupted: Path,
    paused_hpcpipe: Path,
    tmp_path: Path,
) -> None:
    """SIGTERM to rank 1 only: the ranks agree, rank 0 writes one checkpoint, both exit; the
    rerun with 2 ranks resumes and matches the 1-rank run (same global batch)."""
    ckpt, pause = tmp_path / "ckpt", tmp_path / "pause"
    cfg = CFG | {"checkpoint_every": 1_000_000}

    def launch(exe: Path | None) -> list[str]:
        train_cmd = _train_cmd(features, tmp_path, ckpt, cfg, exe=exe)
        return [sys.executable, "-m", "hpcpipe.cli", "launch", "-n", "2", *train_cmd]

    # Rank 1 pauses after step 2; rank 0 waits for it in the next step's collectives.
    proc = _start_paused(launch(paused_hpcpipe), pause, after_step=2, rank=1)
    rank1 = pausepoints.marker(pause, "paused")
    assert rank1 and rank1["rank"] == 1, rank1
    os.kill(rank1["pid"], signal.SIGTERM)
    _wait_for(lambda: pausepoints.marker(pause, "signalled"), proc, "the signal", 60)
    pausepoints.release(pause)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    # Rank 1 raises its flag at step 3; the ranks' agreement comes one step late (AnyRank).
    assert [p.name for p in ckpt.glob("*/step-*.pt")] == ["step-000000004.pt"]
    assert not (tmp_path / "model.pt").exists()
    subprocess.run(launch(None), check=True, timeout=300)
    assert "resuming from" in (tmp_path / "train.log").read_text()
    a = torch.load(uninterrupted / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5)

"""Models: shapes, periodicity in longitude, grid checks, checkpoints and prediction."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hpcpipe.models.files import ModelFileError, load_model, model_file, predict
from hpcpipe.models.nets import build_model

GRID = (8, 16)
CASES = [
    ("cnn", {"channels": 8, "layers": 1, "kernel_size": 3}),
    ("cnn", {"channels": 8, "layers": 3, "kernel_size": 5}),
    ("unet", {"channels": 4, "depth": 1}),
    ("unet", {"channels": 4, "depth": 3}),
]


def _randomise(model: torch.nn.Module) -> None:
    # A fresh model's body is zero (residual start); give it weights so the body is tested too.
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)


@pytest.mark.parametrize(("name", "cfg"), CASES)
def test_output_shape(name: str, cfg: dict) -> None:
    model = build_model(name, cfg, in_channels=5, out_channels=6, grid=GRID)
    out = model(torch.randn(3, 5, *GRID))
    assert out.shape == (3, 6, *GRID)
    assert out.dtype == torch.float32


@pytest.mark.parametrize(("name", "cfg"), CASES)
def test_periodic_in_longitude(name: str, cfg: dict) -> None:
    """Shifting the input along longitude shifts the output the same way (circular padding)."""
    model = build_model(name, cfg, 3, 2, GRID).eval()
    _randomise(model)
    x = torch.randn(2, 3, *GRID)
    shift = 2 ** cfg.get("depth", 0)  # the U-Net is equivariant to shifts of whole coarse cells
    with torch.no_grad():
        shifted = model(torch.roll(x, shift, dims=-1))
        expected = torch.roll(model(x), shift, dims=-1)
    torch.testing.assert_close(shifted, expected, rtol=1e-5, atol=1e-5)
    # Not periodic in latitude: the poles are edges.
    with torch.no_grad():
        assert not torch.allclose(
            model(torch.roll(x, 1, dims=-2)), torch.roll(model(x), 1, dims=-2)
        )


def test_fresh_model_is_its_linear_skip() -> None:
    for name, cfg in CASES:
        model = build_model(name, cfg, 3, 2, GRID)
        x = torch.randn(2, 3, *GRID)
        with torch.no_grad():
            torch.testing.assert_close(model(x), model.skip(x))


def test_unet_grid_must_divide() -> None:
    with pytest.raises(ValueError, match=r"models\.unet\.depth=3.*12 x 16"):
        build_model("unet", {"channels": 4, "depth": 3}, 3, 2, (12, 16))
    build_model("unet", {"channels": 4, "depth": 2}, 3, 2, (12, 16))  # 12 and 16 divide by 4


def test_unknown_model() -> None:
    with pytest.raises(ValueError, match="unknown model 'mlp'"):
        build_model("mlp", {}, 3, 2, GRID)


def _save(model: torch.nn.Module, path: Path, name: str, cfg: dict) -> dict:
    meta = {
        "in_channels": 5,
        "channels": [f"c{i}" for i in range(5)],
        "variables": ["t2m", "z500"],
        "leads": [1, 2, 3],
        "grid": list(GRID),
        "epoch": 4,
        "val_loss": 0.5,
        "train_config": {"epochs": 4},
        "seed": 0,
    }
    torch.save(model_file(model, name, cfg, meta), path)
    return meta


@pytest.mark.parametrize(("name", "cfg"), [CASES[1], CASES[2]])
def test_load_model_and_predict(tmp_path: Path, name: str, cfg: dict) -> None:
    model = build_model(name, cfg, 5, 6, GRID)
    _randomise(model)
    path = tmp_path / "model.pt"
    meta = _save(model, path, name, cfg)

    loaded, got = load_model(path)
    assert not loaded.training
    assert got["model"] == name and got["model_config"] == cfg
    assert {k: got[k] for k in meta} == meta
    assert "state_dict" not in got

    x = np.random.default_rng(0).standard_normal((7, 5, *GRID)).astype(np.float32)
    pred = predict(loaded, x, batch_size=3)
    assert pred.shape == (7, 3, 2, *GRID) and pred.dtype == np.float32
    with torch.no_grad():
        flat = model.eval()(torch.from_numpy(x)).numpy()
    # Lead-major: channel l * n_variables + v is (lead l, variable v), as in the targets.
    np.testing.assert_allclose(pred[:, 1, 0], flat[:, 2], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pred.reshape(7, 6, *GRID), flat, rtol=1e-4, atol=1e-5)
    assert predict(loaded, x[:0]).shape == (0, 3, 2, *GRID)


def test_missing_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "model.pt"
    with pytest.raises(ModelFileError, match=re.escape(str(path))):
        load_model(path)


def test_corrupt_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(b"this is not a torch checkpoint")
    with pytest.raises(ModelFileError, match=re.escape(f"cannot read model checkpoint {path}")):
        load_model(path)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    model = build_model("cnn", {"channels": 4, "layers": 2}, 5, 6, GRID)
    path = tmp_path / "model.pt"
    _save(model, path, "cnn", {"channels": 4, "layers": 2})
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelFileError, match=re.escape(str(path))):
        load_model(path)


def test_checkpoint_without_required_keys(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"model": "cnn"}, path)
    with pytest.raises(ModelFileError, match=r"lacks \['model_config'"):
        load_model(path)

"""The built-in synthetic dataset: a lazy, deterministic, chunk-independent Dask Dataset.

Each field is ``x(t, lat, lon) = base(lat) + season(lat, doy(t)) + s_v * a_v(t, lat, lon)``,
with ``a_v`` a stochastic advection-diffusion anomaly whose exact one-day optimal forecast is
known, so trained models have real skill to find.

- :mod:`hpcpipe.generate.fields`: the fields and their parameters (no NumPy, xarray or Dask:
  config validation imports the names, and Snakemake validates the config in every job).
- :mod:`hpcpipe.generate.spectral`: the spectral model and its noise streams.
- :mod:`hpcpipe.generate.dataset`: the Dataset, its grid, calendar and mean state.

``generate_dataset`` is importable from here; it loads xarray and Dask only when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpcpipe.generate.fields import FIELDS

if TYPE_CHECKING:
    from hpcpipe.generate.dataset import generate_dataset

__all__ = ["FIELDS", "generate_dataset"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the package (for the field names) stays free of xarray's second.
    if name == "generate_dataset":
        from hpcpipe.generate.dataset import generate_dataset

        return generate_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

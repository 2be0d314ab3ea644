"""Longitude rules: global or regional grids, boxes across 0° or 180°, cyclic points.

A grid is *global* when its longitudes cover the globe (the span plus one spacing is 360°,
within half a spacing); it is then periodic in longitude and stored in [0, 360). Any other
grid is a *regional* box: not periodic (models pad it with zeros, gradients take one-sided
differences at its edges), and kept contiguous in its own frame: a box from -80° to 40° stays
-80..40 rather than becoming 0..40 then 280..357.5 with a seam inside the field. A box that
does not cross 0° keeps its values in [0, 360); one that does starts below 0.

A cyclic point (the first longitude repeated 360° later, common in files made for plotting)
is dropped, with a log line, in either frame; longitudes spanning more than 360° are refused.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcpipe.contracts import DatasetError

if TYPE_CHECKING:
    import xarray as xr

log = logging.getLogger("hpcpipe.grid")
MIN_LON = -360.0  # the lowest longitude a stored (regional) grid may start at
GRIDS = ("global", "regional")


def is_global(lon: np.ndarray) -> bool:
    """Whether longitudes ``lon`` (degrees, any frame) cover the globe: no gap between
    neighbours, round the circle, wider than 1.5 spacings."""
    w = np.sort(np.mod(np.asarray(lon, dtype=np.float64), 360.0))
    if w.size < 2:
        return False
    gaps = np.diff(np.concatenate([w, w[:1] + 360.0]))
    return bool(gaps.max() <= 1.5 * np.median(gaps))


def kind(ds: xr.Dataset) -> str:
    """ "global" or "regional": as recorded in the store's attrs, else from its longitudes."""
    recorded = ds.attrs.get("grid")
    if recorded in GRIDS:
        return str(recorded)
    return "global" if is_global(ds["lon"].values) else "regional"


def _drop_cyclic_point(ds: xr.Dataset, lon: np.ndarray, name: str) -> xr.Dataset:
    if lon.size > 2 and np.isclose(lon[-1] - lon[0], 360.0):
        log.info(
            "%s: longitude %g repeats %g (a cyclic point, 360 degrees on); dropping it",
            name, lon[-1], lon[0],
        )  # fmt: skip
        return ds.isel(lon=slice(0, -1))
    return ds


def _regional_frame(wrapped: np.ndarray) -> np.ndarray:
    """Contiguous longitudes of a box given in [0, 360): start after the widest gap."""
    w = np.sort(wrapped)
    gaps = np.diff(np.concatenate([w, w[:1] + 360.0]))
    start = w[(int(np.argmax(gaps)) + 1) % w.size]
    out = start + np.mod(wrapped - start, 360.0)
    return out - 360.0 if out.max() >= 360.0 else out


def normalise_lon(ds: xr.Dataset, name: str) -> xr.Dataset:
    """Longitudes ascending and in the frame of the rules above; ``attrs["grid"]`` set."""
    lon = np.asarray(ds["lon"].values, dtype=np.float64)
    if lon.ndim != 1 or not np.all(np.isfinite(lon)):
        raise DatasetError(f"{name}: longitude must be 1-D finite degrees east")
    ds = ds.isel(lon=np.argsort(lon, kind="stable"))
    lon = np.sort(lon)
    if lon.size > 1 and lon[-1] - lon[0] > 360.0 + 1e-6:
        raise DatasetError(
            f"{name}: longitudes span {lon[0]:g}..{lon[-1]:g}, more than 360 degrees; "
            "give one turn of the globe (a cyclic point at +360 is dropped)"
        )
    if np.any(np.diff(lon) == 0):
        raise DatasetError(f"{name}: duplicated longitudes")
    ds = _drop_cyclic_point(ds, lon, name)
    lon = np.asarray(ds["lon"].values, dtype=np.float64)
    wrapped = np.mod(lon, 360.0)
    if np.unique(wrapped).size != wrapped.size:
        raise DatasetError(f"{name}: duplicated longitudes (the same point 360 degrees apart)")
    grid = "global" if is_global(wrapped) else "regional"
    new = wrapped if grid == "global" else _regional_frame(wrapped)
    ds = ds.assign_coords(lon=new.astype(ds["lon"].dtype, copy=False)).sortby("lon")
    ds.attrs["grid"] = grid
    if grid == "regional":
        log.info("%s: a regional grid (lon %g..%g): not periodic", name, new.min(), new.max())
    return ds


def gradient_x(x: Any, periodic: bool) -> Any:
    """d/dx per grid cell along the last axis: centred, wrapping round a global grid, one-sided
    at the edges of a regional one."""
    if periodic:
        return 0.5 * (np.roll(x, -1, axis=-1) - np.roll(x, 1, axis=-1))
    if x.shape[-1] < 2:
        return np.zeros_like(x)
    return np.gradient(x, axis=-1)

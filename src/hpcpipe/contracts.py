"""Data contracts between steps: what each store must hold (docs/data-contracts.md).

The steps check what they read with these functions, and the tests check what the steps
write with the same ones, in the spirit of ``xarray.testing``.
"""

from __future__ import annotations


class DatasetError(ValueError):
    """The dataset cannot serve the pipeline; the message names the file and what is wrong."""

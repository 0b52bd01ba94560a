"""Seeded row samples: the rows a method scores when a table has more than it needs."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def sample_rows(n_rows: int, max_rows: int | None, random_state: int
                ) -> npt.NDArray[np.int64]:
    """Row indices [k] int64, in file order: all ``n_rows`` rows when ``max_rows`` is None
    or at least ``n_rows``, else ``max_rows`` distinct rows drawn with the seed."""
    if max_rows is None or max_rows >= n_rows:
        return np.arange(n_rows, dtype=np.int64)
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n_rows, size=max_rows, replace=False)).astype(np.int64)

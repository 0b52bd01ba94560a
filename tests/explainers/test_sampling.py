"""explainers.sampling.sample_rows against its definition, written with numpy."""

from __future__ import annotations

import numpy as np
import pytest

from explainers.sampling import sample_rows
from service.methods.inputs import sample_rows as reexported


def _definition(n_rows: int, max_rows: int | None, seed: int) -> np.ndarray:
    if max_rows is None or max_rows >= n_rows:
        return np.arange(n_rows, dtype=np.int64)
    chosen = np.random.default_rng(seed).choice(n_rows, size=max_rows, replace=False)
    return np.sort(chosen).astype(np.int64)


@pytest.mark.parametrize(("n_rows", "max_rows", "seed"), [
    (10, None, 0),      # no cap: every row
    (10, 10, 3),        # cap equal to the rows: every row, no draw
    (7, 50, 1),         # cap above the rows
    (1000, 37, 0),      # a real sample
    (1000, 37, 12345),  # another seed, another sample
    (5, 4, 7),
    (0, None, 0),
])
def test_sample_rows_is_the_seeded_sorted_draw(n_rows: int, max_rows: int | None,
                                               seed: int) -> None:
    got = sample_rows(n_rows, max_rows, seed)
    expected = _definition(n_rows, max_rows, seed)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


def test_sample_rows_is_distinct_rows_in_file_order() -> None:
    rows = sample_rows(10_000, 500, 42)
    assert len(np.unique(rows)) == 500
    assert np.all(np.diff(rows) > 0)
    assert rows.min() >= 0 and rows.max() < 10_000


def test_service_name_is_the_same_function() -> None:
    assert reexported is sample_rows

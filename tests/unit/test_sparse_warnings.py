"""SparseWarning: one line per interval, counting the ones held back."""

from __future__ import annotations

from jobworker.adapters.sparse_warnings import SparseWarning


def test_the_first_is_logged_then_one_per_interval_with_the_count_held_back() -> None:
    now = [100.0]
    warning = SparseWarning(60.0, clock=lambda: now[0])

    assert warning.due() == 0
    assert [warning.due() for _ in range(5)] == [None] * 5
    now[0] += 59.9
    assert warning.due() is None
    now[0] += 0.1
    assert warning.due() == 6
    assert warning.due() is None

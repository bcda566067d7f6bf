from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from jobworker.entrypoints.gc_tuning import YOUNG_THRESHOLD, settle_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_start_up_objects_are_frozen_and_later_cycles_still_collected() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    settle_heap()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    Node()  # an unreachable cycle made after start-up
    assert gc.collect() >= 1

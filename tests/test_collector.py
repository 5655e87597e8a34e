"""The garbage collector around loads and searches (collector.py)."""

from __future__ import annotations

import gc

import pytest

from sdvram.collector import long_lived, settle


@pytest.mark.parametrize("enabled", [True, False])
def test_a_load_runs_with_the_collector_paused_and_what_it_made_is_frozen(enabled: bool) -> None:
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        frozen = gc.get_freeze_count()
        with long_lived():
            assert not gc.isenabled()
            made = [[i] for i in range(1000)]  # containers the collector tracks
        assert gc.isenabled() is enabled  # as it was before
        assert gc.get_freeze_count() >= frozen + len(made)
        settle()
        assert gc.get_freeze_count() >= frozen + len(made)
    finally:
        gc.unfreeze()  # the test's objects go back to the collector
        (gc.enable if was else gc.disable)()


def test_a_load_that_fails_still_lets_the_collector_go_on() -> None:
    assert gc.isenabled()
    with pytest.raises(ImportError), long_lived():
        raise ImportError("a broken install")
    assert gc.isenabled()
    gc.unfreeze()

"""The kannuki pytest plugin (registered through the ``pytest11`` entry point).

Fixture ``kannuki_test_mode``: kannuki's test mode for one test. Every locker
uses an in-process table, no database is needed, and the table is cleared and
test mode turned off after the test. The fixture's value is
:mod:`kannuki.testing`, for ``simulate_lock_held`` and ``clear``::

    def test_report_skips_when_busy(kannuki_test_mode):
        kannuki_test_mode.simulate_lock_held("nightly-report")
        assert run_nightly_report() is None
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest


@pytest.fixture
def kannuki_test_mode() -> Iterator[ModuleType]:
    """kannuki test mode for this test: in-process locks, cleared and off afterwards."""
    from kannuki import testing

    testing.enable()
    try:
        yield testing
    finally:
        testing.disable()

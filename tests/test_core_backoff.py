"""Backoff schedules: shapes, bounds, jitter, seeding and bad input, on both twins."""

from __future__ import annotations

import math
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

KINDS = ("constant", "linear", "exponential")
JITTERS = ("none", "full", "decorrelated")

seconds = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


def test_schedules_without_jitter(core: ModuleType) -> None:
    """constant, linear and exponential give interval, interval*(n+1), interval*2**n, capped."""
    expect = {
        "constant": [0.1, 0.1, 0.1, 0.1, 0.1],
        "linear": [0.1, 0.2, 0.30000000000000004, 0.4, 0.5],
        "exponential": [0.1, 0.2, 0.4, 0.8, 1.0],
    }
    for kind, delays in expect.items():
        b = core.Backoff(kind, interval=0.1, cap=1.0, jitter="none")
        assert [b.next_delay() for _ in range(5)] == delays
        assert b.attempt == 5


def test_reset_starts_over(core: ModuleType) -> None:
    """reset() puts the attempt back to 0."""
    b = core.Backoff("exponential", interval=0.5, cap=100.0, jitter="none")
    assert [b.next_delay() for _ in range(3)] == [0.5, 1.0, 2.0]
    b.reset()
    assert b.attempt == 0
    assert b.next_delay() == 0.5


def test_remaining_clamps(core: ModuleType) -> None:
    """next_delay(remaining) never goes past the deadline, and 0 remaining gives 0."""
    b = core.Backoff("constant", interval=1.0, cap=1.0, jitter="none")
    assert b.next_delay(0.25) == 0.25
    assert b.next_delay(0) == 0.0
    assert b.next_delay(5) == 1.0
    assert b.next_delay(math.inf) == 1.0


def test_exponential_survives_huge_attempts(core: ModuleType) -> None:
    """Thousands of attempts stay at cap, no overflow."""
    b = core.Backoff("exponential", interval=1e-3, cap=3.0, jitter="none")
    b.attempt = 5000
    assert b.next_delay() == 3.0
    z = core.Backoff("exponential", interval=0.0, cap=0.0, jitter="none")
    z.attempt = 5000
    assert z.next_delay() == 0.0


def test_decorrelated_ignores_kind_and_stays_in_range(core: ModuleType) -> None:
    """Decorrelated jitter draws in [interval, cap] whatever the kind."""
    for kind in KINDS:
        b = core.Backoff(kind, interval=0.01, cap=0.5, jitter="decorrelated", seed=3)
        delays = [b.next_delay() for _ in range(200)]
        assert all(0.01 <= d <= 0.5 for d in delays)
        assert max(delays) > 0.1  # it does grow from interval
    a = core.Backoff("constant", interval=0.01, cap=0.5, jitter="decorrelated", seed=3)
    c = core.Backoff("exponential", interval=0.01, cap=0.5, jitter="decorrelated", seed=3)
    assert [a.next_delay() for _ in range(50)] == [c.next_delay() for _ in range(50)]


def test_seed_repeats_and_none_seeds_randomly(core: ModuleType) -> None:
    """The same seed gives the same delays; seed=None differs between instances."""
    first = core.Backoff(seed=99)
    second = core.Backoff(seed=99)
    assert [first.next_delay() for _ in range(20)] == [second.next_delay() for _ in range(20)]
    randoms = {tuple(core.Backoff(interval=1.0, cap=1.0).next_delay() for _ in range(3)) for _ in range(5)}
    assert len(randoms) == 5


def test_full_jitter_draws_below_value(core: ModuleType) -> None:
    """Full jitter is uniform in [0, value): below the value, not always the same."""
    b = core.Backoff("constant", interval=1.0, cap=1.0, jitter="full", seed=1)
    draws = [b.next_delay() for _ in range(500)]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert 0.35 < sum(draws) / len(draws) < 0.65


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    jitter=st.sampled_from(JITTERS),
    interval=seconds,
    extra=seconds,
    seed=st.integers(min_value=-(2**70), max_value=2**70),
    remaining=st.none() | seconds,
)
def test_bounds_property(
    core: ModuleType,
    kind: str,
    jitter: str,
    interval: float,
    extra: float,
    seed: int,
    remaining: float | None,
) -> None:
    """0 <= delay <= cap, and <= remaining when given, for any parameters."""
    cap = interval + extra
    b = core.Backoff(kind, interval=interval, cap=cap, jitter=jitter, seed=seed)
    for _ in range(30):
        d = b.next_delay(remaining)
        assert 0.0 <= d <= cap
        if remaining is not None:
            assert d <= remaining


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(KINDS), interval=seconds, extra=seconds)
def test_unjittered_schedules_are_monotone(
    core: ModuleType, kind: str, interval: float, extra: float
) -> None:
    """Without jitter the delays never shrink and end at cap at most."""
    b = core.Backoff(kind, interval=interval, cap=interval + extra, jitter="none")
    delays = [b.next_delay() for _ in range(60)]
    assert delays == sorted(delays)
    assert delays[0] == min(interval, interval + extra)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"kind": "fibonacci"}, ValueError, "kind"),
        ({"jitter": "some"}, ValueError, "jitter"),
        ({"interval": -0.1}, ValueError, "interval"),
        ({"interval": math.nan}, ValueError, "interval"),
        ({"interval": math.inf}, ValueError, "interval"),
        ({"interval": "1"}, TypeError, "interval"),
        ({"cap": -1.0}, ValueError, "cap"),
        ({"cap": math.nan}, ValueError, "cap"),
        ({"cap": math.inf}, ValueError, "cap"),
        ({"interval": 1.0, "cap": 0.5}, ValueError, "cap"),
        ({"seed": 1.5}, TypeError, "seed"),
    ],
)
def test_bad_construction(
    core: ModuleType, kwargs: dict[str, object], error: type[Exception], name: str
) -> None:
    """Each bad argument gets an error naming it."""
    with pytest.raises(error, match=name):
        core.Backoff(**kwargs)


def test_bad_kind_lists_the_allowed_names(core: ModuleType) -> None:
    """The message for an unknown kind / jitter lists the known ones."""
    with pytest.raises(ValueError, match="constant, linear, exponential"):
        core.Backoff(kind="x")
    with pytest.raises(ValueError, match="none, full, decorrelated"):
        core.Backoff(jitter="x")


@pytest.mark.parametrize(
    ("remaining", "error"), [(-1.0, ValueError), (math.nan, ValueError), ("1", TypeError)]
)
def test_bad_remaining(core: ModuleType, remaining: object, error: type[Exception]) -> None:
    """A negative / NaN / non-number remaining is refused, naming 'remaining', without counting an attempt."""
    b = core.Backoff()
    with pytest.raises(error, match="remaining"):
        b.next_delay(remaining)
    assert b.attempt == 0

"""The lagged extraction window: [end - lag - window, end - lag) in UTC, half-open."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pendulum
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.data.extract import Window, lagged_window
from flywheel.errors import WindowError

END = datetime(2026, 3, 2, tzinfo=UTC)
US = timedelta(microseconds=1)


def test_default_window_is_three_to_two_weeks_back():
    w = lagged_window(END)
    assert w == Window(datetime(2026, 2, 9, tzinfo=UTC), datetime(2026, 2, 16, tzinfo=UTC))
    assert w.days == 7.0
    assert w.start.tzinfo is UTC and w.end.tzinfo is UTC


def test_window_is_half_open():
    w = lagged_window(END)
    assert w.start in w
    assert (w.start - US) not in w
    assert (w.end - US) in w
    assert w.end not in w


def test_contains_compares_instants_across_zones():
    w = lagged_window(END)
    # 2026-02-16 00:00 UTC is 2026-02-15 19:00 in New York: the same (excluded) instant.
    assert w.end.astimezone(ZoneInfo("America/New_York")) not in w
    assert (w.end - US).astimezone(ZoneInfo("Asia/Kolkata")) in w
    assert w.start.astimezone(ZoneInfo("Asia/Kolkata")) in w


@pytest.mark.parametrize(
    "zone", ["America/New_York", "Asia/Kolkata", "Europe/London", "Australia/Lord_Howe"]
)
@pytest.mark.parametrize("kind", ["zoneinfo", "pendulum", "fixed_offset"])
def test_non_utc_input_gives_same_utc_instants(zone, kind):
    if kind == "zoneinfo":
        local = END.astimezone(ZoneInfo(zone))
    elif kind == "pendulum":
        local = pendulum.instance(END).in_timezone(zone)
    else:
        off = END.astimezone(ZoneInfo(zone)).utcoffset()
        local = END.astimezone(timezone(off))
    assert local.utcoffset() != timedelta(0) or zone == "Europe/London"
    w = lagged_window(local)
    assert w == lagged_window(END)
    assert w.start.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("zone", "local_end"),
    [
        # US DST began 2026-03-08: the window [end-21d, end-14d) straddles it.
        ("America/New_York", (2026, 3, 25)),
        # US DST ended 2025-11-02.
        ("America/New_York", (2025, 11, 19)),
        # EU DST began 2026-03-29.
        ("Europe/Berlin", (2026, 4, 15)),
    ],
)
@pytest.mark.parametrize("kind", ["zoneinfo", "pendulum"])
def test_dst_crossing_window_is_exactly_168_hours(zone, local_end, kind):
    if kind == "zoneinfo":
        end = datetime(*local_end, tzinfo=ZoneInfo(zone))
    else:
        end = pendulum.datetime(*local_end, tz=zone)
    w = lagged_window(end)
    assert w.end - w.start == timedelta(hours=168)
    assert w.end == datetime.fromtimestamp(end.timestamp(), tz=UTC) - timedelta(hours=14 * 24)
    # the start's local wall clock differs from the end's by an hour: the DST change is inside
    tz = ZoneInfo(zone)
    assert w.start.astimezone(tz).utcoffset() != w.end.astimezone(tz).utcoffset()


def test_ambiguous_local_time_uses_fold():
    first = datetime(2025, 11, 2, 1, 30, tzinfo=ZoneInfo("America/New_York"))
    second = first.replace(fold=1)
    assert lagged_window(second, lag_days=0).end - lagged_window(
        first, lag_days=0
    ).end == timedelta(hours=1)


def test_naive_datetime_raises():
    with pytest.raises(WindowError, match="no time zone"):
        lagged_window(datetime(2026, 3, 2))


@pytest.mark.parametrize("value", ["2026-03-02T00:00:00+00:00", None, 1772409600])
def test_non_datetime_raises(value):
    with pytest.raises(WindowError, match="must be a datetime"):
        lagged_window(value)


@pytest.mark.parametrize(("lag", "window"), [(-1, 7), (14, 0), (14, -7), (-3, 0)])
def test_bad_lag_or_window_raises(lag, window):
    with pytest.raises(WindowError):
        lagged_window(END, lag_days=lag, window_days=window)


def test_lag_zero_ends_at_end():
    w = lagged_window(END, lag_days=0, window_days=1)
    assert w.end == END and w.start == END - timedelta(days=1)
    assert END not in w


def test_days_property():
    assert lagged_window(END, lag_days=3, window_days=30).days == 30.0


_ZONES = st.sampled_from(
    [
        "UTC",
        "America/New_York",
        "Asia/Kolkata",
        "Europe/Berlin",
        "Australia/Lord_Howe",
        "Pacific/Chatham",
        "America/St_Johns",
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    end=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.timezones()
    ),
    lag=st.integers(0, 120),
    window=st.integers(1, 60),
)
def test_property_window_arithmetic(end, lag, window):
    w = lagged_window(end, lag_days=lag, window_days=window)
    assert w.end - w.start == timedelta(days=window)
    assert w.end == end.astimezone(UTC) - timedelta(days=lag)
    assert w.start.utcoffset() == timedelta(0)
    assert w.start in w and w.end not in w


@settings(max_examples=100, deadline=None)
@given(
    end=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    zone=_ZONES,
    lag=st.integers(0, 30),
)
def test_property_zone_does_not_matter(end, zone, lag):
    assert lagged_window(end.astimezone(ZoneInfo(zone)), lag_days=lag) == lagged_window(
        end, lag_days=lag
    )


@settings(max_examples=100, deadline=None)
@given(
    end=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
    ),
    offset=st.timedeltas(min_value=timedelta(days=-60), max_value=timedelta(days=60)),
)
def test_property_membership_matches_bounds(end, offset):
    w = lagged_window(end)
    ts = end + offset
    assert (ts in w) == (w.start <= ts < w.end)
    assert (ts in w) == (-timedelta(days=21) <= offset < -timedelta(days=14))


def test_far_future_end_keeps_microseconds():
    end = datetime(3000, 5, 17, 3, 4, 5, 123457, tzinfo=UTC)
    assert lagged_window(end, lag_days=0).end == end

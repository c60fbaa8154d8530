"""Windows: which window a timestamp falls in, its key, start and reset (issue 11).

Unix seconds for the cases below were worked out by hand from the zone rules
(America/New_York: EST -5, EDT -4; Europe/Berlin: CET +1, CEST +2; Asia/Tokyo
+9, no DST) and are written out so a wrong zone table cannot agree with itself.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone, tzinfo

import pytest
from hypothesis import given, settings, strategies as st

from chio_budget.errors import WindowError
from chio_budget.windows import (
    ALL_TIME_WINDOW, BUCKETS_PER_WINDOW, Window, _first_second, bucket_seconds, check_timezone, parse_window, span,
)

DAILY, WEEKLY, MONTHLY = Window("daily"), Window("weekly"), Window("monthly")
NY, BERLIN, TOKYO = "America/New_York", "Europe/Berlin", "Asia/Tokyo"
HOUR, DAY = 3600, 86400


def utc(*args: int) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp())


# -- calendar windows ----------------------------------------------------------------


def test_all_time_is_the_empty_key():
    s = span(ALL_TIME_WINDOW, 1000)
    assert (s.key, s.start, s.resets_at, s.reads) == ("", None, None, ())


def test_dst_start_day_has_23_hours_in_new_york():
    # 2026-03-08: 02:00 EST -> 03:00 EDT. Midnight is EST (05:00Z), the next EDT (04:00Z).
    s = span(DAILY, utc(2026, 3, 8, 12), NY)
    assert s.key == "d:2026-03-08@America/New_York"
    assert (s.start, s.resets_at) == (utc(2026, 3, 8, 5), utc(2026, 3, 9, 4))
    assert s.resets_at - s.start == 23 * HOUR


def test_dst_end_day_has_25_hours_in_new_york():
    # 2026-11-01: 02:00 EDT -> 01:00 EST.
    s = span(DAILY, utc(2026, 11, 1, 12), NY)
    assert s.key == "d:2026-11-01@America/New_York"
    assert (s.start, s.resets_at) == (utc(2026, 11, 1, 4), utc(2026, 11, 2, 5))
    assert s.resets_at - s.start == 25 * HOUR


def test_the_repeated_hour_belongs_to_its_day():
    # 01:30 EDT and 01:30 EST on 2026-11-01 are an hour apart, one day.
    first, second = utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 6, 30)
    assert span(DAILY, first, NY).key == span(DAILY, second, NY).key == "d:2026-11-01@America/New_York"


@pytest.mark.parametrize("window, before, at", [
    (DAILY, "d:2026-03-07@America/New_York", "d:2026-03-08@America/New_York"),
    (WEEKLY, "w:2026-03-02@America/New_York", "w:2026-03-09@America/New_York"),
])
def test_one_second_before_and_at_the_boundary(window, before, at):
    # Monday 2026-03-09 00:00 EDT = 04:00Z; Sunday 2026-03-08 00:00 EST = 05:00Z.
    boundary = utc(2026, 3, 9, 4) if window is WEEKLY else utc(2026, 3, 8, 5)
    a, b = span(window, boundary - 1, NY), span(window, boundary, NY)
    assert (a.key, b.key) == (before, at)
    assert a.resets_at == b.start == boundary


def test_month_end_january_31_to_february_1():
    boundary = utc(2026, 1, 31, 23)  # 2026-02-01 00:00 CET
    jan, feb = span(MONTHLY, boundary - 1, BERLIN), span(MONTHLY, boundary, BERLIN)
    assert (jan.key, feb.key) == ("m:2026-01@Europe/Berlin", "m:2026-02@Europe/Berlin")
    assert (jan.start, jan.resets_at, feb.start) == (utc(2025, 12, 31, 23), boundary, boundary)
    assert span(DAILY, boundary - 1, BERLIN).key == "d:2026-01-31@Europe/Berlin"
    assert span(DAILY, boundary, BERLIN).key == "d:2026-02-01@Europe/Berlin"


def test_month_across_dst_resets_at_local_midnight():
    # March 2026 in Berlin: starts in CET (23:00Z), ends in CEST (22:00Z).
    s = span(MONTHLY, utc(2026, 3, 15), BERLIN)
    assert (s.start, s.resets_at) == (utc(2026, 2, 28, 23), utc(2026, 3, 31, 22))


def test_december_resets_on_january_1():
    s = span(MONTHLY, utc(2026, 12, 31, 23, 59, 59), "UTC")
    assert (s.key, s.resets_at) == ("m:2026-12@UTC", utc(2027, 1, 1))


def test_leap_day_2028():
    s = span(DAILY, utc(2028, 2, 29, 12), "UTC")
    assert (s.key, s.start, s.resets_at) == ("d:2028-02-29@UTC", utc(2028, 2, 29), utc(2028, 3, 1))
    m = span(MONTHLY, utc(2028, 2, 29, 12), "UTC")
    assert (m.key, m.resets_at - m.start) == ("m:2028-02@UTC", 29 * DAY)
    assert span(DAILY, utc(2028, 3, 1), "UTC").key == "d:2028-03-01@UTC"


def test_weekly_east_of_utc_starts_monday_local():
    # Monday 2026-03-09 00:00 JST is Sunday 2026-03-08 15:00Z.
    boundary = utc(2026, 3, 8, 15)
    before, at = span(WEEKLY, boundary - 1, TOKYO), span(WEEKLY, boundary, TOKYO)
    assert (before.key, at.key) == ("w:2026-03-02@Asia/Tokyo", "w:2026-03-09@Asia/Tokyo")
    assert (at.start, at.resets_at) == (boundary, boundary + 7 * DAY)
    # In UTC the same instant is still Sunday: the week has not turned.
    assert span(WEEKLY, boundary, "UTC").key == "w:2026-03-02@UTC"


def test_weekly_across_the_date_line():
    # Pacific/Kiritimati is UTC+14: its Monday starts Sunday 10:00Z.
    assert span(WEEKLY, utc(2026, 3, 8, 10), "Pacific/Kiritimati").key == "w:2026-03-09@Pacific/Kiritimati"
    assert span(WEEKLY, utc(2026, 3, 8, 10) - 1, "Pacific/Kiritimati").key == "w:2026-03-02@Pacific/Kiritimati"


def test_midnight_that_does_not_exist_starts_the_day_at_the_jump():
    # Cairo 2026-04-24: 00:00 EET -> 01:00 EEST (22:00Z). The day starts at the jump.
    s = span(DAILY, utc(2026, 4, 24, 12), "Africa/Cairo")
    assert (s.key, s.start) == ("d:2026-04-24@Africa/Cairo", utc(2026, 4, 23, 22))
    assert span(DAILY, s.start - 1, "Africa/Cairo").resets_at == s.start


def test_clocks_back_across_midnight_stay_in_the_new_day():
    # Goose Bay 1987-10-25 00:01 ADDT -> 1987-10-24 23:01 AST: the instants after the jump
    # read "24th" on the wall clock but come after the 25th began.
    jump = 562129260
    s = span(DAILY, jump, "America/Goose_Bay")
    assert s.key == "d:1987-10-25@America/Goose_Bay"
    assert s.start <= jump < s.resets_at


def test_a_skipped_day_is_an_empty_window():
    # Samoa skipped 2011-12-30: the 29th ends where the 31st begins.
    z = "Pacific/Apia"
    last29 = span(DAILY, utc(2011, 12, 30, 9, 59, 59), z)
    first31 = span(DAILY, utc(2011, 12, 30, 10), z)
    assert (last29.key, first31.key) == ("d:2011-12-29@Pacific/Apia", "d:2011-12-31@Pacific/Apia")
    assert last29.resets_at == first31.start


class _GapBeforeMidnight(tzinfo):
    """A zone whose clocks jump 23:30 -> 00:30 on 2030-01-01 (none in the real tables does)."""

    jump = utc(2030, 1, 1, 23, 30)  # 23:30 local at +0

    def utcoffset(self, dt):
        naive = dt.replace(tzinfo=None, fold=0)
        gap_start, gap_end = datetime(2030, 1, 1, 23, 30), datetime(2030, 1, 2, 0, 30)
        if naive < gap_start or (naive < gap_end and dt.fold == 0):
            return timedelta(0)
        return timedelta(hours=1)

    def dst(self, dt):
        return timedelta(0)

    def fromutc(self, dt):
        t = int(dt.replace(tzinfo=timezone.utc).timestamp())
        return dt + (timedelta(0) if t < self.jump else timedelta(hours=1))


def test_gap_that_starts_before_midnight_starts_the_day_at_the_jump():
    z = _GapBeforeMidnight()
    assert _first_second(date(2030, 1, 2), z) == _GapBeforeMidnight.jump
    assert _first_second(date(2030, 1, 1), z) == utc(2030, 1, 1)


def test_timestamp_past_year_9999_is_a_window_error():
    with pytest.raises(WindowError, match="milliseconds"):
        span(DAILY, 1772964000 * 1000, "UTC")
    assert span(ALL_TIME_WINDOW, 2**64 - 1).key == ""


# every zone, random instants: the window holds the instant and starts at the first
# second of its local period.

_ZONES = sorted({NY, BERLIN, TOKYO, "UTC", "Africa/Cairo", "America/Goose_Bay", "Australia/Lord_Howe",
                 "Pacific/Apia", "Pacific/Chatham", "America/Sao_Paulo", "Asia/Kolkata", "Europe/London"})


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_ZONES), st.sampled_from([DAILY, WEEKLY, MONTHLY]),
       st.integers(0, utc(2040, 1, 1)))
def test_calendar_window_holds_its_instant_and_starts_at_local_midnight(tz, window, t):
    s = span(window, t, tz)
    assert s.start <= t < s.resets_at
    nxt = span(window, s.resets_at, tz)
    assert nxt.start == s.resets_at and nxt.key != s.key
    label = s.key.split(":", 1)[1].split("@")[0]
    first = date.fromisoformat(label if window is not MONTHLY else label + "-01")
    assert _first_second(first, _zone(tz)) == s.start
    if window is WEEKLY:
        assert first.weekday() == 0
    if window is MONTHLY:
        assert first.day == 1


def _zone(tz):
    from chio_budget.windows import zone
    return zone(tz)


# -- rolling windows -----------------------------------------------------------------


@pytest.mark.parametrize("seconds, bucket", [
    (1, 1), (60, 1), (61, 2), (3600, 60), (86400, 1800), (7 * DAY, 10800), (30 * DAY, 43200),
    (60 * DAY, 86400), (365 * DAY, 7 * DAY),
])
def test_bucket_sizes(seconds, bucket):
    assert bucket_seconds(seconds) == bucket
    assert -(-seconds // bucket) <= BUCKETS_PER_WINDOW


def test_rolling_window_keys_and_reset():
    s = span(Window("rolling", 3600), 1772964000)
    assert s.key == "r:60:1772964000"
    assert len(s.reads) == 60 and s.reads[0] == "r:60:1772960400"
    assert s.start == 1772960400
    # The request's bucket [..000, ..059] leaves when its last second does: 059 + 3600.
    assert s.resets_at == 1772964059 + 3600


def test_rolling_window_never_reads_before_the_epoch():
    s = span(Window("rolling", 3600), 30)
    assert (s.key, s.reads, s.start) == ("r:60:0", (), 0)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([1, 7, 60, 61, 3600, 5000, 86400]),
       st.lists(st.tuples(st.integers(0, 400_000), st.integers(1, 1000)), max_size=40),
       st.integers(0, 400_000))
def test_rolling_buckets_never_under_count_and_over_count_at_most_a_bucket(seconds, spends, now):
    """Counted at `now`: every spend in (now - W, now], plus at most the spend of the
    bucket - 1 seconds before the window; spend after `now` is never counted."""
    w = Window("rolling", seconds)
    b = w.bucket_seconds
    buckets: dict[str, int] = {}
    for at, units in spends:
        key = span(w, at).key
        buckets[key] = buckets.get(key, 0) + units
    s = span(w, now)
    counted = sum(buckets.get(k, 0) for k in (*s.reads, s.key))
    exact = sum(u for at, u in spends if now - seconds < at <= now)
    bound = sum(u for at, u in spends if now - seconds - b + 1 < at <= now)
    later_in_bucket = sum(u for at, u in spends if now < at and span(w, at).key == s.key)
    assert exact <= counted - later_in_bucket <= bound


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([1, 60, 3600, 86400]), st.integers(0, 10**10))
def test_rolling_resets_at_is_when_everything_counted_now_has_left(seconds, now):
    w = Window("rolling", seconds)
    s = span(w, now)
    counted = {*s.reads, s.key}
    assert not counted & {*span(w, s.resets_at).reads, span(w, s.resets_at).key}
    assert s.key in {*span(w, s.resets_at - 1).reads, span(w, s.resets_at - 1).key}


# -- parsing -------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("daily", Window("daily")), ("all_time", ALL_TIME_WINDOW), ({"rolling": 90}, Window("rolling", 90)),
])
def test_parse_window(value, expected):
    assert parse_window(value) == expected


@pytest.mark.parametrize("value, message", [
    ("hourly", "unknown window 'hourly'"),
    ("rolling", "needs its length"),
    ({"rolling": 0}, "must be > 0 seconds, got 0"),
    ({"rolling": -5}, "must be > 0 seconds, got -5"),
    ({"rolling": 1.5}, "whole number of seconds"),
    ({"rolling": True}, "whole number of seconds"),
    ({"rolling": 10**12}, "ten years"),
    ({"daily": 1}, "must be {rolling: SECONDS}"),
    (3, "must be a window name"),
])
def test_bad_windows(value, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("(", r"\(")):
        parse_window(value)


@pytest.mark.parametrize("name", ["Europe/Berlin", "UTC", "America/Argentina/Buenos_Aires", "Etc/GMT+5"])
def test_good_timezones(name):
    assert check_timezone(name) == name


@pytest.mark.parametrize("name", ["Mars/Olympus", "europe/berlin", "../etc/passwd", "", "/etc/localtime", 5,
                                  "Europe/Berlin/", "localtime"])
def test_bad_timezones(name):
    with pytest.raises(ValueError):
        check_timezone(name)

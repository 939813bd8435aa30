"""Next-run computation and schedule validation (pure functions, no processes)."""

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from cron.schedule import ScheduleError, schedule_parse

UTC = timezone.utc
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def cron(expr: str, tz: str = "UTC"):
    return schedule_parse({"kind": "cron", "expr": expr, "tz": tz}, now=NOW)


def occurrences(schedule, start: datetime, count: int) -> list[datetime]:
    out, moment = [], start
    for _ in range(count):
        moment = schedule.next_after(moment)
        out.append(moment)
    return out


def local(moments, tz: str) -> list[str]:
    return [m.astimezone(ZoneInfo(tz)).strftime("%m-%d %H:%M %Z") for m in moments]


# --- at (seed cases 1-3) --------------------------------------------------------------------------------------


def test_at_runs_once_at_its_instant():
    at = schedule_parse({"kind": "at", "at": "2026-01-15T12:00:10Z"}, now=NOW)
    assert at.next_after(NOW) == utc(2026, 1, 15, 12, 0, 10)
    assert at.next_after(utc(2026, 1, 15, 12, 0, 10)) is None  # exactly at it: nothing left
    assert at.next_after(utc(2026, 1, 16)) is None


def test_at_without_offset_is_read_in_its_zone_and_relative_delays_work():
    at = schedule_parse({"kind": "at", "at": "2026-07-01T09:00", "tz": "Europe/Berlin"}, now=NOW)
    assert at.at == utc(2026, 7, 1, 7, 0)
    assert schedule_parse({"kind": "at", "at": "20m"}, now=NOW).at == NOW + timedelta(minutes=20)
    assert schedule_parse("at 2026-02-01T00:00:00Z", now=NOW).at == utc(2026, 2, 1)


@pytest.mark.parametrize("value", ["2026-01-15T11:59:59Z", "2026-01-15T12:00:00Z", "2020-02-29T00:00:00+01:00"])
def test_at_in_the_past_is_refused(value):
    with pytest.raises(ScheduleError, match="in the past") as err:
        schedule_parse({"kind": "at", "at": value}, now=NOW)
    assert err.value.field == "at"


# --- every (seed cases 4-7, 25) ------------------------------------------------------------------------------


def every(text, anchor):
    return schedule_parse({"kind": "every", "every": text, "anchor": anchor}, now=NOW)


def test_every_runs_on_the_anchor_grid():
    anchor = utc(2026, 1, 1)
    minute = every("1m", anchor.isoformat())
    assert minute.next_after(anchor + timedelta(seconds=150)) == anchor + timedelta(seconds=180)
    assert minute.next_after(anchor - timedelta(seconds=10)) == anchor  # before the anchor: the anchor
    assert minute.next_after(anchor + timedelta(minutes=5)) == anchor + timedelta(minutes=6)  # on a tick: the next
    hourly = every("1h", "1970-01-01T00:00:00Z")
    assert hourly.next_after(NOW + timedelta(seconds=1)) == utc(2026, 1, 15, 13)


def test_every_without_anchor_starts_from_now():
    schedule = schedule_parse({"kind": "every", "every": "15m"}, now=NOW + timedelta(microseconds=5))
    assert schedule.anchor == NOW
    assert schedule.next_after(NOW + timedelta(seconds=1)) == NOW + timedelta(minutes=15)


@pytest.mark.parametrize(
    "text, seconds",
    [("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("1h 30m", 5400),
     ("90 minutes", 5400), ("1.5h", 5400), ("PT15M", 900), ("P1DT2H", 93600), ("1w", 604800), (45, 45)],
)
def test_every_accepts_the_usual_spellings(text, seconds):
    assert schedule_parse({"kind": "every", "every": text}, now=NOW).seconds == seconds


def test_every_shows_a_canonical_interval():
    assert schedule_parse({"kind": "every", "every": "90 minutes"}, now=NOW).as_dict()["every"] == "1h30m"


@pytest.mark.parametrize(
    "text, message",
    [("0s", "between 1s and 3650d"), ("0m", "between"), ("3651d", "between 1s and 3650d"), (float("inf"), "finite"),
     ("", "empty"), ("10", "Cannot read"), ("5 parsecs", "Unknown unit"), ("0.5s", "whole number"), ("-5m", "Cannot read")],
)
def test_every_refuses_bad_intervals(text, message):
    with pytest.raises(ScheduleError, match=message) as err:
        schedule_parse({"kind": "every", "every": text}, now=NOW)
    assert err.value.field == "every"


# --- cron (seed cases 8-11) ----------------------------------------------------------------------------------


def test_cron_basics():
    assert cron("0 * * * *").next_after(NOW) == utc(2026, 1, 15, 13)
    assert cron("0 9 * * *").next_after(NOW) == utc(2026, 1, 16, 9)
    assert cron("*/15 * * * *").next_after(utc(2026, 1, 15, 12, 14, 59)) == utc(2026, 1, 15, 12, 15)
    assert cron("0 0 * * *", "America/New_York").next_after(NOW) == utc(2026, 1, 16, 5)  # midnight EST


def test_cron_lists_ranges_steps_and_names():
    weekdays = cron("30 8-18/5 * JAN-mar mon-FRI", "Europe/Berlin")
    assert local(occurrences(weekdays, utc(2026, 1, 16, 12), 4), "Europe/Berlin") == [
        "01-16 13:30 CET", "01-16 18:30 CET", "01-19 08:30 CET", "01-19 13:30 CET",
    ]
    assert occurrences(cron("0 12 1,15 * *"), NOW, 2) == [utc(2026, 2, 1, 12), utc(2026, 2, 15, 12)]
    assert cron("0 0 * * 7").next_after(NOW) == cron("0 0 * * SUN").next_after(NOW) == utc(2026, 1, 18)
    assert cron("0 0 * * FRI-SUN").next_after(NOW) == utc(2026, 1, 16)
    assert cron("5/20 * * * *").next_after(utc(2026, 1, 15, 12, 30)) == utc(2026, 1, 15, 12, 45)


def test_cron_day_of_month_or_day_of_week_when_both_are_given():
    # Like Vixie cron: the 1st of the month OR any Monday.
    assert occurrences(cron("0 9 1 * MON"), utc(2026, 5, 30), 3) == [
        utc(2026, 6, 1, 9), utc(2026, 6, 8, 9), utc(2026, 6, 15, 9),
    ]


def test_cron_macros():
    assert cron("@daily", "Europe/Berlin").next_after(NOW) == utc(2026, 1, 15, 23)
    assert cron("@hourly").next_after(NOW) == utc(2026, 1, 15, 13)
    assert cron("@weekly").next_after(NOW) == utc(2026, 1, 18)
    assert cron("@yearly").next_after(NOW) == utc(2027, 1, 1)


def test_leap_day_jobs_run_only_on_29_february():
    assert occurrences(cron("0 0 29 2 *"), NOW, 3) == [utc(2028, 2, 29), utc(2032, 2, 29), utc(2036, 2, 29)]
    # 2100 is not a leap year: eight years between two runs.
    assert cron("0 0 29 2 *").next_after(utc(2096, 3, 1)) == utc(2104, 2, 29)
    assert cron("30 23 28-29 2 *", "America/New_York").next_after(utc(2028, 2, 29, 4, 31)) == utc(2028, 3, 1, 4, 30)
    assert cron("0 0 31 * *").next_after(utc(2026, 1, 31, 1)) == utc(2026, 3, 31)


# --- daylight-saving changes ----------------------------------------------------------------------------------


def test_berlin_spring_forward_fixed_time_runs_when_the_clock_jumps():
    # 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 does not exist that day.
    runs = occurrences(cron("30 2 * * *", "Europe/Berlin"), utc(2026, 3, 27, 12), 3)
    assert local(runs, "Europe/Berlin") == ["03-28 02:30 CET", "03-29 03:00 CEST", "03-30 02:30 CEST"]
    assert runs[1] == utc(2026, 3, 29, 1)


def test_berlin_spring_forward_hourly_job_follows_elapsed_time():
    runs = occurrences(cron("30 * * * *", "Europe/Berlin"), utc(2026, 3, 28, 23), 3)
    assert [r.strftime("%H:%M") for r in runs] == ["23:30", "00:30", "01:30"]  # one hour apart in UTC
    assert local(runs, "Europe/Berlin") == ["03-29 00:30 CET", "03-29 01:30 CET", "03-29 03:30 CEST"]


def test_berlin_fall_back_fixed_time_runs_once_and_hourly_runs_twice():
    # 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 happens twice.
    daily = occurrences(cron("30 2 * * *", "Europe/Berlin"), utc(2026, 10, 24, 12), 2)
    assert local(daily, "Europe/Berlin") == ["10-25 02:30 CEST", "10-26 02:30 CET"]
    hourly = occurrences(cron("30 * * * *", "Europe/Berlin"), utc(2026, 10, 24, 23), 4)
    assert local(hourly, "Europe/Berlin") == [
        "10-25 01:30 CEST", "10-25 02:30 CEST", "10-25 02:30 CET", "10-25 03:30 CET",
    ]
    assert all(b - a == timedelta(hours=1) for a, b in zip(hourly, hourly[1:]))


def test_new_york_transitions():
    # 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST.
    spring = occurrences(cron("0 2 * * *", "America/New_York"), utc(2026, 3, 7), 3)
    assert local(spring, "America/New_York") == ["03-07 02:00 EST", "03-08 03:00 EDT", "03-09 02:00 EDT"]
    fall = occurrences(cron("30 1 * * *", "America/New_York"), utc(2026, 10, 31, 12), 2)
    assert local(fall, "America/New_York") == ["11-01 01:30 EDT", "11-02 01:30 EST"]
    quarter = occurrences(cron("*/30 * * * *", "America/New_York"), utc(2026, 11, 1, 4, 59), 4)
    assert local(quarter, "America/New_York") == ["11-01 01:00 EDT", "11-01 01:30 EDT", "11-01 01:00 EST", "11-01 01:30 EST"]


def test_fixed_time_in_a_skipped_hour_runs_once_even_with_several_minutes():
    runs = occurrences(cron("0,15,45 2 * * *", "Europe/Berlin"), utc(2026, 3, 29, 0), 2)
    assert local(runs, "Europe/Berlin") == ["03-29 03:00 CEST", "03-30 02:00 CEST"]


def test_next_runs_are_strictly_increasing_through_a_whole_year_of_dst():
    for tz in ("Europe/Berlin", "America/New_York", "Australia/Lord_Howe"):
        for expr in ("*/20 * * * *", "30 2 * * *", "0 */3 * * *"):
            runs = occurrences(cron(expr, tz), utc(2026, 1, 1), 500 if expr.startswith("*/20") else 200)
            assert all(b > a for a, b in zip(runs, runs[1:])), (tz, expr)


# --- validation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, message",
    [
        ("61 * * * *", "minute field: 61 is out of range 0-59"),
        ("* 24 * * *", "hour field: 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month field: 0 is out of range 1-31"),
        ("* * * 13 *", "month field: 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week field: 8 is out of range 0-7"),
        ("* * * * FUNDAY", "day-of-week field: 'FUNDAY' is not a number"),
        ("*/0 * * * *", "step '0' must be a positive number"),
        ("30-10 * * * *", "range '30-10' goes backwards"),
        ("* * * *", "has 4"),
        ("0 0 * * * 2026", "has 6"),
        ("0 0 30 2 *", "never matches a real date"),
        ("0 9 L * *", "L, W or #"),
        ("0 9 * * MON#2", "L, W or #"),
        ("@reboot", "@reboot is not a schedule"),
        ("@fortnightly", "Unknown macro"),
        ("invalid", "has 1"),
        ("1,,2 * * * *", "empty list item"),
    ],
)
def test_bad_cron_expressions_are_refused_with_the_reason(expr, message):
    with pytest.raises(ScheduleError) as err:
        cron(expr)
    assert message in err.value.message and err.value.field == "expr"


def test_time_zones_are_checked_and_matched_case_insensitively():
    assert cron("0 9 * * *", "europe/berlin").tz == "Europe/Berlin"
    with pytest.raises(ScheduleError, match="Unknown time zone 'Mars/Olympus'") as err:
        cron("0 9 * * *", "Mars/Olympus")
    assert err.value.field == "tz"


def test_schedule_objects_are_checked():
    with pytest.raises(ScheduleError, match="'kind' must be one of") as err:
        schedule_parse({"kind": "sometimes"}, now=NOW)
    assert err.value.field == "kind"
    with pytest.raises(ScheduleError, match="did you mean 'tz'") as err:
        schedule_parse({"kind": "cron", "expr": "0 9 * * *", "timezone": "UTC"}, now=NOW)
    with pytest.raises(ScheduleError, match="needs 'expr'"):
        schedule_parse({"kind": "cron"}, now=NOW)
    assert schedule_parse("*/5 * * * *", now=NOW).as_dict() == {"kind": "cron", "expr": "*/5 * * * *", "tz": "UTC"}
    assert schedule_parse("every 1h30m", now=NOW).seconds == 5400

"""Schedules: parsing what people write, and computing when a job runs next.

Three kinds (docs/cron.md has the user-facing rules):

- `at`: one instant (ISO 8601; a time without offset is read in `tz`, default UTC; or a duration from now
  such as `20m`).
- `every`: a fixed interval (`30s`, `15m`, `1h30m`, `1d`, `90 minutes`, ISO `PT15M`) on a grid that starts at
  `anchor` (default: when the job was created): runs at anchor + k * interval, k >= 0.
- `cron`: five fields (minute hour day-of-month month day-of-week) with lists, ranges, steps and names, or a
  macro (`@daily`), read as wall-clock time in an IANA zone.

Daylight-saving changes follow Vixie cron, the rule most operators already know: a job at a fixed local time
(neither the minute nor the hour field starts with `*`) whose time is skipped by a spring-forward runs once,
at the moment the clock jumps, and runs only once in an hour repeated by a fall-back (at the first of the
two); any other job follows real elapsed time (a skipped hour has no runs, a repeated hour runs twice).

Every computation here is a pure function of the schedule and an instant, so two processes asking "which
occurrence is due" always get the same answer.
"""

from __future__ import annotations

import calendar
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import timezone as dt_timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

UTC = dt_timezone.utc


class ScheduleError(ValueError):
    """A schedule that cannot be used; `field` names the part at fault (kind, at, every, anchor, expr, tz)."""

    def __init__(self, message: str, *, field: str):
        super().__init__(message)
        self.message = message
        self.field = field


# --- time zones ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _zone_names() -> dict[str, str]:
    return {name.lower(): name for name in available_timezones()}


def zone_resolve(name: str) -> str:
    """The canonical spelling of an IANA zone name (matched case-insensitively)."""
    if not isinstance(name, str) or not name.strip():
        raise ScheduleError("Give an IANA time zone such as 'Europe/Berlin' or 'UTC'.", field="tz")
    canonical = _zone_names().get(name.strip().lower())
    if canonical is None:
        raise ScheduleError(f"Unknown time zone '{name}'; use an IANA name such as 'Europe/Berlin'.", field="tz")
    return canonical


@lru_cache(maxsize=None)
def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(f"Unknown time zone '{name}'.", field="tz") from exc


# --- durations ----------------------------------------------------------------------------------------------

_UNIT_SECONDS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
    **dict.fromkeys(("w", "wk", "wks", "week", "weeks"), 604800),
}
# The longest `every` interval and the longest `at` delay: ten years. Longer values would only overflow the
# date arithmetic (and the database's integer column) and turn a typo into a 500; nobody schedules further.
MAX_DURATION_SECONDS = 3650 * 86400
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*,?")
_ISO_DURATION = re.compile(
    r"P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)


def duration_parse(text, *, field: str = "every") -> int:
    """Whole seconds from `1h30m`, `90 minutes`, `1.5h`, `PT15M` or a bare number of seconds."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ScheduleError("Give a duration such as '30s', '15m', '2h', '1d' or '1h30m'.", field=field)
    if isinstance(text, (int, float)):
        total = float(text)
    else:
        raw = text.strip().lower()
        iso = _ISO_DURATION.fullmatch(raw.upper()) if raw.startswith("p") else None
        if iso and any(iso.groupdict().values()):
            parts = {k: float(v) for k, v in iso.groupdict().items() if v}
            total = sum(parts.get(k, 0) * _UNIT_SECONDS[k] for k in ("w", "d", "h", "m", "s"))
        else:
            pos, total = 0, 0.0
            while pos < len(raw):
                match = _DURATION_PART.match(raw, pos)
                if match is None or match.end() == pos:
                    raise ScheduleError(
                        f"Cannot read '{text}' as a duration; write e.g. '30s', '15m', '2h', '1d' or '1h30m'.",
                        field=field,
                    )
                number, unit = match.groups()
                if unit not in _UNIT_SECONDS:
                    raise ScheduleError(f"Unknown unit '{unit}' in '{text}'; use s, m, h, d or w.", field=field)
                total += float(number) * _UNIT_SECONDS[unit]
                pos = match.end()
            if not raw:
                raise ScheduleError("The duration is empty; write e.g. '15m'.", field=field)
    if not math.isfinite(total):
        raise ScheduleError(f"'{text}' is not a finite duration.", field=field)
    if total != int(total):
        raise ScheduleError(f"'{text}' is not a whole number of seconds.", field=field)
    return int(total)


def duration_format(seconds: int) -> str:
    """The canonical spelling of a duration: 5400 -> '1h30m'."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


# --- instants -----------------------------------------------------------------------------------------------


def instant_parse(value, *, tz: str, field: str) -> datetime:
    """An aware datetime from ISO 8601; a value without an offset is wall-clock time in `tz`."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and value.strip():
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ScheduleError(
                f"'{value}' is not an ISO 8601 date-time such as '2030-01-31T09:00:00+01:00'.", field=field
            ) from None
    else:
        raise ScheduleError("Give an ISO 8601 date-time such as '2030-01-31T09:00:00Z'.", field=field)
    try:
        if parsed.tzinfo is None:
            parsed = _resolve_local(parsed, zone(tz))
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:00-05:00 is past the last representable instant
        raise ScheduleError(f"'{value}' is outside the supported range of dates (years 1-9999).", field=field) from None


def _resolve_local(naive: datetime, tz: ZoneInfo) -> datetime:
    """A wall-clock time in `tz` as an instant: the first of two in a repeated hour, the jump in a skipped one."""
    instants = _instants(naive, tz, fixed_time=True)
    return instants[0]


# --- cron expressions ---------------------------------------------------------------------------------------

_MONTHS = {name.upper(): i for i, name in enumerate(calendar.month_abbr) if name}
_WEEKDAYS = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
    "@minutely": "* * * * *",
}
# (name, lowest, highest, names)
_FIELDS = (
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day-of-month", 1, 31, None),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _WEEKDAYS),
)
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February as in a leap year
# The longest gap between two dates a valid expression can match: 29 February across a skipped leap year.
_SEARCH_YEARS = 9


def _field_value(token: str, name: str, lo: int, hi: int, names: dict | None) -> int:
    if token.isdigit():
        value = int(token)
    elif names and token.upper() in names:
        return names[token.upper()]
    else:
        hint = f" (or {', '.join(list(names)[:3])}, …)" if names else ""
        raise ScheduleError(f"{name} field: '{token}' is not a number {lo}-{hi}{hint}.", field="expr")
    if not lo <= value <= hi:
        raise ScheduleError(f"{name} field: {value} is out of range {lo}-{hi}.", field="expr")
    return value


def _parse_field(text: str, name: str, lo: int, hi: int, names: dict | None) -> frozenset[int]:
    if text == "?" and name in ("day-of-month", "day-of-week"):
        text = "*"
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ScheduleError(f"{name} field '{text}' has an empty list item.", field="expr")
        if "#" in part or re.fullmatch(r"\d*[LW]|LW|L-\d+", part.upper()):
            raise ScheduleError(f"{name} field: '{part}' uses L, W or #, which are not supported.", field="expr")
        span, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"{name} field: step '{step_text}' must be a positive number.", field="expr")
            step = int(step_text)
        if span == "*":
            start, end = lo, hi
        elif "-" in span:
            first, _, last = span.partition("-")
            start = _field_value(first, name, lo, hi, names)
            end = _field_value(last, name, lo, hi, names)
            if name == "day-of-week" and end == 0 and start > 0:
                end = 7  # FRI-SUN: Sunday closes the week
            if start > end:
                raise ScheduleError(f"{name} field: range '{span}' goes backwards.", field="expr")
        else:
            start = _field_value(span, name, lo, hi, names)
            end = hi if slash else start  # `5/15` is 5-59/15
        values.update(range(start, end + 1, step))
    if name == "day-of-week" and 7 in values:
        values.discard(7)
        values.add(0)
    return frozenset(values)


@dataclass(frozen=True)
class CronExpr:
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool
    # Vixie cron's rule for daylight-saving changes applies to jobs at a fixed time of day only.
    fixed_time: bool

    def day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        in_days = day.day in self.days
        in_weekdays = day.isoweekday() % 7 in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_days or in_weekdays
        return in_days and in_weekdays


def cron_parse(expr) -> tuple[str, CronExpr]:
    """Parse a 5-field expression or a macro; returns (normalized text, CronExpr)."""
    if not isinstance(expr, str) or not expr.strip():
        raise ScheduleError("Give a cron expression such as '0 9 * * 1-5'.", field="expr")
    return _cron_parse(" ".join(expr.split()))


@lru_cache(maxsize=4096)  # every claim of a job reads its schedule, and a burst's jobs mostly share a few
def _cron_parse(text: str) -> tuple[str, CronExpr]:
    if text.startswith("@"):
        if text.lower() == "@reboot":
            raise ScheduleError("@reboot is not a schedule here; use an 'at' schedule for a one-off run.", field="expr")
        if text.lower() not in _MACROS:
            raise ScheduleError(f"Unknown macro '{text}'; use one of {', '.join(_MACROS)}.", field="expr")
        text = text.lower()
        fields = _MACROS[text].split()
    else:
        fields = text.split(" ")
        if len(fields) != 5:
            raise ScheduleError(
                f"A cron expression has 5 fields (minute hour day-of-month month day-of-week); "
                f"'{text}' has {len(fields)}.",
                field="expr",
            )
    parsed = [_parse_field(f, *spec) for f, spec in zip(fields, _FIELDS)]
    minute_f, hour_f, dom_f, _, dow_f = fields
    result = CronExpr(
        minutes=tuple(sorted(parsed[0])),
        hours=tuple(sorted(parsed[1])),
        days=parsed[2],
        months=parsed[3],
        weekdays=parsed[4],
        days_restricted=not dom_f.startswith(("*", "?")),
        weekdays_restricted=not dow_f.startswith(("*", "?")),
        fixed_time=not minute_f.startswith("*") and not hour_f.startswith("*"),
    )
    if not (result.days_restricted and result.weekdays_restricted) and not any(
        d <= _DAYS_IN_MONTH[m - 1] for m in result.months for d in result.days
    ):
        raise ScheduleError(f"'{text}' never matches a real date (e.g. 30 February).", field="expr")
    return text, result


def _instants(naive: datetime, tz: ZoneInfo, *, fixed_time: bool) -> tuple[datetime, ...]:
    """The instants a wall-clock time stands for (see the module docstring for the daylight-saving rule)."""
    first = naive.replace(tzinfo=tz).astimezone(UTC)
    second = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first == second:
        return (first,)
    if first.astimezone(tz).replace(tzinfo=None) == naive:  # repeated by a fall-back: first < second
        return (first,) if fixed_time else (first, second)
    if not fixed_time:  # skipped by a spring-forward
        return ()
    # The jump lies between `second` (read with the later offset) and `first`; find its second.
    lo, hi = int(second.timestamp()), int(first.timestamp())
    before = second.astimezone(tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return (datetime.fromtimestamp(hi, UTC),)


def _latest_instant(naive: datetime, tz: ZoneInfo) -> datetime:
    return max(naive.replace(tzinfo=tz).astimezone(UTC), naive.replace(tzinfo=tz, fold=1).astimezone(UTC))


def cron_next(cron: CronExpr, tz: ZoneInfo, after: datetime) -> datetime | None:
    """The first occurrence strictly after `after`."""
    day = after.astimezone(tz).date() - timedelta(days=1)
    limit = day + timedelta(days=366 * _SEARCH_YEARS)
    while day <= limit:
        if day.month not in cron.months:
            day = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
            continue
        if cron.day_matches(day) and _latest_instant(datetime.combine(day, datetime.max.time()), tz) > after:
            found = _first_on_day(cron, tz, day, after)
            if found is not None:
                return found
        day += timedelta(days=1)
    return None


def _first_on_day(cron: CronExpr, tz: ZoneInfo, day: date, after: datetime) -> datetime | None:
    best = None
    for hour in cron.hours:
        start = datetime(day.year, day.month, day.day, hour)
        end = start.replace(minute=59, second=59)
        if _latest_instant(end, tz) <= after:
            continue
        offsets = {
            start.replace(tzinfo=tz).utcoffset(), start.replace(tzinfo=tz, fold=1).utcoffset(),
            end.replace(tzinfo=tz).utcoffset(), end.replace(tzinfo=tz, fold=1).utcoffset(),
        }
        if len(offsets) == 1:  # no clock change in this hour: plain arithmetic
            base = start.replace(tzinfo=tz).astimezone(UTC)
            candidates = (base + timedelta(minutes=m) for m in cron.minutes)
        else:
            candidates = (
                instant
                for m in cron.minutes
                for instant in _instants(start.replace(minute=m), tz, fixed_time=cron.fixed_time)
            )
        for instant in candidates:
            if instant > after and (best is None or instant < best):
                best = instant
        # Only a fall-back can put a later hour's occurrence before this one.
        if best is not None and best < _earliest_instant(start + timedelta(hours=1), tz):
            return best
    return best


def _earliest_instant(naive: datetime, tz: ZoneInfo) -> datetime:
    return min(naive.replace(tzinfo=tz).astimezone(UTC), naive.replace(tzinfo=tz, fold=1).astimezone(UTC))


# --- schedules ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class At:
    at: datetime
    kind: str = field(default="at", init=False)

    def next_after(self, moment: datetime) -> datetime | None:
        return self.at if self.at > moment else None

    def as_dict(self) -> dict:
        return {"kind": "at", "at": _iso(self.at)}


@dataclass(frozen=True)
class Every:
    seconds: int
    anchor: datetime
    kind: str = field(default="every", init=False)

    @property
    def interval(self) -> timedelta:
        return timedelta(seconds=self.seconds)

    def next_after(self, moment: datetime) -> datetime:
        if moment < self.anchor:
            return self.anchor
        return self.anchor + ((moment - self.anchor) // self.interval + 1) * self.interval

    def as_dict(self) -> dict:
        return {"kind": "every", "every": duration_format(self.seconds), "anchor": _iso(self.anchor)}


@dataclass(frozen=True)
class Cron:
    expr: str
    tz: str
    parsed: CronExpr = field(compare=False, repr=False)
    kind: str = field(default="cron", init=False)

    def next_after(self, moment: datetime) -> datetime | None:
        return cron_next(self.parsed, zone(self.tz), moment)

    def as_dict(self) -> dict:
        return {"kind": "cron", "expr": self.expr, "tz": self.tz}


Schedule = At | Every | Cron

_KEYS = {"at": {"kind", "at", "tz"}, "every": {"kind", "every", "anchor"}, "cron": {"kind", "expr", "tz"}}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def schedule_parse(data, *, now: datetime, min_interval_seconds: int = 1) -> Schedule:
    """A Schedule from the API's JSON: an object with `kind`, or a string shorthand (`every 15m`,
    `at 2030-01-01T09:00Z`, a cron expression or macro, read in UTC). A past `at` is refused."""
    if isinstance(data, str):
        data = _shorthand(data)
    if not isinstance(data, dict):
        raise ScheduleError(
            "Give an object such as {\"kind\": \"cron\", \"expr\": \"0 9 * * 1-5\", \"tz\": \"Europe/Berlin\"}.",
            field="kind",
        )
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in _KEYS:
        raise ScheduleError("'kind' must be one of 'at', 'every', 'cron'.", field="kind")
    unknown = sorted(set(data) - _KEYS[kind])
    if unknown:
        hint = " (did you mean 'tz'?)" if {"timezone", "time_zone", "zone"} & set(unknown) else ""
        raise ScheduleError(
            f"Unknown key(s) {', '.join(unknown)} for a '{kind}' schedule{hint}; allowed: "
            f"{', '.join(sorted(_KEYS[kind] - {'kind'}))}.",
            field=unknown[0],
        )
    if kind == "at":
        return _parse_at(data, now=now)
    if kind == "every":
        return _parse_every(data, now=now, min_interval_seconds=min_interval_seconds)
    tz = zone_resolve(data.get("tz") or "UTC")
    if "expr" not in data:
        raise ScheduleError("A 'cron' schedule needs 'expr', e.g. '0 9 * * 1-5'.", field="expr")
    text, parsed = cron_parse(data["expr"])
    return Cron(expr=text, tz=tz, parsed=parsed)


def _shorthand(text: str) -> dict:
    stripped = text.strip()
    word, _, rest = stripped.partition(" ")
    if word.lower() == "every":
        return {"kind": "every", "every": rest}
    if word.lower() == "at":
        return {"kind": "at", "at": rest}
    return {"kind": "cron", "expr": stripped}


def _parse_at(data: dict, *, now: datetime) -> At:
    if "at" not in data:
        raise ScheduleError("An 'at' schedule needs 'at', an ISO 8601 date-time.", field="at")
    tz = zone_resolve(data.get("tz") or "UTC")
    value = data["at"]
    try:
        at = instant_parse(value, tz=tz, field="at")
    except ScheduleError:
        if not isinstance(value, str):
            raise
        relative = re.sub(r"^\s*(\+|in\s)", "", value, flags=re.I)
        try:
            delay = duration_parse(relative, field="at")
        except ScheduleError:
            raise ScheduleError(
                f"'{value}' is neither an ISO 8601 date-time (e.g. '2030-01-31T09:00:00Z') nor a delay "
                f"such as '20m'.",
                field="at",
            ) from None
        if delay > MAX_DURATION_SECONDS:
            raise ScheduleError(
                f"A delay in 'at' must be at most {duration_format(MAX_DURATION_SECONDS)} (10 years); got '{value}'.",
                field="at",
            )
        at = now + timedelta(seconds=delay)
    if at <= now:
        raise ScheduleError(f"'at' {_iso(at)} is in the past (now is {_iso(now)}).", field="at")
    return At(at=at)


def _parse_every(data: dict, *, now: datetime, min_interval_seconds: int) -> Every:
    if "every" not in data:
        raise ScheduleError("An 'every' schedule needs 'every', e.g. '15m' or '1h30m'.", field="every")
    seconds = duration_parse(data["every"])
    if not min_interval_seconds <= seconds <= MAX_DURATION_SECONDS:
        raise ScheduleError(
            f"'every' must be between {duration_format(min_interval_seconds)} and "
            f"{duration_format(MAX_DURATION_SECONDS)} (10 years); got '{data['every']}'.",
            field="every",
        )
    anchor = data.get("anchor")
    anchor_at = instant_parse(anchor, tz="UTC", field="anchor") if anchor not in (None, "") else now.replace(microsecond=0)
    return Every(seconds=seconds, anchor=anchor_at)

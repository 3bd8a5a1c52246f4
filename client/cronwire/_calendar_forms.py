"""The short forms of a calendar's days, as the `cronwire calendars` flags and `cronwire apply`
files write them: `2027-12-24..2027-12-31`, `12-24`, `mon-fri`, `DE-BY`, `12:00-13:30`."""

from __future__ import annotations

from datetime import date

from cronwire._types import DateRange, PublicHolidays, TimeRange, Weekday, YearlyDate


def parse_date_range(text: str) -> DateRange:
    first, sep, last = text.partition("..")
    try:
        return DateRange(date.fromisoformat(first), date.fromisoformat(last) if sep else None)
    except ValueError:
        raise ValueError(f"{text!r} is not a date (2027-12-24) or a range (2027-12-24..2027-12-31)") from None


def parse_yearly(text: str) -> YearlyDate:
    month, sep, day = text.partition("-")
    if not (sep and month.isdigit() and day.isdigit()):
        raise ValueError(f"{text!r} is not a yearly date MM-DD, e.g. 12-24")
    return YearlyDate(int(month), int(day))


_DAYS = [w.name.lower()[:3] for w in Weekday]


def parse_weekdays(text: str) -> list[Weekday]:
    days: list[Weekday] = []
    for part in text.lower().split(","):
        first, sep, last = part.strip().partition("-")
        if first[:3] not in _DAYS or (sep and last[:3] not in _DAYS):
            raise ValueError(f"{text!r} is not weekdays like mon-fri or sat,sun")
        start = _DAYS.index(first[:3])
        end = _DAYS.index(last[:3]) if sep else start
        span = range(start, end + 1) if end >= start else [*range(start, 7), *range(0, end + 1)]
        days += [Weekday(n + 1) for n in span if Weekday(n + 1) not in days]
    return days


def parse_holidays(text: str) -> PublicHolidays:
    country, _, subdivision = text.partition("-")
    if not country:
        raise ValueError(f"{text!r} is not a country (DE) or a country and subdivision (DE-BY)")
    return PublicHolidays(country.upper(), subdivision.upper())


def parse_hours(text: str) -> TimeRange:
    start, sep, end = text.partition("-")
    if not sep or ":" not in start or ":" not in end:
        raise ValueError(f"{text!r} is not a range of wall-clock times HH:MM-HH:MM, e.g. 12:00-13:00")
    return TimeRange(start, end)

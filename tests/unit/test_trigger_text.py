"""The CLI shows every trigger on one line (a table cell), whatever its kind."""

from __future__ import annotations

from cronwire import BusinessDayTrigger, CronTrigger, RRuleTrigger
from cronwire._output import trigger_text


def test_an_rrule_shows_its_lines_on_one_line() -> None:
    rule = "DTSTART;TZID=Europe/Berlin:20270104T090000\nRRULE:FREQ=WEEKLY;BYDAY=MO\nEXDATE:20270111T080000Z\n"
    assert trigger_text(RRuleTrigger(rule)) == (
        "rrule DTSTART;TZID=Europe/Berlin:20270104T090000; RRULE:FREQ=WEEKLY;BYDAY=MO; "
        "EXDATE:20270111T080000Z"
    )


def test_a_business_day_trigger_shows_its_fields() -> None:
    text = trigger_text(BusinessDayTrigger(calendar="business-days", day=-1, time_of_day="17:00"))
    assert text == "business day calendar=business-days day=-1 time_of_day=17:00"


def test_a_cron_trigger_is_its_expression() -> None:
    assert trigger_text(CronTrigger("0 3 * * *")) == "cron 0 3 * * *"

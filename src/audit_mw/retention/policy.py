"""Retention policies: how long the trail is kept, as presets or any duration. Pure.

Presets: ``hipaa`` (7 years), ``soc2`` (3 years), ``pci`` (12 months, of which the last 3
must be immediately available: every partition that is kept is online, so that holds). Any
duration is written as a number and a unit: ``18mo``, ``2y``, ``400d``, ``26w``. A policy
shorter than 12 months is refused unless forced: every preset asks for at least a year.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from dataclasses import dataclass

from audit_mw.errors import RetentionError

__all__ = ["MIN_MONTHS", "PRESETS", "RetentionPolicy", "parse_policy"]

#: The shortest policy accepted without ``force``.
MIN_MONTHS = 12

_DURATION = re.compile(r"^\s*(\d{1,5})\s*(y|years?|mo|months?|w|weeks?|d|days?)\s*$")


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Keep events for ``months`` calendar months plus ``days`` days."""

    name: str
    months: int = 0
    days: int = 0
    hot_months: int | None = None

    def cutoff(self, now: dt.datetime) -> dt.datetime:
        """The instant before which data has expired: ``now`` minus the policy."""
        return _minus_months(now, self.months) - dt.timedelta(days=self.days)

    def shorter_than_minimum(self, now: dt.datetime) -> bool:
        """Whether this policy keeps less than :data:`MIN_MONTHS` months at ``now``."""
        return self.cutoff(now) > _minus_months(now, MIN_MONTHS)

    def describe(self) -> str:
        """The policy in words, for the CLI and the audit event."""
        parts = []
        if self.months:
            years, months = divmod(self.months, 12)
            if years:
                parts.append(f"{years} year{'s' * (years != 1)}")
            if months:
                parts.append(f"{months} month{'s' * (months != 1)}")
        if self.days:
            parts.append(f"{self.days} day{'s' * (self.days != 1)}")
        text = " ".join(parts) or "0 days"
        if self.hot_months:
            text += f" (the last {self.hot_months} months immediately available)"
        return f"{self.name}: keep {text}"


PRESETS = {
    "hipaa": RetentionPolicy("hipaa", months=84),
    "soc2": RetentionPolicy("soc2", months=36),
    "pci": RetentionPolicy("pci", months=12, hot_months=3),
}


def parse_policy(text: str) -> RetentionPolicy:
    """A preset name or a duration (``18mo``, ``2y``, ``400d``, ``26w``)."""
    key = text.strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    match = _DURATION.match(key)
    if match is None:
        raise RetentionError(
            f"retention policy {text!r} is neither a preset ({', '.join(PRESETS)}) nor a "
            "duration such as 18mo, 2y, 400d or 26w")
    count, unit = int(match[1]), match[2]
    if count == 0:
        raise RetentionError("a retention policy of zero would drop everything")
    if unit.startswith("y"):
        return RetentionPolicy(key, months=12 * count)
    if unit.startswith("mo"):
        return RetentionPolicy(key, months=count)
    if unit.startswith("w"):
        return RetentionPolicy(key, days=7 * count)
    return RetentionPolicy(key, days=count)


def _minus_months(moment: dt.datetime, months: int) -> dt.datetime:
    index = moment.year * 12 + moment.month - 1 - months
    year, month = divmod(index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)

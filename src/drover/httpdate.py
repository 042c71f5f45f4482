"""HTTP-dates (RFC 9110 section 5.6.7), independent of the locale: written for Date,
Last-Modified and Expires, read from If-Modified-Since and friends. Pure functions."""

from __future__ import annotations

import time

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBERS = {name: i + 1 for i, name in enumerate(_MONTHS)}


def http_date(timestamp: float) -> str:
    """IMF-fixdate (RFC 9110 section 5.6.7), independent of the locale."""
    t = time.gmtime(timestamp)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


_DATES: dict[str, int | None] = {}  # parsed HTTP-date values (clients repeat them), bounded


def parse_http_date(value: str) -> int | None:
    """Seconds since the epoch of an HTTP-date (RFC 9110 section 5.6.7: IMF-fixdate, and the
    obsolete RFC 850 and asctime forms a recipient must accept), or None when invalid."""
    parsed = _DATES.get(value, -1)
    if parsed != -1:
        return parsed
    result: int | None = None
    parts = value.split()
    try:
        if len(parts) == 6 and parts[5] == "GMT" and parts[0].endswith(","):  # IMF-fixdate
            day, month, year, clock = int(parts[1]), _MONTH_NUMBERS[parts[2]], int(parts[3]), \
                parts[4]
            result = _timestamp(year, month, day, clock)
        else:
            from email.utils import parsedate_tz  # the obsolete forms: rare, parsed once

            fields = parsedate_tz(value)
            if fields is not None and (fields[9] or 0) == 0:
                year = fields[0]
                if year < 100:  # RFC 850's two-digit year (RFC 9110: within 50 years)
                    year += 2000 if year < 70 else 1900
                result = _timestamp(year, fields[1], fields[2],
                                    f"{fields[3]:02d}:{fields[4]:02d}:{fields[5]:02d}")
    except (KeyError, ValueError, IndexError, OverflowError):
        result = None
    if len(_DATES) >= 256:
        _DATES.clear()
    _DATES[value] = result
    return result


def _timestamp(year: int, month: int, day: int, clock: str) -> int:
    import calendar

    hour, minute, second = (int(x) for x in clock.split(":"))
    if not (1 <= day <= 31 and 0 <= hour < 24 and 0 <= minute < 60 and 0 <= second <= 60):
        raise ValueError(clock)
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))

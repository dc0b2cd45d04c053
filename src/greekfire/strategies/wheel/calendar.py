"""Exchange sessions for the wheel's paper runs, from a maintained calendar (``exchange_calendars``; XNYS by
default): when a trading day opens and closes (early closes included), which days are holidays, and the
weekly option expiries (the last session of each week, at its close: a Friday, or the Thursday before a
Friday holiday). Times are ns since the epoch (UTC)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import exchange_calendars as xcals
import pandas as pd

from greekfire.core.errors import ConfigError

NS_PER_DAY = 86_400 * 10**9


class Sessions:
    """The sessions of exchange ``name`` (an ISO MIC: XNYS, XNAS, XLON...)."""

    def __init__(self, name: str = "XNYS") -> None:
        try:
            self.cal = xcals.get_calendar(name)
        except Exception as exc:  # an unknown name: the library lists what it has
            raise ConfigError("calendar", name, f"an exchange calendar name such as XNYS ({exc})") from None
        self.name = name

    def _ts(self, ns: int) -> pd.Timestamp:
        return pd.Timestamp(ns, unit="ns", tz="UTC")

    def session_bounds(self, session: pd.Timestamp) -> tuple[int, int]:
        """``(open_ns, close_ns)`` of one session (a date label)."""
        return int(self.cal.session_open(session).value), int(self.cal.session_close(session).value)

    def current_or_next(self, now_ns: int) -> tuple[pd.Timestamp, int, int]:
        """The session under way at ``now_ns``, else the next one: ``(label, open_ns, close_ns)``."""
        ts = self._ts(now_ns)
        if self.cal.is_open_on_minute(ts, ignore_breaks=True):
            label = self.cal.minute_to_session(ts)
        else:
            label = self.cal.minute_to_session(ts, direction="next")
        o, c = self.session_bounds(label)
        return label, o, c

    def next_open(self, now_ns: int) -> int:
        """The first session open strictly after ``now_ns``."""
        return int(self.cal.next_open(self._ts(now_ns)).value)

    def weekly_expiries(self, from_ns: int, weeks: int) -> list[datetime]:
        """The close of the last session of each of ``weeks`` calendar weeks, starting with the week of
        ``from_ns`` (aware UTC datetimes; a week without sessions has no expiry)."""
        start = self._ts(from_ns).tz_convert(None).normalize()
        start = start - pd.Timedelta(days=start.weekday())
        end = start + pd.Timedelta(days=7 * weeks - 1)
        last = self.cal.last_session
        if end > last:
            end = last
        sessions = self.cal.sessions_in_range(start, end)
        out: list[datetime] = []
        if len(sessions) == 0:
            return out
        last_of_week: dict[tuple[int, int], pd.Timestamp] = {}
        for label in sessions:
            iso = label.isocalendar()
            last_of_week[(iso[0], iso[1])] = label  # sessions come in order: the last one stays
        for label in last_of_week.values():
            close = self.cal.session_close(label)
            out.append(datetime.fromtimestamp(close.value / 1e9, UTC))
        return out

    def close_of(self, day: date) -> datetime:
        """The close of the session on ``day`` (aware UTC); 16:00 New York for a day without a session."""
        label = pd.Timestamp(day)
        if self.cal.is_session(label):
            return datetime.fromtimestamp(self.cal.session_close(label).value / 1e9, UTC)
        ny = pd.Timestamp(datetime.combine(day, datetime.min.time())).tz_localize("America/New_York")
        return (ny + pd.Timedelta(hours=16)).tz_convert("UTC").to_pydatetime()

    def is_session(self, day: pd.Timestamp) -> bool:
        """True when ``day`` (a date) is a trading day."""
        return bool(self.cal.is_session(day))

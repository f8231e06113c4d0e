"""Bucket bounds in a time zone: where each local hour, day or month starts, as UTC instants.

This is the one place a zone is resolved (zoneinfo reads the time-zone database). Every bound
must fall on a UTC quarter hour, the rollups' grain, so that a local bucket is an exact sum of
rollup rows; a zone whose offset is not a multiple of 15 minutes at a bound (historical local
mean time, before 1970 or so) is refused rather than approximated.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from policies.finance import BucketWidth, CostQueryError

#: The rollups' grain: every bound is a multiple of this many seconds.
GRAIN_SECONDS = 900


def resolve_zone(name: str) -> ZoneInfo:
    """The IANA zone `name`, or a `CostQueryError` on `tz`."""
    if not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        raise CostQueryError("'tz' must be an IANA time zone name such as 'America/St_Johns'.", "tz")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise CostQueryError("'tz' must be an IANA time zone name such as 'America/St_Johns'.", "tz") from None


def bucket_floor(zone: ZoneInfo, width: BucketWidth, instant: int) -> int:
    """The start of the bucket that contains `instant` (Unix seconds)."""
    local = datetime.fromtimestamp(instant, zone)
    if width == "1h":
        start = local.replace(minute=0, second=0, microsecond=0)  # keeps `fold`: a repeated hour is its own
    elif width == "1d":
        start = datetime(local.year, local.month, local.day, tzinfo=zone)
    else:
        start = datetime(local.year, local.month, 1, tzinfo=zone)
    return _aligned(int(start.timestamp()))


def next_bucket(zone: ZoneInfo, width: BucketWidth, start: int) -> int:
    """The start of the bucket after the one starting at `start`."""
    if width == "1h":
        # The next instant a local clock reads hh:00 (offsets are quarter hours: a few steps at most).
        moment = start + GRAIN_SECONDS
        while datetime.fromtimestamp(moment, zone).minute != 0:
            moment += GRAIN_SECONDS
        return _aligned(moment)
    local = datetime.fromtimestamp(start, zone)
    if width == "1d":
        day = local.date() + timedelta(days=1)
        following = datetime(day.year, day.month, day.day, tzinfo=zone)
    else:
        year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
        following = datetime(year, month, 1, tzinfo=zone)
    return _aligned(int(following.timestamp()))


def page_bounds(zone: ZoneInfo, width: BucketWidth, first: int, end: int, limit: int) -> tuple[list[int], bool]:
    """Up to `limit` buckets from the one starting at `first`, before `end`: their `n + 1` bounds,
    and whether more buckets follow before `end`."""
    bounds = [first]
    while len(bounds) <= limit and bounds[-1] < end:
        bounds.append(next_bucket(zone, width, bounds[-1]))
    return bounds, bounds[-1] < end


def iso_in_zone(instant: int, zone: ZoneInfo) -> str:
    """ISO 8601 with the zone's offset at that instant (`2026-03-08T00:00:00-05:00`)."""
    return datetime.fromtimestamp(instant, zone).isoformat()


def utc_datetime(instant: int) -> datetime:
    return datetime.fromtimestamp(instant, UTC)


def _aligned(instant: int) -> int:
    if instant % GRAIN_SECONDS:
        raise CostQueryError(
            "This time zone's offset at the requested time is not a multiple of 15 minutes; use 'UTC'.", "tz"
        )
    return instant

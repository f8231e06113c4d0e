"""Every view of the Costs API sums to the ledger, to the micro-dollar (issue M, item 1).

A property test over random ledgers (real Postgres, written with the ledger writer's own
statements; realtime responses, transcriptions, Live voice time, translation audio and Live
delegated tokens, so the union of usage_ledger, transcription_usage, duration_usage and
live_token_usage), zones (half-hour, 45-minute and DST-shifting ones, around their transition days),
bucket widths, groupings, filters and page sizes. The expected sums are computed here, in
Python, from the records themselves: which bucket holds a row is decided by containment in the
bucket's bounds, and the bounds are checked to start at a local hour, day or month.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.finance.costs import CostPage, query_costs
from gateway.finance.rates import register_price_rates
from gateway.storage.migrations import apply_migrations
from gateway.storage.tenants import TenantDirectory
from policies.finance import CostQuery, decode_cursor
from policies.prices.builtin import DEFAULT_PRICE_TABLE
from policies.prices.table import CEILING_KEY
from tests.conftest import create_database, drop_database
from tests.support import ledger_fill

ZONES = ("UTC", "America/St_Johns", "Asia/Kathmandu", "America/New_York", "Australia/Lord_Howe", "Europe/London")
# Four-day windows around 2026's transitions: US spring-forward (Mar 8), London (Mar 29),
# Lord Howe's half-hour fall-back (Apr 5), US fall-back (Nov 1); and a month's end.
WINDOWS = tuple(
    int(datetime(*d, tzinfo=UTC).timestamp())
    for d in ((2026, 3, 6), (2026, 3, 27), (2026, 4, 3), (2026, 10, 30), (2026, 1, 29))
)
WINDOW_SECONDS = 4 * 86400
TAG_SETS = ((), (("team", "voice"),), (("team", "ops"), ("task", "triage")), (("task", "triage"),))
GROUPS = ("project_id", "line_item", "model", "api_key_id", "end_user", "tag")
PRICE_VERSION = DEFAULT_PRICE_TABLE.version_for("gpt-realtime")
CEILING_VERSION = DEFAULT_PRICE_TABLE.version_for(CEILING_KEY)
# What a drawn row is: a realtime response (priced, dated, unpriced), a transcription, or Live and
# translation spend: a Live session's voice time (two cumulative bookings), a translation's audio
# (duration_usage) and a Live session's delegated tokens (live_token_usage).
LEDGER_KINDS = (
    "gpt-realtime",
    "gpt-realtime-2025-08-28",
    "unpriced-model",
    "transcription",
    "live_voice",
    "translation",
    "live_tokens",
)


@dataclass
class Ledger:
    runner: asyncio.Runner
    pool: asyncpg.Pool
    tenants: list[str]
    keys: dict[str, list[str]]


@pytest.fixture(scope="module")
def ledger() -> Iterator[Ledger]:
    """A database of its own, driven from a private event loop (hypothesis runs examples synchronously)."""
    runner = asyncio.Runner()

    async def setup() -> tuple[str, Ledger]:
        name, dsn = await create_database()
        await apply_migrations(dsn)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3)
        await register_price_rates(pool, DEFAULT_PRICE_TABLE)
        directory = TenantDirectory(pool)
        tenants, keys = [], {}
        for _ in range(3):
            tenant = await directory.create_tenant(f"costs-{secrets.token_hex(4)}")
            tenants.append(tenant.id)
            keys[tenant.id] = [(await directory.create_key(tenant.id)).id for _ in range(2)]
        return name, Ledger(runner, pool, tenants, keys)

    name, fill = runner.run(setup())
    yield fill
    runner.run(fill.pool.close())
    runner.run(drop_database(name))
    runner.close()


# UTC seconds of the day at which the zones' days begin (St John's 03:30, Kathmandu 18:15, Lord
# Howe 13:00 or 13:30, New York 04:00 or 05:00, London 00:00 or 23:00): rows are drawn near them
# as often as anywhere, so the quarter hours a local day shares with its neighbour are filled.
EDGES = (3 * 3600 + 1800, 18 * 3600 + 900, 13 * 3600, 13 * 3600 + 1800, 4 * 3600, 5 * 3600, 0, 23 * 3600)
offsets = st.one_of(
    st.integers(0, WINDOW_SECONDS - 1),
    st.builds(
        lambda day, edge, delta: (day * 86400 + edge + delta) % WINDOW_SECONDS,
        st.integers(0, 3),
        st.sampled_from(EDGES),
        st.integers(-3600, 3600),
    ),
)
rows = st.lists(
    st.tuples(
        st.integers(0, 2),  # tenant
        st.sampled_from([None, 0, 1]),  # key
        st.sampled_from([None, "eu_a", "eu_b"]),  # end user
        st.sampled_from(TAG_SETS),
        st.sampled_from(LEDGER_KINDS),
        offsets,
        st.tuples(st.integers(0, 900), st.integers(0, 200), st.integers(0, 3000), st.integers(0, 3000)),
        st.integers(0, 9_000_000),
    ),
    max_size=30,
)
views = st.fixed_dictionaries(
    {
        "tz": st.sampled_from(ZONES),
        "width": st.sampled_from(["1h", "1d", "1mo"]),
        "groups": st.sets(st.sampled_from(GROUPS)),
        "tag_key": st.sampled_from(["team", "task"]),
        "limit": st.integers(1, 6),
        "tenants": st.none() | st.sets(st.integers(0, 2), min_size=1),
        "models": st.none() | st.just(("gpt-realtime",)) | st.just(("gpt-live-1", "gpt-5.5")),
    }
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(window=st.sampled_from(WINDOWS), ledger_rows=rows, view=views)
def test_every_view_sums_to_the_ledger(ledger: Ledger, window: int, ledger_rows: list, view: dict) -> None:
    billed = ledger.runner.run(_fill(ledger, window, ledger_rows))
    groups = tuple(g for g in GROUPS if g in view["groups"])
    query = CostQuery(
        start_time=window - 3600,
        end_time=window + WINDOW_SECONDS + 3600,
        bucket_width=view["width"],
        limit=view["limit"] if view["width"] != "1h" else 40,  # 98 hours: three pages
        group_by=groups,
        tz=view["tz"],
        tag_key=view["tag_key"] if "tag" in groups else None,
        project_ids=tuple(ledger.tenants[i] for i in sorted(view["tenants"])) if view["tenants"] else None,
        models=view["models"],
    )
    pages = ledger.runner.run(_all_pages(ledger.pool, query))
    buckets = [b for page in pages for b in page.buckets]
    zone = ZoneInfo(view["tz"])

    # The buckets tile the range: contiguous, each starting at a local hour / day / month.
    assert buckets[0].start_time <= query.start_time < buckets[0].end_time
    assert buckets[-1].end_time >= query.end_time > buckets[-1].start_time
    for before, after in itertools.pairwise(buckets):
        assert before.end_time == after.start_time
    for bucket in buckets:
        local = datetime.fromtimestamp(bucket.start_time, zone)
        assert (local.minute, local.second) == (0, 0)
        if view["width"] != "1h":
            assert local.hour == 0 or _midnight_skipped(local)
        if view["width"] == "1mo":
            assert local.day == 1

    # Every bucket and group sums to the records it holds; line items sum to their model.
    expected: Counter[tuple] = Counter()
    for row in billed:
        if query.project_ids is not None and row.tenant_id not in query.project_ids:
            continue
        if query.models is not None and row.model not in query.models:
            continue
        index = next(i for i, b in enumerate(buckets) if b.start_time <= row.occurred_at < b.end_time)
        expected[(index, *_dims(row, groups, query.tag_key))] += row.cost_micro_usd
    actual: Counter[tuple] = Counter()
    for index, bucket in enumerate(buckets):
        for result in bucket.results:
            dims = []
            for group in groups:
                if group == "line_item":
                    model = result.model if result.model is not None else result.line_item.split(", ")[0]
                    assert result.line_item.startswith(f"{model}, ")
                    dims.append(model)
                else:
                    dims.append(getattr(result, group))
            actual[(index, *dims)] += result.amount_micro_usd
    assert +actual == +expected
    assert sum(actual.values()) == sum(expected.values())

    # A Live session's voice quantities sum to its final cumulative time, whichever booking came first.
    voice_ms = sum(
        t[0] * 100 + t[2] + 1 + t[1] * 100 + t[3]
        for (*_, model, _offset, t, _cost) in ledger_rows
        if model == "live_voice"
    )
    rolled = ledger.runner.run(
        ledger.pool.fetchval(
            "SELECT coalesce(sum(quantity), 0)::bigint FROM cost_rollup_15m WHERE model = 'gpt-live-1'"
        )
    )
    assert rolled == voice_ms


def _dims(row: ledger_fill.Billed, groups: tuple[str, ...], tag_key: str | None) -> list[object]:
    tags = dict(row.tags)
    values = {
        "project_id": row.tenant_id,
        "line_item": row.model,  # compared per model: the split into kinds is tested on its own
        "model": row.model,
        "api_key_id": row.api_key_id,
        "end_user": row.end_user,
        "tag": f"{tag_key}={tags[tag_key]}" if tag_key in tags else None,
    }
    return [values[g] for g in groups]


def _midnight_skipped(local: datetime) -> bool:
    return (
        local.hour == 1 and local.utcoffset() != datetime.fromtimestamp(local.timestamp() - 1, local.tzinfo).utcoffset()
    )


async def _all_pages(pool: asyncpg.Pool, query: CostQuery) -> list[CostPage]:
    pages = [await query_costs(pool, query)]
    while pages[-1].has_more:
        assert pages[-1].next_page is not None
        pages.append(
            await query_costs(pool, CostQuery(**{**_fields(query), "page": decode_cursor(pages[-1].next_page)}))
        )
    return pages


def _fields(query: CostQuery) -> dict[str, object]:
    return {name: getattr(query, name) for name in query.__dataclass_fields__}


async def _fill(ledger: Ledger, window: int, ledger_rows: list) -> list[ledger_fill.Billed]:
    await ledger_fill.clear(ledger.pool)
    records, billed = [], []
    for n, (tenant_index, key_index, end_user, tags, model, offset, tokens, cost) in enumerate(ledger_rows):
        tenant = ledger.tenants[tenant_index]
        key = ledger.keys[tenant][key_index] if key_index is not None else None
        at = window + offset
        session_id = f"vgs_{n}"
        records.append(ledger_fill.session(session_id, tenant, key, end_user, tags, at))
        if model == "transcription":
            records.append(ledger_fill.transcription(session_id, tenant, f"item_{n}", at, tokens[2] * 10, cost))
            model = "whisper-1"
        elif model == "live_voice":
            # Two bookings of one session's cumulative time, each at the cost of its increase; the
            # second may land in another bucket. An unregistered version books one line per row.
            model, first = "gpt-live-1", cost // 3
            version = "unregistered" if tokens[1] % 7 == 0 else DEFAULT_PRICE_TABLE.version_for(model)
            active, standby = tokens[0] * 100, tokens[1] * 100
            later = at + tokens[3]
            bookings = [
                ledger_fill.duration(session_id, tenant, "live_voice", model, at, active, standby, first, version)
            ]
            bookings.append(
                ledger_fill.duration(
                    session_id,
                    tenant,
                    "live_voice",
                    model,
                    later,
                    active + tokens[2] + 1,
                    standby + tokens[3],
                    cost - first,
                    version,
                )
            )
            records.extend(bookings if tokens[0] % 2 == 0 else bookings[::-1])  # odd: the later booking first
            billed.append(ledger_fill.Billed(tenant, key, end_user, tags, model, at, first))
            billed.append(ledger_fill.Billed(tenant, key, end_user, tags, model, later, cost - first))
            continue
        elif model == "translation":
            model = "gpt-realtime-translate"
            version = DEFAULT_PRICE_TABLE.version_for(model)
            ms = tokens[2] * 10 + 1
            records.append(ledger_fill.duration(session_id, tenant, "translation", model, at, ms, 0, cost, version))
        elif model == "live_tokens":
            model = "gpt-5.5"  # no built-in Responses prices: booked at the ceiling's, as the gateway does
            usage = (tokens[0] + tokens[2], tokens[1], tokens[3])
            records.append(
                ledger_fill.live_tokens(session_id, tenant, f"resp_{n}", model, at, usage, cost, CEILING_VERSION)
            )
        else:
            version = "unregistered" if model == "unpriced-model" else PRICE_VERSION
            records.append(ledger_fill.response(f"resp_{n}", session_id, tenant, model, at, tokens, cost, version))
        billed.append(ledger_fill.Billed(tenant, key, end_user, tags, model, at, cost))
    await ledger_fill.write(ledger.pool, records)
    await ledger_fill.write(ledger.pool, records)  # a replayed batch is a no-op, in the rollups too
    return billed

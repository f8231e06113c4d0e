"""Rate limits as pure math: token bucket and sliding-window log, with exact retry times."""

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from policies.ratelimit import TokenBucket, take, window_take

T0 = 1_800_000_000.0
# Times on a 1/1024 s grid are exact floats, so "exact" can be checked exactly.
step = st.integers(0, 4096).map(lambda k: k / 1024)


def test_bucket_takes_until_empty_then_says_when_to_retry() -> None:
    bucket = TokenBucket.full(2, 1.0, T0)
    ok1, bucket, _ = take(bucket, T0)
    ok2, bucket, _ = take(bucket, T0)
    ok3, same, retry = take(bucket, T0)
    assert (ok1, ok2, ok3) == (True, True, False) and same is bucket and retry == 1.0
    assert take(bucket, T0 + retry)[0]
    assert take(TokenBucket.full(2, 1.0, T0), T0, 3) == (False, TokenBucket.full(2, 1.0, T0), math.inf)
    assert take(TokenBucket(2, 0.0, 0.0, T0), T0)[2] == math.inf


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(1, 20),
    rate=st.sampled_from([0.25, 0.5, 1.0, 3.0, 10.0]),
    calls=st.lists(st.tuples(step, st.integers(1, 5)), max_size=60),
)
def test_bucket_never_grants_more_than_capacity_plus_refill(
    capacity: int, rate: float, calls: list[tuple[float, int]]
) -> None:
    bucket = TokenBucket.full(capacity, rate, T0)
    now = T0
    granted: list[tuple[float, int]] = []
    for gap, n in calls:
        now += gap
        ok, bucket, _ = take(bucket, now, n)
        if ok:
            granted.append((now, n))
    for i, (start, _) in enumerate(granted):
        for end, _ in granted[i:]:
            total = sum(n for t, n in granted if start <= t <= end)
            assert total <= capacity + rate * (end - start) + 1e-9


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(1, 20),
    rate=st.sampled_from([0.25, 0.5, 1.0, 3.0, 10.0]),
    calls=st.lists(st.tuples(step, st.integers(1, 5)), max_size=30),
    n=st.integers(1, 20),
)
def test_retry_after_is_exact(capacity: int, rate: float, calls: list[tuple[float, int]], n: int) -> None:
    bucket = TokenBucket.full(capacity, rate, T0)
    now = T0
    for gap, k in calls:
        now += gap
        _, bucket, _ = take(bucket, now, k)
    ok, same, retry = take(bucket, now, n)
    if ok or math.isinf(retry):
        return
    assert same == bucket and retry > 0 and retry * 1024 == int(retry * 1024)
    assert take(bucket, now + retry, n)[0]
    assert not take(bucket, now + retry - 1 / 1024, n)[0]


def test_window_log_allows_limit_per_window() -> None:
    log: tuple[float, ...] = ()
    for i in range(3):
        ok, log, _ = window_take(log, T0 + i, 3)
        assert ok
    ok, log, retry = window_take(log, T0 + 10, 3)
    assert not ok and retry == 50.0
    assert window_take(log, T0 + 60, 3)[0]
    assert window_take((), T0, 0)[2] == math.inf


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(1, 6), gaps=st.lists(st.integers(0, 40 * 1024).map(lambda k: k / 1024), max_size=60))
def test_window_never_admits_more_than_limit_in_any_window_and_retry_is_exact(limit: int, gaps: list[float]) -> None:
    log: tuple[float, ...] = ()
    now = T0
    admitted: list[float] = []
    for gap in gaps:
        now += gap
        ok, new_log, retry = window_take(log, now, limit)
        if ok:
            admitted.append(now)
            log = new_log
        else:
            assert window_take(log, now + retry, limit)[0]
            assert not window_take(log, now + retry - 1 / 1024, limit)[0]
    for t in admitted:
        assert sum(1 for u in admitted if t <= u < t + 60) <= limit

"""The overload controls as state machines, on a hand-driven clock."""

from __future__ import annotations

from funnel.runtime.admission import ConcurrencyLimit
from services.gateway.resilience import LatencyWindow, QualityFactor, RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_retry_budget_allows_about_the_ratio_of_first_calls_once_its_reserve_is_spent():
    clock = Clock()
    budget = RetryBudget(ratio=0.1, floor_per_s=0.0, cap=5.0, clock=clock)
    spent_at_start = sum(budget.try_spend("ranking", "retry") for _ in range(100))
    assert spent_at_start == 5  # the reserve, then nothing
    granted = 0
    for _ in range(1000):  # every call fails and wants a retry: a storm
        budget.record_call()
        granted += budget.try_spend("ranking", "retry")
    assert 99 <= granted <= 100  # 10% of first calls (float sums), not one retry per call


def test_retry_budget_floor_refills_with_time_alone():
    clock = Clock()
    budget = RetryBudget(ratio=0.0, floor_per_s=2.0, cap=2.0, clock=clock)
    assert [budget.try_spend("retrieval", "hedge") for _ in range(3)] == [True, True, False]
    clock.now += 0.5
    assert budget.try_spend("retrieval", "hedge") is True
    assert budget.try_spend("retrieval", "hedge") is False


def test_latency_window_waits_for_enough_samples_then_gives_the_quantile():
    window = LatencyWindow(size=100, min_samples=10)
    for ms in range(1, 10):
        window.add(ms / 1000)
    assert window.quantile(0.95) is None
    for ms in range(10, 101):
        window.add(ms / 1000)
    assert window.quantile(0.95) == 0.095
    assert window.quantile(0.5) == 0.05


def test_quality_factor_backs_off_under_pressure_to_its_floor_and_recovers_when_it_falls():
    clock = Clock()
    quality = QualityFactor(floor=0.25, interval_s=0.1, clock=clock)
    for _ in range(200):
        clock.now += 0.02
        quality.observe(1.0)  # every stage call near its budget
    assert quality.value == 0.25
    assert quality.scale(300) == 75
    for _ in range(20):
        clock.now += 0.02
        quality.observe(0.1)
    assert 0.25 < quality.value < 1.0  # recovers gently, not at once
    for _ in range(500):
        clock.now += 0.02
        quality.observe(0.1)
    assert quality.value == 1.0
    assert quality.scale(300) == 300


def test_quality_factor_ignores_one_slow_request_in_calm_traffic():
    clock = Clock()
    quality = QualityFactor(floor=0.25, interval_s=0.1, clock=clock)
    for n in range(100):
        clock.now += 0.02
        quality.observe(2.0 if n == 50 else 0.2)
    assert quality.value == 1.0


def test_fixed_concurrency_limit_refuses_beyond_it_and_admits_again_on_release():
    limit = ConcurrencyLimit(ceiling=2)
    assert [limit.try_acquire() for _ in range(3)] == [True, True, False]
    limit.release(0.01)
    assert limit.try_acquire() is True


def test_zero_means_no_limit():
    limit = ConcurrencyLimit(ceiling=0)
    assert all(limit.try_acquire() for _ in range(10_000))


def test_adaptive_limit_shrinks_while_latency_is_over_target_and_grows_back_under_it():
    clock = Clock()
    limit = ConcurrencyLimit(ceiling=64, latency_target_s=0.05, floor=2, clock=clock)
    assert limit.limit == 64
    for _ in range(200):
        clock.now += 0.06
        assert limit.try_acquire()
        limit.release(0.2)  # every call over its target
    assert limit.limit == 2
    assert [limit.try_acquire() for _ in range(3)] == [True, True, False]
    for _ in range(2):
        limit.release(0.01)
    for _ in range(5000):  # +1/limit per call: about limit^2/2 calls to climb back
        clock.now += 0.01
        limit.try_acquire()
        limit.release(0.01)
    assert limit.limit == 64


def test_adaptive_limit_cuts_once_per_target_interval_for_a_burst_of_late_calls():
    clock = Clock()
    limit = ConcurrencyLimit(ceiling=100, latency_target_s=0.05, backoff=0.5, clock=clock)
    for _ in range(10):
        limit.try_acquire()
    for _ in range(10):
        limit.release(0.3)  # ten late calls finishing together
    assert limit.limit == 50

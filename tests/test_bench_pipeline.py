"""The pipeline benchmark's timers (the benchmark itself is run by hand: it needs the ci
zoo and minutes; its numbers are in the README)."""

from __future__ import annotations

import time

from audit_lib.bench.pipeline import Timers


class _Work:
    def slow(self, t: float) -> float:
        time.sleep(t)
        return t

    def outer(self, t: float) -> float:
        return self.slow(t) + self.slow(t)


def test_timers_add_up_wall_time_count_nested_calls_once_and_restore():
    original = _Work.slow
    timers = Timers()
    timers.wrap(_Work, "slow", "slow")
    timers.wrap(_Work, "outer", "slow")  # same name: the inner calls are inside the outer one
    w = _Work()
    assert w.slow(0.05) == 0.05
    assert w.outer(0.05) == 0.1
    assert timers.calls["slow"] == 2
    assert 0.14 <= timers.total["slow"] < 0.6
    timers.restore()
    assert _Work.slow is original
    w.slow(0.01)
    assert timers.calls["slow"] == 2  # no longer counted


def test_timers_count_a_call_that_raises():
    timers = Timers()

    class Boom:
        def go(self) -> None:
            time.sleep(0.02)
            raise RuntimeError("x")

    timers.wrap(Boom, "go", "boom")
    try:
        Boom().go()
    except RuntimeError:
        pass
    assert timers.calls["boom"] == 1 and timers.total["boom"] >= 0.02
    timers.restore()

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



def test_instrumented_counts_the_handles_queries_and_restores(db_url, small_cnn_weights, png_images):
    from audit_lib import registry
    from audit_lib.bench.pipeline import instrumented
    from audit_lib.encoders import open_handle
    from audit_lib.encoders.cache import StoreBackedHandle
    from audit_lib.store import session_scope

    original = StoreBackedHandle.__init__
    arch, path = small_cnn_weights
    with session_scope(db_url) as s:
        model = registry.add_model(s, name="cnn", kind="checkpoint", role="suspect", capabilities="image",
                                   architecture=arch, weights_path=path)
        s.expunge(model)
    with instrumented() as timers:
        open_handle(model, run_key="bench-1", db_url=db_url).encode_images(png_images[:3])
        open_handle(model, run_key="bench-1", db_url=db_url).encode_images(png_images[:5])
    assert StoreBackedHandle.__init__ is original
    assert [(h.misses, h.hits) for h in timers.handles] == [(3, 0), (2, 3)]
    assert timers.calls["cache_layer"] == 2 and timers.calls["model"] == 2
    open_handle(model, run_key="bench-1", db_url=db_url)
    assert len(timers.handles) == 2  # no longer collected

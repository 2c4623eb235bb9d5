"""Statistic series and histograms from the store: every step once, paged or downsampled."""

from __future__ import annotations

import math

from batches import histogram, make_batch, same_floats, stats_block, store_batch, store_run
from sqlalchemy.orm import Session

from layerwatch_server import store

INF = math.inf


NAN = math.nan


def test_series_pages_cover_every_step_once(session: Session) -> None:
    run_id = store_run(session)
    steps = list(range(0, 250, 10))
    store_batch(session, run_id, make_batch(stats=[stats_block("fc1", steps)]))

    seen: list[int] = []
    after = None
    pages = 0
    while True:
        page = store.get_series(
            session, run_id, tensor="fc1", kind="activation", stat="max", after_step=after, limit=7
        )
        pages += 1
        seen += page.steps
        assert len(page.steps) <= 7
        assert not page.downsampled
        if page.next_after_step is None:
            break
        assert page.next_after_step == page.steps[-1]
        after = page.next_after_step
    assert seen == steps
    assert pages == 4

    window = store.get_series(
        session, run_id, tensor="fc1", kind="activation", stat="max", start=15, end=60
    )
    assert window.steps == [20, 30, 40, 50, 60]
    exact = store.get_series(
        session, run_id, tensor="fc1", kind="activation", stat="max", limit=len(steps)
    )
    assert exact.next_after_step is None


def test_series_downsampling_keeps_the_envelope(session: Session) -> None:
    run_id = store_run(session)
    steps = list(range(1000))
    values = [math.sin(s / 50) for s in steps]
    values[437], values[901] = 40.0, -40.0
    values[600] = NAN
    store_batch(session, run_id, make_batch(stats=[stats_block("fc1", steps, mean=values)]))

    thin = store.get_series(
        session, run_id, tensor="fc1", kind="activation", stat="mean", max_points=50
    )

    assert thin.downsampled
    assert thin.total == 1000
    assert thin.next_after_step is None
    assert len(thin.steps) <= 50
    assert thin.steps == sorted(thin.steps)
    assert {0, 437, 901, 999} <= set(thin.steps)
    assert all(same_floats([v], [values[s]]) for s, v in zip(thin.steps, thin.values, strict=True))

    full = store.get_series(
        session, run_id, tensor="fc1", kind="activation", stat="mean", max_points=1000
    )
    assert (full.downsampled, full.steps) == (False, steps)
    window = store.get_series(
        session,
        run_id,
        tensor="fc1",
        kind="activation",
        stat="mean",
        start=400,
        end=499,
        max_points=10,
    )
    assert window.total == 100
    assert 437 in window.steps
    assert window.steps[0] == 400
    assert window.steps[-1] == 499


def test_histograms_by_step_and_in_pages(session: Session) -> None:
    run_id = store_run(session)
    hists = [histogram("fc1", step, [step, 1]) for step in range(5)]
    store_batch(session, run_id, make_batch(histograms=hists))

    one = store.get_histograms(session, run_id, tensor="fc1", kind="activation", step=3)
    assert [(h.step, h.counts) for h in one.data] == [(3, [3, 1])]
    page = store.get_histograms(session, run_id, tensor="fc1", kind="activation", limit=2)
    assert ([h.step for h in page.data], page.next_after_step) == ([0, 1], 1)
    last = store.get_histograms(
        session, run_id, tensor="fc1", kind="activation", after_step=3, limit=2
    )
    assert ([h.step for h in last.data], last.next_after_step) == ([4], None)

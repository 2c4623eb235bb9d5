"""Logged scalars from the store: paged and downsampled."""

from __future__ import annotations

from batches import make_batch, scalars_block, store_batch, store_run
from sqlalchemy.orm import Session

from layerwatch_server import store


def test_scalar_series_paging_and_downsampling(session: Session) -> None:
    run_id = store_run(session)
    steps = list(range(30))
    store_batch(session, run_id, make_batch(scalars=[scalars_block("loss", steps, steps)]))

    page = store.get_scalar_series(session, run_id, name="loss", limit=20)
    assert (page.steps, page.next_after_step) == (steps[:20], 19)
    rest = store.get_scalar_series(session, run_id, name="loss", after_step=19, limit=20)
    assert (rest.steps, rest.next_after_step) == (steps[20:], None)
    assert rest.times == [None] * 10
    thin = store.get_scalar_series(session, run_id, name="loss", max_points=6)
    assert thin.downsampled
    assert thin.steps[0] == 0
    assert thin.steps[-1] == 29
    assert len(thin.steps) <= 6

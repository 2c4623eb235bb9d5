"""Non-finite events: stored through the batch path, idempotent, read back in order."""

from __future__ import annotations

import pytest
from batches import make_batch, store_batch, store_run
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server.errors import Conflict, RunNotFound
from layerwatch_server.schemas import NonfiniteEventPublic
from layerwatch_server.store.sentinel import nonfinite_events


def events_batch(*events: wire.NonfiniteEvent, rank: int = 0) -> wire.Batch:
    return make_batch(rank=rank).model_copy(update={"nonfinite": list(events)})


def test_events_are_stored_and_read_back_by_step_then_rank(session: Session) -> None:
    run_id = store_run(session)
    late = wire.NonfiniteEvent(step=90, tensor="fc2", kind="activation")
    early = wire.NonfiniteEvent(step=37, tensor="fc1", kind="activation", also=["fc2", "fc1.w"])
    store_batch(session, run_id, events_batch(late, rank=1))
    store_batch(session, run_id, events_batch(early, late))
    grad = wire.NonfiniteEvent(step=37, tensor="fc2.weight", kind="grad")
    store_batch(session, run_id, events_batch(grad, rank=1))

    assert nonfinite_events(session, run_id) == [
        NonfiniteEventPublic(step=37, rank=0, tensor="fc1", kind="activation",
                             also=["fc2", "fc1.w"]),
        NonfiniteEventPublic(step=37, rank=1, tensor="fc2.weight", kind="grad", also=[]),
        NonfiniteEventPublic(step=90, rank=0, tensor="fc2", kind="activation", also=[]),
        NonfiniteEventPublic(step=90, rank=1, tensor="fc2", kind="activation", also=[]),
    ]  # fmt: skip


def test_an_event_sent_again_is_skipped_and_a_different_one_refused(session: Session) -> None:
    run_id = store_run(session)
    event = wire.NonfiniteEvent(step=5, tensor="fc1", kind="activation", also=["fc2"])
    store_batch(session, run_id, events_batch(event))
    store_batch(session, run_id, events_batch(event))  # a new batch id: a resend
    assert len(nonfinite_events(session, run_id)) == 1

    changed = event.model_copy(update={"also": ["fc3"]})
    with pytest.raises(Conflict, match="non-finite event of activation `fc1` at step 5"):
        store_batch(session, run_id, events_batch(changed))
    assert nonfinite_events(session, run_id)[0].also == ["fc2"]


def test_events_of_an_unknown_run(session: Session) -> None:
    with pytest.raises(RunNotFound):
        nonfinite_events(session, "no-such-run")

"""What the clients' non-finite sentinels reported: when and where a NaN or inf appeared."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from layerwatch_server.models import SqlNonfiniteEvent
from layerwatch_server.schemas import NonfiniteEventPublic
from layerwatch_server.store.runs import require_run


def nonfinite_events(session: Session, run_id: str) -> list[NonfiniteEventPublic]:
    """The run's non-finite events, sorted by step, then rank; raises unless the run exists."""
    require_run(session, run_id)
    rows = session.scalars(
        select(SqlNonfiniteEvent)
        .where(SqlNonfiniteEvent.run_id == run_id)
        .order_by(
            SqlNonfiniteEvent.step,
            SqlNonfiniteEvent.rank,
            SqlNonfiniteEvent.kind,  # "activation", "grad", "weight": computation order
            SqlNonfiniteEvent.tensor,
        )
    )
    return [NonfiniteEventPublic.model_validate(row) for row in rows]

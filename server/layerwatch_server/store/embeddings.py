"""Cached 2-D embeddings of probed layers: t-SNE takes seconds, so it runs once per key.

A view computes under a read session; the cache is written beside it in a
short transaction of its own on the same engine, so that a slow view never
holds a write lock and a failed write costs only the cache. Two requests
computing the same embedding at once both insert; the second insert is
ignored (ON CONFLICT DO NOTHING), and both answers are equal because the
computation is deterministic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Connection, Engine, Table, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from layerwatch_server.db import WRITE_OPTION, insert_ignoring_duplicates
from layerwatch_server.models import SqlEmbedding, utcnow
from layerwatch_server.store import codec

logger = logging.getLogger(__name__)

_EMBEDDINGS: Table = SqlEmbedding.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class EmbeddingKey:
    """What an embedding depends on; ``perplexity`` is 0 for PCA."""

    run_id: str
    rank: int
    layer: str
    step: int
    method: str
    perplexity: float


def get_embedding(session: Session, key: EmbeddingKey) -> np.ndarray | None:
    """The cached ``(points, 2)`` float32 coordinates for ``key``, or None."""
    data = session.scalar(
        select(SqlEmbedding.coordinates).where(
            SqlEmbedding.run_id == key.run_id,
            SqlEmbedding.step == key.step,
            SqlEmbedding.rank == key.rank,
            SqlEmbedding.layer == key.layer,
            SqlEmbedding.method == key.method,
            SqlEmbedding.perplexity == key.perplexity,
        )
    )
    if data is None:
        return None
    return codec.unpack_float32(data, (-1, 2))


def save_embedding(session: Session, key: EmbeddingKey, coordinates: np.ndarray) -> bool:
    """Store ``coordinates`` (points, 2) for ``key`` in a transaction of its own.

    ``session`` may be a read session in the middle of its transaction: only
    its engine is used. True when the row is stored (by this call or a
    concurrent one); a failure is logged and returns False, never raised.
    """
    bind = session.get_bind()
    engine: Engine = bind.engine if isinstance(bind, Connection) else bind
    row = {
        "run_id": key.run_id,
        "step": key.step,
        "rank": key.rank,
        "layer": key.layer,
        "method": key.method,
        "perplexity": key.perplexity,
        "points": len(coordinates),
        "coordinates": codec.pack_float32(coordinates),
        "created_at": utcnow(),
    }
    try:
        with engine.execution_options(**{WRITE_OPTION: True}).begin() as connection:
            connection.execute(insert_ignoring_duplicates(session, _EMBEDDINGS), row)
    except SQLAlchemyError as error:
        logger.warning("could not cache the embedding %s: %s", key, error)
        return False
    return True

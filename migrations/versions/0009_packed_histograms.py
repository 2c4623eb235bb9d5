"""Histogram counts bit-packed with their range (about 60 bytes for 64 bins, not 256).

Every stored histogram is rewritten: its uint32 or uint64 counts become the packed
layout of `layerwatch_server.store.codec.pack_histograms`, and a range exactly
representable as float32 moves from the ``lo``/``hi`` columns into the packed bytes.
Downgrade writes the old layout back. No column changes.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from layerwatch_server.store import codec

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHUNK = 2000

_histograms = sa.table(
    "histograms",
    sa.column("tensor_id", sa.Integer()),
    sa.column("step", sa.BigInteger()),
    sa.column("rank", sa.Integer()),
    sa.column("bins", sa.Integer()),
    sa.column("lo", sa.Double()),
    sa.column("hi", sa.Double()),
    sa.column("counts", sa.LargeBinary()),
)
_KEY = (_histograms.c.tensor_id, _histograms.c.step, _histograms.c.rank)


def _rewrite(convert) -> None:  # type: ignore[no-untyped-def]
    """Apply ``convert(rows) -> [(counts, lo, hi)]`` to every histogram, a chunk at a time."""
    connection = op.get_bind()
    after = None
    update = (
        sa.update(_histograms)
        .where(
            _histograms.c.tensor_id == sa.bindparam("k_tensor"),
            _histograms.c.step == sa.bindparam("k_step"),
            _histograms.c.rank == sa.bindparam("k_rank"),
        )
        .values(counts=sa.bindparam("v_counts"), lo=sa.bindparam("v_lo"),
                hi=sa.bindparam("v_hi"))
    )  # fmt: skip
    while True:
        query = sa.select(*_KEY, _histograms.c.bins, _histograms.c.lo, _histograms.c.hi,
                          _histograms.c.counts).order_by(*_KEY).limit(CHUNK)  # fmt: skip
        if after is not None:
            query = query.where(sa.tuple_(*_KEY) > sa.tuple_(*after))
        rows = connection.execute(query).all()
        if not rows:
            return
        converted = convert(rows)
        connection.execute(update, [
            {"k_tensor": row[0], "k_step": row[1], "k_rank": row[2],
             "v_counts": counts, "v_lo": lo, "v_hi": hi}
            for row, (counts, lo, hi) in zip(rows, converted, strict=True)
        ])  # fmt: skip
        after = tuple(rows[-1][:3])


def _to_packed(rows):  # type: ignore[no-untyped-def]
    counts = [codec.unpack_counts(bytes(row.counts), row.bins).tolist() for row in rows]
    packed, lo, hi = codec.pack_histograms(counts, [row.lo for row in rows],
                                           [row.hi for row in rows])  # fmt: skip
    return list(zip(packed, lo, hi, strict=True))


def _to_plain(rows):  # type: ignore[no-untyped-def]
    blobs = [bytes(row.counts) for row in rows]
    counts = codec.unpack_histogram_counts(blobs, [row.bins for row in rows])
    plain = []
    for row, blob, values in zip(rows, blobs, counts, strict=True):
        lo, hi = (row.lo, row.hi)
        if blob[0] & codec.BOUNDS:
            lo, hi = codec.unpack_bounds(blob, row.lo, row.hi)
        plain.append((codec.pack_counts(values.tolist()), lo, hi))
    return plain


def upgrade() -> None:
    _rewrite(_to_packed)


def downgrade() -> None:
    _rewrite(_to_plain)

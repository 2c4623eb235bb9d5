from __future__ import annotations

from layerwatch import wire
from layerwatch.delivery.spool.base import Outgoing
from layerwatch.delivery.spool.memory import MemorySpool


def test_memory_spool_evicts_the_oldest_beyond_its_bound() -> None:
    spool = MemorySpool(max_records=10)
    assert spool.push(outgoing(1, 4)) == []
    assert spool.push(outgoing(2, 4)) == []
    evicted = spool.push(outgoing(3, 4))
    assert [o.seq for o in evicted] == [1]
    assert len(spool) == 2
    spool.push_front([outgoing(7, 1), outgoing(8, 1)])
    assert [spool.pop().seq for _ in range(len(spool))] == [7, 8, 2, 3]
    assert spool.peek() is None
    big = MemorySpool(max_records=1)
    assert big.push(outgoing(1, 50)) == []  # one batch always fits


def test_memory_spool_gives_everything_up_when_closed() -> None:
    spool = MemorySpool(max_records=10)
    spool.push(outgoing(1, 2))
    spool.push(outgoing(2, 2))
    assert [o.seq for o in spool.close("finished")] == [1, 2]
    assert len(spool) == 0
    assert (spool.spooled, spool.discarded) == (0, 0)  # nothing outlives the process


def outgoing(seq: int, records: int) -> Outgoing:
    scalars = wire.Scalars(name="x", steps=list(range(records)), values=[0.0] * records)
    return Outgoing(seq, wire.Batch(batch_id=f"b{seq}", scalars=[scalars]), records)

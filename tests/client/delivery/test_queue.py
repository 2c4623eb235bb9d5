from __future__ import annotations

from layerwatch.delivery.queue import Buffer, FlushRequest
from layerwatch.records import ScalarRecord


def test_put_never_blocks_and_counts_drops() -> None:
    buffer = Buffer(2)
    records = [ScalarRecord(step, "x", 1.0, 0.0) for step in range(5)]
    assert [buffer.put(r) for r in records] == [True, True, False, False, False]
    assert buffer.dropped == 3
    assert buffer.get(0) == records[0]
    assert buffer.put_control(FlushRequest(), timeout=0)
    assert not buffer.put_control(FlushRequest(), timeout=0)  # full again, and it said so
    assert buffer.dropped == 3  # control items are not records
    assert buffer.get(0) == records[1]
    assert isinstance(buffer.get(0), FlushRequest)
    assert buffer.get(0.01) is None

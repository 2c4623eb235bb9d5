"""DiskSpool and its files: order, acks, compaction, bound, torn tails, crashes, the lock."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from layerwatch import wire
from layerwatch.delivery.spool import disk
from layerwatch.delivery.spool.base import Outgoing
from layerwatch.delivery.spool.disk import DiskSpool, open_run_spool
from layerwatch.delivery.spool.files import read_spool_info, resolve_spool_root
from layerwatch.errors import ConfigError, SpoolLockedError


def outgoing(seq: int, records: int = 2, name: str = "x") -> Outgoing:
    scalars = wire.Scalars(name=name, steps=list(range(records)), values=[seq / 3] * records)
    return Outgoing(seq, wire.Batch(batch_id=f"b{seq}", scalars=[scalars]), records)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def crash(spool: DiskSpool) -> None:
    """Let go of the files as a killed process would: no acks written, nothing removed."""
    if spool._active_fd >= 0:
        os.close(spool._active_fd)
    os.close(spool._lock_fd)
    spool._closed = True


def drain(spool: DiskSpool) -> list[str]:
    return [spool.pop().batch.batch_id for _ in range(len(spool))]


def test_round_trip_keeps_order_records_and_bytes(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path / "run")
    sent = [outgoing(seq) for seq in (1, 2, 3)]
    for batch in sent:
        assert spool.push(batch) == []
    assert len(spool) == 3
    assert spool.spooled == 6
    crash(spool)
    again = DiskSpool(tmp_path / "run")
    assert len(again) == 3
    assert again.spooled == 6
    for original in sent:
        head = again.pop()
        assert head.batch == original.batch
        assert head.body == original.body  # the very bytes sent: a replay is a duplicate
        assert head.records == 2
        assert head.seq == 0  # batches of an earlier process precede this one's
    assert again.peek() is None
    again.close()


def test_acks_delete_segments_and_an_empty_spool_its_directory(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    spool = DiskSpool(directory, segment_bytes=600)  # a few batches per segment
    for seq in range(1, 11):
        spool.push(outgoing(seq))
    assert len(segments(directory)) >= 3
    before = len(segments(directory))
    for _ in range(6):
        spool.pop()
    spool.peek()  # acks are written with the next call
    assert 0 < len(segments(directory)) < before
    drain(spool)
    spool.peek()
    assert segments(directory) == []
    spool.push(outgoing(11))
    spool.close()  # something left: kept for `layerwatch sync`
    assert len(segments(directory)) == 1
    spool = DiskSpool(directory)
    assert drain(spool) == ["b11"]
    spool.close()
    assert not directory.exists()


def test_acks_survive_a_crash(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path / "run", segment_bytes=500)
    for seq in range(1, 7):
        spool.push(outgoing(seq))
    assert [spool.pop().batch.batch_id for _ in range(4)] == ["b1", "b2", "b3", "b4"]
    spool.push(outgoing(7))  # writes the acks
    crash(spool)
    again = DiskSpool(tmp_path / "run")
    assert drain(again) == ["b5", "b6", "b7"]
    again.close()


def test_an_ack_not_yet_written_means_a_replay_not_a_loss(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path / "run")
    spool.push(outgoing(1))
    spool.push(outgoing(2))
    spool.pop()
    crash(spool)  # before the ack of b1 was written
    again = DiskSpool(tmp_path / "run")
    assert drain(again) == ["b1", "b2"]  # b1 again: the server answers it as a duplicate
    again.close()


def test_split_halves_replace_their_parent_atomically(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path / "run")
    spool.push(outgoing(1, records=4))
    spool.push(outgoing(2))
    parent = spool.pop()
    halves = [outgoing(1, records=2, name="first"), outgoing(1, records=2, name="second")]
    halves[0].batch = halves[0].batch.model_copy(update={"batch_id": "h1"})
    halves[1].batch = halves[1].batch.model_copy(update={"batch_id": "h2"})
    spool.push_front(halves)
    assert parent.batch.batch_id == "b1"
    assert spool.spooled == 6
    crash(spool)
    again = DiskSpool(tmp_path / "run")
    assert drain(again) == ["h1", "h2", "b2"]
    again.close()


def test_the_bound_evicts_the_oldest(tmp_path: Path) -> None:
    one = len(outgoing(1).batch.model_dump_json())
    spool = DiskSpool(tmp_path / "run", max_bytes=3 * one + 10)
    evicted = [e.batch.batch_id for seq in range(1, 6) for e in spool.push(outgoing(seq))]
    assert evicted == ["b1", "b2"]
    assert spool.spooled == 6
    crash(spool)
    again = DiskSpool(tmp_path / "run")
    assert drain(again) == ["b3", "b4", "b5"]  # the evictions were acknowledged on disk
    again.close()
    big = DiskSpool(tmp_path / "big", max_bytes=1)
    assert big.push(outgoing(1, records=50)) == []  # one batch always fits
    big.close()


def test_a_torn_tail_keeps_everything_before_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = DiskSpool(tmp_path / "run")
    for seq in (1, 2, 3):
        spool.push(outgoing(seq))
    crash(spool)
    [segment] = segments(tmp_path / "run")
    data = segment.read_bytes()
    segment.write_bytes(data[: len(data) - 7])  # the last record cut short mid-write
    with caplog.at_level(logging.WARNING, logger="layerwatch"):
        again = DiskSpool(tmp_path / "run")
    assert drain(again) == ["b1", "b2"]
    assert [r.getMessage() for r in caplog.records if "torn" in r.getMessage()] != []
    again.close()


def test_a_flipped_byte_stops_the_reader_there(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = DiskSpool(tmp_path / "run")
    for seq in (1, 2, 3, 4):
        spool.push(outgoing(seq))
    crash(spool)
    [segment] = segments(tmp_path / "run")
    data = bytearray(segment.read_bytes())
    third = data.index(b'"b3"')
    data[third + 1] ^= 0x01  # inside the third record's body
    segment.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="layerwatch"):
        again = DiskSpool(tmp_path / "run")
        assert drain(again) == ["b1", "b2"]
    [warning] = [r for r in caplog.records if "damaged" in r.getMessage()]
    assert segment.name in warning.getMessage()
    again.close()


def test_garbage_in_a_segment_is_not_fatal(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    directory.mkdir()
    (directory / "0000000001.seg").write_bytes(b"LWS1" + b"\xff" * 64)
    (directory / "0000000002.seg").write_bytes(b"")
    spool = DiskSpool(directory)
    assert len(spool) == 0
    spool.push(outgoing(1))  # goes to a new segment after the damaged ones
    assert drain(spool) == ["b1"]
    spool.close()
    assert not directory.exists()


def test_an_unreadable_batch_is_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = DiskSpool(tmp_path / "run")
    bad = outgoing(1, records=3)
    bad.body = b'{"batch_id": "not a batch"'  # checksummed fine, but not a Batch
    spool.push(bad)
    spool.push(outgoing(2))
    crash(spool)
    again = DiskSpool(tmp_path / "run")
    with caplog.at_level(logging.ERROR, logger="layerwatch"):
        assert again.peek() is not None
    assert drain(again) == ["b2"]
    assert again.discarded == 3
    assert any("unreadable" in r.getMessage() for r in caplog.records)
    again.close()


def test_the_lock_is_exclusive(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    spool = DiskSpool(directory)
    spool.push(outgoing(1))
    with pytest.raises(SpoolLockedError):
        DiskSpool(directory)
    other_process = subprocess.run(
        [sys.executable, "-c",
         "import sys; from layerwatch.delivery.spool.disk import DiskSpool; "
         "from layerwatch.errors import SpoolLockedError\n"
         "try: DiskSpool(sys.argv[1])\nexcept SpoolLockedError: sys.exit(3)",
         str(directory)],
        check=False,
    )  # fmt: skip
    assert other_process.returncode == 3
    spool.close()
    again = DiskSpool(directory)  # free again
    assert len(again) == 1
    again.close()


def test_a_run_takes_the_next_directory_when_its_own_is_held(tmp_path: Path) -> None:
    run = wire.RunCreate(id="r1", project="p")
    first = open_run_spool(tmp_path, server="http://a", run=run, max_bytes=1 << 20)
    second = open_run_spool(tmp_path, server="http://a", run=run, max_bytes=1 << 20)
    assert (first.directory.name, second.directory.name) == ("r1", "r1.1")
    info = read_spool_info(second.directory)
    assert info is not None
    assert (info.server, info.run, info.status) == ("http://a", run, None)
    second.push(outgoing(1))
    second.close("finished")  # the status the server did not take is kept for sync
    info = read_spool_info(second.directory)
    assert info is not None
    assert info.status == "finished"
    first.close()
    assert not first.directory.exists()


def test_resolve_spool_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAYERWATCH_SPOOL_DIR", str(tmp_path))
    assert resolve_spool_root(True) == tmp_path
    monkeypatch.delenv("LAYERWATCH_SPOOL_DIR")
    assert resolve_spool_root(True) == Path.home() / ".cache" / "layerwatch" / "spool"
    assert resolve_spool_root(None) is None
    assert resolve_spool_root(False) is None
    assert resolve_spool_root("~/x") == Path.home() / "x"
    with pytest.raises(ConfigError):
        resolve_spool_root(3)


def test_a_full_disk_keeps_batches_in_memory_and_loses_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spool = DiskSpool(tmp_path / "run")
    spool.push(outgoing(1))
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(disk.os, "write", full)
    with caplog.at_level(logging.ERROR, logger="layerwatch"):
        for seq in (2, 3, 4):
            assert spool.push(outgoing(seq)) == []
    assert len([r for r in caplog.records if "cannot write the spool" in r.getMessage()]) == 1
    assert len(spool) == 4
    assert spool.spooled == 2  # only the first batch reached the disk
    monkeypatch.setattr(disk.os, "write", real_write)
    spool.push(outgoing(5))  # space again
    assert drain(spool) == ["b1", "b2", "b3", "b4", "b5"]  # in order, none lost
    spool.close()

"""The probe queue: bounded in bytes, kept on disk beside the spool, reloaded after."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import numpy as np

from layerwatch import wire
from layerwatch.delivery.probes import PendingProbe, ProbeQueue
from layerwatch.delivery.spool.disk import DiskSpool
from layerwatch.delivery.spool.files import SpoolInfo, write_spool_info
from layerwatch.delivery.spool.probe_files import PROBE_DIR, ProbeFiles


def probe(step: int, layers: int = 2) -> wire.Probe:
    values = base64.b64encode(np.arange(6, dtype="<f2").tobytes())
    return wire.Probe(
        step=step,
        samples=3,
        layers=[
            wire.ProbeLayer(name=f"l{i}", features_shape=[3, 2], features=values)
            for i in range(layers)
        ],
    )


def test_memory_only_probes_are_bounded_and_dropped_at_the_end() -> None:
    queue = ProbeQueue(max_bytes=100)
    assert queue.submit(probe(0), 60)
    assert not queue.submit(probe(1), 60)  # past the bound: dropped and counted
    assert queue.submit(probe(2, layers=3), 40)
    assert (len(queue), queue.dropped) == (2, 2)
    queue.persist()  # no disk: nothing happens
    queue.close()
    assert (queue.dropped, queue.spooled) == (2 + 2 + 3, 0)


def test_probes_on_disk_outlive_the_queue_and_come_back_in_order(tmp_path: Path) -> None:
    queue = ProbeQueue()
    queue.keep_on_disk(tmp_path)
    for step in (5, 10, 15):
        queue.submit(probe(step), 100)
    queue.persist()
    files = sorted((tmp_path / PROBE_DIR).glob("*.probe"))
    assert len(files) == 3
    assert queue.spooled == 6
    first = queue.head()
    assert first is not None
    queue.settle(first)  # delivered: its file goes
    assert len(list((tmp_path / PROBE_DIR).glob("*.probe"))) == 2
    queue.close()
    assert (queue.spooled, queue.dropped) == (4, 0)

    again = ProbeQueue()  # the next process of the run
    again.keep_on_disk(tmp_path)
    steps = []
    while (pending := again.head()) is not None:
        steps.append(wire.Probe.model_validate_json(pending.json()).step)
        assert pending.rows == 2
        again.settle(pending)
    assert steps == [10, 15]
    assert not (tmp_path / PROBE_DIR).exists()  # the emptied folder is removed too


def test_a_damaged_probe_file_is_skipped(tmp_path: Path, caplog) -> None:
    files = ProbeFiles(tmp_path)
    good = files.save(probe(1).model_dump_json().encode())
    bad = files.save(probe(2).model_dump_json().encode())
    assert good is not None
    assert bad is not None
    bad.write_bytes(bad.read_bytes()[:-10])  # a torn write
    queue = ProbeQueue()
    with caplog.at_level(logging.WARNING, logger="layerwatch"):
        queue.keep_on_disk(tmp_path)
    assert len(queue) == 1
    assert "damaged probe file" in caplog.text
    assert not bad.exists()


def test_a_split_probe_is_persisted_as_its_halves(tmp_path: Path) -> None:
    queue = ProbeQueue()
    queue.keep_on_disk(tmp_path)
    queue.submit(probe(3, layers=3), 100)
    queue.persist()
    pending = queue.head()
    assert pending is not None
    assert queue.split(pending)
    files = sorted((tmp_path / PROBE_DIR).glob("*.probe"))
    assert len(files) == 2  # the parent's file replaced by the halves'
    halves = []
    while (part := queue.head()) is not None:
        halves.append([layer.name for layer in wire.Probe.model_validate_json(part.json()).layers])
        queue.settle(part)
    assert halves == [["l0"], ["l1", "l2"]]
    single = ProbeQueue()
    single.submit(probe(4, layers=1), 10)
    head = single.head()
    assert head is not None
    assert not single.split(head)  # one layer cannot be halved


def test_a_spool_with_probes_left_keeps_its_directory(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    spool = DiskSpool(directory)
    write_spool_info(directory, SpoolInfo(server="http://x", run=wire.RunCreate(id="r")))
    ProbeFiles(directory).save(probe(1).model_dump_json().encode())
    spool.close()
    assert (directory / "run.json").exists()  # sync needs it to send the probe

    spool = DiskSpool(directory)
    for path in ProbeFiles(directory).pending():
        ProbeFiles(directory).delete(path)
    spool.close()
    assert not directory.exists()


def test_the_body_names_skipped_layers_only_when_there_are_some() -> None:
    plain = PendingProbe(probe(0), 24, 2)
    assert b'"skipped"' not in plain.json()  # what servers before the field take
    left_out = [wire.ProbeSkipped(name="gru", reason="output (7, 3, 5) is not batch-first")]
    noted = PendingProbe(probe(0).model_copy(update={"skipped": left_out}), 24, 2)
    assert wire.Probe.model_validate_json(noted.json()).skipped == left_out

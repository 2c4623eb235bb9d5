"""Storing batches on SQLite and PostgreSQL: round trips, idempotency, conflicts, NaN."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest
from batches import (
    count_rows,
    histogram,
    make_batch,
    model_tree,
    new_id,
    same_floats,
    sample_batch,
    scalars_block,
    stats_block,
    store_batch,
    store_run,
    unit_means_block,
    weight_changes_block,
)
from sqlalchemy.orm import Session

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.errors import Conflict, RunNotFound, TensorNotFound

INF = math.inf


NAN = math.nan


def series(
    session: Session, run_id: str, *, stat: wire.StatName = "mean", **query: object
) -> list[float]:
    """Values of a statistic of the activation `fc1`."""
    return store.get_series(
        session, run_id, tensor="fc1", kind="activation", stat=stat, **query
    ).values


def test_ingest_round_trip(session: Session) -> None:
    run_id = store_run(session)
    steps = [0, 10, 20]
    stats = stats_block("fc1", steps, mean=[0.5, -1.25, 3e-300], numel=[8, 8, 2**62])
    batch = make_batch(
        tensors=[
            {"name": "fc1", "kind": "activation", "module_type": "Linear", "shape": [4, 8]},
            {"name": "fc1.weight", "kind": "weight", "dtype": "torch.float32"},
        ],
        stats=[stats, stats_block("fc1.weight", steps, kind="weight")],
        histograms=[
            histogram("fc1", 0, [1, 2, 3, 4], lo=-2.0, hi=2.0),
            histogram("fc1", 10, [5, 0, 7], edges=[-1.0, 0.0, 0.5, 10.0]),
            histogram("fc1", 20, [2**40, 2**63 - 1], lo=0.0, hi=1.0),  # needs uint64
        ],
        scalars=[scalars_block("loss", steps, [2.0, 1.0, 0.5], times=[1e9, 1e9 + 1, 1e9 + 2])],
    )

    receipt = store_batch(session, run_id, batch)

    assert receipt == wire.BatchReceipt(
        batch_id=batch.batch_id, duplicate=False, stats=6, histograms=3, scalars=3
    )
    for stat in wire.STAT_NAMES:
        got = store.get_series(session, run_id, tensor="fc1", kind="activation", stat=stat)
        assert got.steps == steps
        assert got.values == [float(v) for v in stats[stat]], stat
        assert (got.total, got.downsampled, got.next_after_step) == (3, False, None)
    weight = store.get_series(session, run_id, tensor="fc1.weight", kind="weight", stat="l2")
    assert weight.values == stats_block("fc1.weight", steps, kind="weight")["l2"]

    tensors = store.list_tensors(session, run_id)
    assert [(t.name, t.kind, t.module_type, t.shape, t.dtype) for t in tensors.data] == [
        ("fc1", "activation", "Linear", [4, 8], None),
        ("fc1.weight", "weight", None, None, "torch.float32"),
    ]
    assert store.list_tensors(session, run_id, kind="weight").count == 1

    hists = store.get_histograms(session, run_id, tensor="fc1", kind="activation")
    assert [(h.step, h.counts) for h in hists.data] == [
        (0, [1, 2, 3, 4]),
        (10, [5, 0, 7]),
        (20, [2**40, 2**63 - 1]),
    ]
    assert hists.data[0].edges == [-2.0, -1.0, 0.0, 1.0, 2.0]
    assert hists.data[1].edges == [-1.0, 0.0, 0.5, 10.0]
    assert hists.data[2].edges == [0.0, 0.5, 1.0]

    assert store.list_scalar_names(session, run_id).data == ["loss"]
    loss = store.get_scalar_series(session, run_id, name="loss")
    assert (loss.steps, loss.values, loss.times) == (
        steps,
        [2.0, 1.0, 0.5],
        [1e9, 1e9 + 1, 1e9 + 2],
    )
    assert count_rows(session, run_id) == {
        "tensors": 2,
        "stats": 6,
        "histograms": 3,
        "scalars": 3,
        "unit_means": 0,
        "weight_changes": 0,
        "modules": 0,
        "batches": 1,
    }


def test_unit_means_weight_changes_and_model_tree_round_trip(session: Session) -> None:
    run_id = store_run(session)
    receipt = store_batch(session, run_id, sample_batch(steps=(0, 4, 8)))
    assert (receipt.unit_means, receipt.weight_changes, receipt.models) == (3, 3, 1)

    means = store.get_unit_means(session, run_id, tensor="fc1")
    assert (means.steps, means.units, means.next_after_step) == ([0, 4, 8], 4, None)
    assert means.values == [[s + u / 4 for u in range(4)] for s in (0, 4, 8)]
    page = store.get_unit_means(session, run_id, tensor="fc1", limit=2)
    assert (page.steps, page.next_after_step) == ([0, 4], 4)

    changes = store.get_weight_changes(session, run_id, tensor="fc1.weight", start=4)
    assert changes.steps == [4, 8]
    assert changes.since_prev == [0.1 / 5, 0.1 / 9]
    assert changes.since_init == [0.04, 0.08]
    first = store.get_weight_changes(session, run_id, tensor="fc1.weight", end=0)
    assert math.isnan(first.since_prev[0])  # no previous capture

    [tree] = store.get_model_trees(session, run_id).data
    assert (tree.name, tree.rank, tree.params) == ("Net", 0, 80)
    assert [(m.path, m.type, m.outputs) for m in tree.modules] == [
        ("", "Net", [[8, 16]]),
        ("fc1", "Linear", [[8, 16]]),
        ("act", "ReLU", None),
    ]
    with pytest.raises(TensorNotFound):
        store.get_unit_means(session, run_id, tensor="fc9")
    with pytest.raises(TensorNotFound):  # weight changes are of weights only
        store.get_weight_changes(session, run_id, tensor="fc1")


def test_a_model_tree_sent_again_keeps_the_first(session: Session) -> None:
    run_id = store_run(session)
    store_batch(session, run_id, make_batch(models=[model_tree()]))
    changed = model_tree()
    changed["modules"][1]["params"] = 99
    receipt = store_batch(session, run_id, make_batch(models=[changed, model_tree("Other")]))
    assert receipt.models == 2

    trees = store.get_model_trees(session, run_id).data
    assert [(t.name, t.params) for t in trees] == [("Net", 80), ("Other", 80)]
    assert store.get_model_trees(session, run_id, rank=1).data == []


def test_ingest_multi_step_histograms_with_packed_counts(session: Session) -> None:
    run_id = store_run(session)
    packed = [np.array([1, 0, 2**32 - 1], "<u4"), np.array([7, 8, 9], "<u4")]
    block = {
        "name": "fc1.weight",
        "kind": "weight",
        "steps": [3, 4],
        "counts": [base64.b64encode(c.tobytes()).decode() for c in packed],
        "lo": [-1.0, -2.0],
        "hi": [1.0, 2.0],
        "sample_size": [65536, None],  # estimated from a sample at step 3, exact at 4
    }
    store_batch(session, run_id, make_batch(histograms=[block]))

    hists = store.get_histograms(session, run_id, tensor="fc1.weight", kind="weight")
    assert [(h.step, h.counts) for h in hists.data] == [(3, [1, 0, 2**32 - 1]), (4, [7, 8, 9])]
    assert [h.sample_size for h in hists.data] == [65536, None]
    assert np.allclose(hists.data[0].edges, [-1.0, -1 / 3, 1 / 3, 1.0])
    assert np.allclose(hists.data[1].edges, [-2.0, -2 / 3, 2 / 3, 2.0])


def test_replayed_batch_is_a_duplicate_and_stores_nothing_more(session: Session) -> None:
    run_id = store_run(session)
    batch = sample_batch()
    first = store_batch(session, run_id, batch)
    rows = count_rows(session, run_id)

    again = store_batch(session, run_id, batch)

    assert again.duplicate
    assert (again.stats, again.histograms, again.scalars) == (
        first.stats,
        first.histograms,
        first.scalars,
    )
    assert count_rows(session, run_id) == rows


def test_same_rows_under_a_new_batch_id_are_accepted_once(session: Session) -> None:
    run_id = store_run(session)
    batch = sample_batch()
    store_batch(session, run_id, batch)
    rows = count_rows(session, run_id)

    resent = batch.model_copy(update={"batch_id": new_id("b")})
    receipt = store_batch(session, run_id, resent)

    assert not receipt.duplicate
    assert count_rows(session, run_id) == {**rows, "batches": rows["batches"] + 1}


def test_new_batch_overlapping_stored_rows_keeps_the_old_and_adds_the_new(
    session: Session,
) -> None:
    run_id = store_run(session)
    store_batch(session, run_id, make_batch(stats=[stats_block("fc1", [0, 1])]))
    store_batch(session, run_id, make_batch(stats=[stats_block("fc1", [1, 2, 3])]))

    got = store.get_series(session, run_id, tensor="fc1", kind="activation", stat="mean")
    assert got.steps == [0, 1, 2, 3]
    assert got.values == stats_block("fc1", [0, 1, 2, 3])["mean"]


def _conflicting(part: str) -> wire.Batch:
    """A batch of new, valid rows plus one `part` row contradicting `sample_batch()`."""
    good = {
        "stats": [stats_block("fc2", [0, 1, 2])],
        "histograms": [histogram("fc2", 0, [9, 9])],
        "scalars": [scalars_block("acc", [0, 1], [0.1, 0.2])],
        "tensors": [{"name": "fc3", "kind": "grad"}],
        "unit_means": [unit_means_block("fc2", [0, 1])],
        "weight_changes": [weight_changes_block("fc2.weight", [0, 1])],
    }
    bad = {
        "stats": stats_block("fc1", [1], mean=[123.0]),
        "histograms": histogram("fc1", 0, [1, 2, 3, 5]),
        "scalars": scalars_block("loss", [2], [7.0]),
        "unit_means": unit_means_block("fc1", [1], units=3),
        "weight_changes": {**weight_changes_block("fc1.weight", [2]), "since_init": [0.5]},
    }[part]
    good[part] = [*good[part], bad]
    return make_batch(**good)


@pytest.mark.parametrize("part", ["stats", "histograms", "scalars", "unit_means", "weight_changes"])
def test_conflicting_values_refuse_the_whole_batch(session: Session, part: str) -> None:
    run_id = store_run(session)
    stored = sample_batch()
    store_batch(session, run_id, stored)
    rows = count_rows(session, run_id)
    before = series(session, run_id)

    with pytest.raises(Conflict, match="different values"):
        store_batch(session, run_id, _conflicting(part))

    assert count_rows(session, run_id) == rows  # not even the batch's good rows
    assert [t.name for t in store.list_tensors(session, run_id).data] == ["fc1", "fc1.weight"]
    assert series(session, run_id) == before
    assert store.get_scalar_series(session, run_id, name="loss").values == [1.0, 0.5, 1 / 3]
    hist = store.get_histograms(session, run_id, tensor="fc1", kind="activation", step=0)
    assert hist.data[0].counts == [1, 2, 3, 4]


def test_reused_batch_id_with_other_content_is_a_conflict(session: Session) -> None:
    run_id = store_run(session)
    batch = sample_batch()
    store_batch(session, run_id, batch)
    rows = count_rows(session, run_id)
    other = make_batch(batch_id=batch.batch_id, stats=[stats_block("fc9", [100])])

    with pytest.raises(Conflict, match="already stored with different content"):
        store_batch(session, run_id, other)

    assert count_rows(session, run_id) == rows


def test_a_key_repeated_within_one_batch(session: Session) -> None:
    run_id = store_run(session)
    twice = make_batch(stats=[stats_block("fc1", [0, 1]), stats_block("fc1", [1, 2])])
    receipt = store_batch(session, run_id, twice)
    assert not receipt.duplicate
    assert count_rows(session, run_id)["stats"] == 3

    contradicting = make_batch(
        scalars=[scalars_block("loss", [5], [1.0]), scalars_block("loss", [5], [2.0])]
    )
    with pytest.raises(Conflict, match="twice"):
        store_batch(session, run_id, contradicting)
    assert count_rows(session, run_id)["scalars"] == 0


def test_non_finite_values_are_stored_faithfully(session: Session) -> None:
    run_id = store_run(session)
    odd = [NAN, INF, -INF, 0.0, -0.0, 1e308, 5e-324]
    steps = list(range(len(odd)))
    batch = make_batch(
        stats=[stats_block("fc1", steps, **{stat: odd for stat in wire.STAT_NAMES[:7]})],
        scalars=[scalars_block("loss", steps, odd)],
    )
    store_batch(session, run_id, batch)

    for stat in wire.STAT_NAMES[:7]:
        got = store.get_series(session, run_id, tensor="fc1", kind="activation", stat=stat)
        assert same_floats(got.values, odd), stat
        assert math.copysign(1.0, got.values[4]) in (1.0, -1.0)  # a zero, of either sign
    assert same_floats(store.get_scalar_series(session, run_id, name="loss").values, odd)

    # The same non-finite rows sent again are recognised as equal, not as a conflict.
    receipt = store_batch(session, run_id, batch.model_copy(update={"batch_id": new_id("b")}))
    assert not receipt.duplicate
    assert count_rows(session, run_id)["stats"] == len(odd)
    with pytest.raises(Conflict):
        store_batch(session, run_id, make_batch(scalars=[scalars_block("loss", [0], [1.0])]))
    with pytest.raises(Conflict):
        store_batch(session, run_id, make_batch(scalars=[scalars_block("loss", [1], [-INF])]))


def test_ranks_are_stored_apart(session: Session) -> None:
    run_id = store_run(session)
    store_batch(session, run_id, make_batch(stats=[stats_block("fc1", [0, 1])], rank=0))
    store_batch(session, run_id, make_batch(stats=[stats_block("fc1", [0, 1], offset=9)], rank=3))

    assert series(session, run_id, stat="mean") == [0.0, 0.5]
    assert series(session, run_id, stat="mean", rank=3) == [9.0, 9.5]
    assert series(session, run_id, stat="mean", rank=1) == []


def test_tensor_metadata_fills_gaps(session: Session) -> None:
    run_id = store_run(session)
    store_batch(session, run_id, make_batch(stats=[stats_block("fc1", [0])]))
    assert store.list_tensors(session, run_id).data[0].shape is None

    info = {"name": "fc1", "kind": "activation", "module_type": "Linear", "shape": [2, 3]}
    store_batch(session, run_id, make_batch(tensors=[info], stats=[stats_block("fc1", [1])]))
    store_batch(session, run_id, make_batch(tensors=[{"name": "fc1", "kind": "activation"}]))

    (tensor,) = store.list_tensors(session, run_id).data
    assert (tensor.module_type, tensor.shape) == ("Linear", [2, 3])


def test_ingest_into_an_unknown_run_is_refused(session: Session) -> None:
    with pytest.raises(RunNotFound):
        store_batch(session, new_id("r"), sample_batch())

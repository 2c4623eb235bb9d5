"""Everything the server refuses in a batch, a run or a query: a 4xx naming the problem, and
nothing stored.

Each refused batch is otherwise valid and full of good rows, so "nothing
stored" shows the whole batch was refused, not just its bad part."""

from __future__ import annotations

import base64
import copy
import gzip
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
from batches import (
    Doc,
    assert_nothing_stored,
    create_run,
    histogram,
    make_batch,
    new_id,
    scalars_block,
    stats_block,
    valid_doc,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from auth_headers import auth_headers
from layerwatch import wire
from layerwatch_server.models import (
    SqlHistogram,
    SqlModule,
    SqlProbe,
    SqlProbeAttributions,
    SqlProbeLayer,
    SqlScalar,
    SqlStat,
    SqlTensor,
    SqlUnitMean,
    SqlWeightChange,
)


def valid_probe() -> Doc:
    """A valid probe of 3 samples and two layers, as the JSON a client would send."""

    def packed(dtype: str, values: list[float]) -> str:
        return base64.b64encode(np.array(values, dtype=dtype).tobytes()).decode()

    return {
        "step": 3,
        "samples": 3,
        "labels": packed("<i4", [0, 1, 1]),
        "predictions": packed("<i4", [0, 1, 0]),
        "layers": [
            {"name": "fc1", "features_shape": [3, 2],
             "features": packed("<f2", [1, 2, 3, 4, 5, 6])},
            {"name": "conv", "features_shape": [3, 1], "features": packed("<f2", [0, 1, 2]),
             "source_shape": [1, 2, 2], "reduced": "pooled", "maps_shape": [1, 1, 2, 2],
             "maps": packed("<f2", [1, 2, 3, 4])},
        ],
        "attributions": {"shape": [2, 2], "values": packed("<f4", [0.5, -1, 0, 2]),
                         "targets": packed("<i4", [0, 1]), "steps": 16, "deltas": [0.0, 1e-3]},
    }  # fmt: skip


def test_the_valid_document_is_accepted(api: httpx.Client) -> None:
    run_id = create_run(api)
    response = api.post(f"/runs/{run_id}/batches", json=valid_doc())
    assert response.status_code == 200, response.text


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    """A mutation that sets ``doc[a][b]...`` for ``path`` = "a.b...", numbers as indices."""

    def mutate(doc: Doc) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        target = doc
        for key in parents:
            target = target[key]
        target[last] = value

    return mutate


_65_NAMES = [f"fc{i}" for i in range(65)]

BAD_BATCHES: dict[str, tuple[Callable[[Doc], Any], str]] = {
    # name rules
    "stats name over 250 chars": (_set("stats.0.name", "x" * 251), "name"),
    "stats name with a newline": (_set("stats.0.name", "fc\n1"), "name"),
    "scalar name with DEL": (_set("scalars.0.name", "loss\x7f"), "name"),
    "scalar name with a C1 control": (_set("scalars.0.name", "loss\x85"), "name"),
    "empty histogram name": (_set("histograms.0.name", ""), "name"),
    "tensor info name with NUL": (_set("tensors.0.name", "fc\x001"), "name"),
    "module type over 250 chars": (_set("tensors.0.module_type", "L" * 251), "module_type"),
    "dtype over 32 chars": (_set("tensors.0.dtype", "d" * 33), "dtype"),
    "negative shape": (_set("tensors.0.shape", [3, -1]), "shape"),
    "unknown kind": (_set("stats.1.kind", "bias"), "kind"),
    # steps and counts
    "negative step": (_set("stats.0.steps.1", -1), "steps"),
    "step over int64": (_set("stats.0.steps.1", 2**63), "steps"),
    "huge step": (_set("scalars.0.steps.0", 10**40), "steps"),
    "negative histogram step": (_set("histograms.0.steps.0", -5), "steps"),
    "fractional step": (_set("stats.0.steps.0", 0.5), "steps"),
    "empty steps": (lambda d: d["scalars"][0].update(steps=[], values=[], times=[]), "steps"),
    "repeated steps": (_set("stats.0.steps", [0, 1, 1]), "steps"),
    "repeated scalar steps": (_set("scalars.0.steps", [4, 4, 5]), "steps"),
    "negative numel": (_set("stats.0.numel.0", -1), "numel"),
    "nonfinite over int64": (_set("stats.0.nonfinite.0", 2**63), "nonfinite"),
    "string for a float": (_set("stats.0.mean.2", "big"), "mean"),
    "null for a float": (_set("stats.0.std.0", None), "std"),
    # histograms
    "513 bins": (_set("histograms.0.counts.0", [1] * 513), "counts"),
    "no bins": (_set("histograms.0.counts.0", []), "counts"),
    "negative count": (_set("histograms.0.counts.0.2", -3), "counts"),
    "count over int64": (_set("histograms.0.counts.0.2", 2**64), "counts"),
    "edges one short": (_set("histograms.1.edges.0", [0.0, 1.0, 2.0]), "edges"),
    "edges one too many": (_set("histograms.1.edges.0", [0.0, 1.0, 2.0, 3.0, 4.0]), "edges"),
    "edges decreasing": (_set("histograms.1.edges.0", [0.0, 2.0, 1.0, 3.0]), "edges"),
    "edges repeated": (_set("histograms.1.edges.0", [0.0, 1.0, 1.0, 3.0]), "edges"),
    "edges infinite": (_set("histograms.1.edges.0", [0.0, 1.0, 2.0, "Infinity"]), "edges"),
    "edges NaN": (_set("histograms.1.edges.0", ["NaN", 1.0, 2.0, 3.0]), "edges"),
    "edges and lo": (_set("histograms.1.lo", [0.0]), "edges"),
    "lo above hi": (lambda d: d["histograms"][0].update(lo=[2.0], hi=[1.0]), "lo"),
    "lo missing": (lambda d: d["histograms"][0].pop("lo"), "lo"),
    "hi infinite": (_set("histograms.0.hi.0", "Infinity"), "hi"),
    "histogram columns one short": (lambda d: d["histograms"][0]["lo"].pop(), "lo"),
    "packed counts not whole uint32s": (_set("histograms.0.counts.0", "AAAAAAA="), "counts"),
    "packed counts not base64": (_set("histograms.0.counts.0", "!!!!"), "counts"),
    "packed counts over 512 bins": (
        _set("histograms.0.counts.0", base64.b64encode(bytes(4 * 513)).decode()),
        "counts",
    ),
    # columns
    "stats column one short": (lambda d: d["stats"][0]["mean"].pop(), "mean"),
    "stats column one long": (lambda d: d["stats"][1]["zero_frac"].append(0.5), "zero_frac"),
    "stats column missing": (lambda d: d["stats"][0].pop("l2"), "l2"),
    "scalar values one short": (lambda d: d["scalars"][0]["values"].pop(), "values"),
    "scalar times one long": (lambda d: d["scalars"][0]["times"].append(9.0), "times"),
    "scalar time NaN": (_set("scalars.0.times.1", "NaN"), "times"),
    # envelope
    "schema version 2": (_set("schema_version", 2), "schema_version"),
    "schema version as string": (_set("schema_version", "1"), "schema_version"),
    "unknown top-level field": (_set("colour", "blue"), "colour"),
    "unknown nested field": (_set("stats.0.median", [1.0, 2.0, 3.0]), "median"),
    "batch id with a slash": (_set("batch_id", "../etc"), "batch_id"),
    "batch id with a space": (_set("batch_id", "a b"), "batch_id"),
    "batch id over 64 chars": (_set("batch_id", "b" * 65), "batch_id"),
    "batch id missing": (lambda d: d.pop("batch_id"), "batch_id"),
    "negative rank": (_set("rank", -1), "rank"),
    "rank over int32": (_set("rank", 2**31), "rank"),
    "stats not a list": (_set("stats", {"name": "fc1"}), "stats"),
    # unit means, weight changes, model trees
    "unit means not base64": (_set("unit_means.0.values.0", "%%%"), "values"),
    "unit means not whole floats": (_set("unit_means.0.values.0", "AAAAAAA="), "values"),
    "unit means of 4097 units": (
        _set("unit_means.0.values.0", base64.b64encode(bytes(4 * 4097)).decode()),
        "values",
    ),
    "unit means of varying width": (
        _set("unit_means.0.values.1", base64.b64encode(bytes(4 * 3)).decode()),
        "units",
    ),
    "unit means one short": (lambda d: d["unit_means"][0]["values"].pop(), "values"),
    "weight change column one short": (
        lambda d: d["weight_changes"][0]["since_init"].pop(),
        "since_init",
    ),
    "weight change as text": (_set("weight_changes.0.update_ratio.0", "big"), "update_ratio"),
    "model tree without modules": (_set("models.0.modules", []), "modules"),
    "model tree with a path twice": (_set("models.0.modules.2.path", "fc1"), "unique"),
    "module with negative params": (_set("models.0.modules.1.params", -1), "params"),
    "module shape negative": (_set("models.0.modules.1.outputs", [[8, -16]]), "outputs"),
    "module type empty": (_set("models.0.modules.1.type", ""), "type"),
    # non-finite events
    "negative non-finite step": (
        _set("nonfinite", [{"step": -1, "tensor": "fc1", "kind": "activation"}]),
        "step",
    ),
    "non-finite event of an unknown kind": (
        _set("nonfinite", [{"step": 3, "tensor": "fc1", "kind": "bias"}]),
        "kind",
    ),
    "non-finite tensor name with a newline": (
        _set("nonfinite", [{"step": 3, "tensor": "fc\n1", "kind": "grad"}]),
        "tensor",
    ),
    "non-finite event naming 65 others": (
        _set("nonfinite", [{"step": 3, "tensor": "fc1", "kind": "grad", "also": _65_NAMES}]),
        "also",
    ),
    "1025 non-finite events": (
        _set("nonfinite", [{"step": i, "tensor": "fc1", "kind": "grad"} for i in range(1025)]),
        "nonfinite",
    ),
    # what only lax parsing would take: the schema says integer, or number
    "boolean step": (_set("stats.0.steps.1", True), "steps"),
    "step as a string": (_set("stats.0.steps.1", "1"), "steps"),
    "count as a string": (_set("histograms.0.counts.0.2", "3"), "counts"),
    "boolean rank": (_set("rank", True), "rank"),
    "boolean in a module shape": (_set("models.0.modules.1.outputs", [[8, False]]), "outputs"),
    "number as a string": (_set("stats.0.mean.2", "1.5"), "mean"),
    "boolean for a float": (_set("stats.0.std.0", False), "std"),
    "lowercase nan": (_set("stats.0.std.0", "nan"), "std"),
}


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_invalid_batch_is_refused_whole(api: httpx.Client, case: str) -> None:
    mutate, named = BAD_BATCHES[case]
    doc = valid_doc()
    mutate(doc)
    run_id = create_run(api)

    response = api.post(f"/runs/{run_id}/batches", content=json.dumps(doc))

    assert response.status_code == 422, response.text
    assert named in response.text
    assert_nothing_stored(api, run_id)


def test_what_the_schema_allows_besides_is_accepted(api: httpx.Client) -> None:
    """Integers written as 3.0 (integers to JSON Schema); NaN and infinities as strings."""
    doc = valid_doc()
    doc["stats"][0]["steps"] = [0.0, 1.0, 2.0]
    doc["stats"][0]["mean"] = ["NaN", "Infinity", "-Infinity"]
    doc["scalars"][0]["values"][0] = "NaN"
    run_id = create_run(api)

    response = api.post(f"/runs/{run_id}/batches", content=json.dumps(doc))

    assert response.status_code == 200, response.text
    series = api.get(f"/runs/{run_id}/series", params={"tensor": "fc1"}).json()
    assert series["steps"] == [0, 1, 2]
    assert series["values"] == ["NaN", "Infinity", "-Infinity"]


def test_validation_errors_point_at_the_field(api: httpx.Client) -> None:
    doc = valid_doc()
    doc["stats"][1]["steps"][2] = -1
    run_id = create_run(api)

    detail = api.post(f"/runs/{run_id}/batches", json=doc).json()["detail"]

    assert [error["loc"] for error in detail] == [["stats", 1, "steps", 2]]
    assert "greater than or equal to 0" in detail[0]["msg"]


BAD_RUNS: dict[str, tuple[bytes, str]] = {
    "NaN in config": (b'{"config": {"lr": NaN}}', "config"),
    "lone surrogate in config": (b'{"config": {"opt": ["adam", "\\ud800"]}}', "config"),
    "lone surrogate in a config key": (b'{"config": {"a": {"\\udfff": 1}}}', "config"),
    "lone surrogate in a name": (b'{"name": "\\udc00"}', "name"),
    "Infinity deep in config": (b'{"config": {"sched": [1, {"max": -Infinity}]}}', "config"),
    "config key over 250 chars": (json.dumps({"config": {"k" * 251: 1}}).encode(), "config"),
    "name over 250 chars": (json.dumps({"name": "n" * 251}).encode(), "name"),
    "project with a tab": (json.dumps({"project": "a\tb"}).encode(), "project"),
    "empty project": (json.dumps({"project": ""}).encode(), "project"),
    "65 tags": (json.dumps({"tags": [f"t{i}" for i in range(65)]}).encode(), "tags"),
    "id with a slash": (json.dumps({"id": "a/b"}).encode(), "id"),
    "unknown field": (json.dumps({"owner": "me"}).encode(), "owner"),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_invalid_run_is_refused(api: httpx.Client, case: str) -> None:
    content, named = BAD_RUNS[case]

    def counts() -> tuple[int, int]:
        return api.get("/runs", params={"limit": 1}).json()["count"], len(
            api.get("/projects").json()["data"]
        )

    before = counts()
    response = api.post("/runs", content=content, headers={"Content-Type": "application/json"})

    assert response.status_code == 422, response.text
    assert named in response.text
    assert counts() == before


BAD_QUERIES: dict[str, tuple[str, dict[str, Any], str]] = {
    "max_points below 4": ("series", {"tensor": "fc1", "max_points": 3}, "max_points"),
    "unknown stat": ("series", {"tensor": "fc1", "stat": "median"}, "stat"),
    "unknown kind": ("series", {"tensor": "fc1", "kind": "bias"}, "kind"),
    "negative start": ("series", {"tensor": "fc1", "start": -1}, "start"),
    "after_step over int64": ("series", {"tensor": "fc1", "after_step": 2**63}, "after_step"),
    "end not a number": ("series", {"tensor": "fc1", "end": "soon"}, "end"),
    "rank over int32": ("series", {"tensor": "fc1", "rank": 2**31}, "rank"),
    "limit 0": ("series", {"tensor": "fc1", "limit": 0}, "limit"),
    "tensor missing": ("series", {}, "tensor"),
    "empty tensor": ("series", {"tensor": ""}, "tensor"),
    "tensor over 250 chars": ("series", {"tensor": "x" * 251}, "tensor"),
    "histogram step negative": ("histograms", {"tensor": "fc1", "step": -2}, "step"),
    "histogram limit too big": ("histograms", {"tensor": "fc1", "limit": 10**6}, "limit"),
    "scalar max_points 1": ("scalars/series", {"name": "loss", "max_points": 1}, "max_points"),
    "scalar start huge": ("scalars/series", {"name": "loss", "start": 10**30}, "start"),
    "runs status unknown": ("/runs", {"status": "paused"}, "status"),
    "runs negative offset": ("/runs", {"offset": -1}, "offset"),
    "runs limit too big": ("/runs", {"limit": 5000}, "limit"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_QUERIES))
def test_invalid_query_is_refused(api: httpx.Client, case: str) -> None:
    path, params, named = BAD_QUERIES[case]
    run_id = create_run(api)
    api.post(f"/runs/{run_id}/batches", json=valid_doc()).raise_for_status()
    url = path if path.startswith("/") else f"/runs/{run_id}/{path}"

    response = api.get(url, params=params)

    assert response.status_code == 422, response.text
    assert named in response.text


# Any text, control characters and lone surrogates (JSON's "\\ud800") included.
any_text = st.text(st.characters(categories=["L", "N", "P", "Zs", "Cc", "Cs"]), max_size=12)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | any_text
    | st.sampled_from(["NaN", "Infinity", "fc1", "loss", "activation", "", "\x00", "\ud800x"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


@st.composite
def mutated_docs(draw: st.DrawFn, base: Doc) -> Doc:
    """``base`` with one to three random edits: replace, delete, duplicate or add."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(doc))[1:]
        blocks = [p for p in paths if len(p) <= 2]  # whole blocks and lists: duplicates, gaps
        path = draw(st.sampled_from(blocks) | st.sampled_from(paths))
        *parents, key = path
        parent = doc
        for step in parents:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "duplicate", "add", "nudge"]))
        if action == "replace":
            parent[key] = draw(json_values)
        elif (
            action == "nudge"
            and isinstance(parent[key], (int, float))
            and not isinstance(parent[key], bool)
        ):
            parent[key] = parent[key] + draw(st.sampled_from([-1, 1, 2**31, 2**63, 0.5]))
        elif action == "delete":
            del parent[key]
        elif action == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
    return doc


floats = st.floats() | st.sampled_from([0.0, 1.0, -1.0])


few_steps = st.lists(st.integers(0, 6), min_size=1, max_size=4, unique=True)


@st.composite
def stats_blocks(draw: st.DrawFn) -> Doc:
    steps = draw(few_steps)
    block = stats_block(draw(st.sampled_from(["fc1", "fc2"])), steps)
    for stat in draw(st.lists(st.sampled_from(wire.STAT_NAMES[:7]), max_size=3)):
        block[stat] = draw(st.lists(floats, min_size=len(steps), max_size=len(steps)))
    return block


@st.composite
def histograms(draw: st.DrawFn) -> Doc:
    counts = draw(st.lists(st.integers(0, 2**63 - 1) | st.just(1), min_size=1, max_size=3))
    bins = draw(
        st.just({"lo": 0.0, "hi": 1.0})
        | st.just({"edges": [float(i) for i in range(len(counts) + 1)]})
    )
    return histogram(draw(st.sampled_from(["fc1", "fc2"])), draw(st.integers(0, 6)), counts, **bins)


@st.composite
def assembled_docs(draw: st.DrawFn) -> Doc:
    """Valid batches over a few names and steps: replays, overlaps, repeats, conflicts."""
    steps = draw(few_steps)
    scalars = scalars_block(
        draw(st.sampled_from(["loss", "acc"])),
        steps,
        draw(st.lists(floats, min_size=len(steps), max_size=len(steps))),
    )
    batch = make_batch(
        rank=draw(st.sampled_from([0, 0, 1])),
        stats=draw(st.lists(stats_blocks(), max_size=3)),
        histograms=draw(st.lists(histograms(), max_size=3)),
        scalars=draw(st.lists(st.just(scalars), max_size=2)),
    )
    doc: Doc = json.loads(batch.model_dump_json())
    return doc


def _shift_steps(doc: Doc, offset: int) -> None:
    for field_name in ("stats", "scalars", "histograms", "unit_means", "weight_changes"):
        for block in doc.get(field_name, ()):
            block["steps"] = [step + offset for step in block["steps"]]


_fresh_steps = itertools.count(1000, 1000)


def _snapshot(engine: Engine, run_id: str) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """Every measurement of the run, keyed by what identifies it."""
    rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    with engine.connect() as connection:
        for model in (SqlStat, SqlHistogram, SqlUnitMean, SqlWeightChange):
            query = select(SqlTensor.name, SqlTensor.kind, model).join(
                SqlTensor, SqlTensor.id == model.tensor_id
            )
            for row in connection.execute(query.where(SqlTensor.run_id == run_id)):
                name, kind, _, step, rank, *values = row
                rows[(model.__tablename__, name, kind, step, rank)] = tuple(map(repr, values))
        query = select(SqlScalar).where(SqlScalar.run_id == run_id)
        for _, name, step, rank, *values in connection.execute(query):
            rows[("scalars", name, step, rank)] = tuple(map(repr, values))
        for model in (SqlModule, SqlProbe, SqlProbeLayer, SqlProbeAttributions):
            table: Any = model.__table__
            keys = [column.name for column in table.primary_key.columns]
            query = select(table).where(table.c.run_id == run_id)
            for stored in connection.execute(query).mappings():
                values = [
                    repr(v) for k, v in stored.items() if k not in keys and k != "received_at"
                ]
                rows[(table.name, *(stored[k] for k in keys))] = tuple(values)
    return rows


@dataclass(frozen=True)
class FuzzTarget:
    run_id: str
    stored: Doc = field(repr=False)  # the batch it holds
    probe: Doc = field(repr=False)  # the probe it holds
    rows: dict[tuple[Any, ...], tuple[Any, ...]] = field(repr=False)  # its rows, by key


@pytest.fixture(scope="module")
def fuzz_target(api: httpx.Client, engine: Engine) -> FuzzTarget:
    """A run holding a stored batch (with NaN and infinities)."""
    doc = valid_doc()
    doc["stats"][0]["mean"] = ["NaN", "Infinity", "-Infinity"]
    run_id = create_run(api)
    api.post(f"/runs/{run_id}/batches", json=doc).raise_for_status()
    probe = valid_probe()
    api.post(f"/runs/{run_id}/probes", json=probe).raise_for_status()
    return FuzzTarget(run_id, doc, probe, _snapshot(engine, run_id))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_requests_never_fail_the_server_or_history(
    live_server: str, engine: Engine, fuzz_target: FuzzTarget, data: Any
) -> None:
    run_id, stored, before = fuzz_target.run_id, fuzz_target.stored, fuzz_target.rows
    new_steps = next(_fresh_steps)
    kinds = ["mutated", "mutated", "assembled", "json", "bytes", "run", "probe", "probe"]
    kind = data.draw(st.sampled_from(kinds))
    if kind == "probe":
        base = copy.deepcopy(fuzz_target.probe)
        if data.draw(st.booleans()):
            base["step"] = new_steps
        content = json.dumps(data.draw(mutated_docs(base))).encode()
    elif kind == "assembled":
        content = json.dumps(data.draw(assembled_docs())).encode()
    elif kind == "mutated":
        base = copy.deepcopy(stored)
        if data.draw(st.booleans()):  # a new batch rather than a replay of the stored one
            base["batch_id"] = new_id("f")
            if data.draw(st.booleans()):  # of new rows rather than of stored ones
                _shift_steps(base, new_steps)
        doc = data.draw(mutated_docs(base))
        content = json.dumps(doc).encode()
    elif kind == "json":
        content = json.dumps(data.draw(json_values)).encode()
    elif kind == "bytes":
        content = data.draw(st.binary(max_size=300))
    else:
        spec = {"project": "fuzz", "config": {"lr": 0.1, "opt": ["adam", 0.9]}, "tags": ["a"]}
        content = json.dumps(data.draw(mutated_docs(spec))).encode()
    encoding = data.draw(st.sampled_from(["", "", "gzip", "identity", "deflate"]))
    if encoding == "gzip" and data.draw(st.booleans()):
        content = gzip.compress(content)
    headers = {"Content-Type": "application/json"}
    if encoding:
        headers["Content-Encoding"] = encoding
    path = {"run": "/runs", "probe": f"/runs/{run_id}/probes"}.get(kind, f"/runs/{run_id}/batches")

    # A connection of its own: uvicorn closes one after a 500, failing the next request on it.
    with httpx.Client(
        headers=auth_headers(), base_url=f"{live_server}/api/v1", timeout=10, verify=False
    ) as client:
        try:
            status = client.post(path, content=content, headers=headers).status_code
        except httpx.TransportError:
            status = 599  # the server dropped the request

    assert status < 500
    after = _snapshot(engine, run_id)
    assert {key: after.get(key) for key in before} == before

"""A fake layerwatch server behind `httpx.MockTransport`, and runs wired to it."""

from __future__ import annotations

import gzip
import json
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pydantic
import pytest

import layerwatch
from layerwatch import wire

Reply = httpx.Response | Exception


class StrictClient(httpx.Client):
    """Like Starlette's `TestClient`, which warns when a request sets its own timeout."""

    def request(self, *args: Any, **kwargs: Any) -> httpx.Response:
        if "timeout" in kwargs:
            warnings.warn("do not set a timeout per request", DeprecationWarning, stacklevel=2)
        return super().request(*args, **kwargs)


class FakeServer:
    """Speaks the ingest API from memory; failures can be queued per endpoint."""

    def __init__(self) -> None:
        self.runs: dict[str, wire.RunCreate] = {}
        self.statuses: dict[str, str] = {}
        self.batches: dict[str, wire.Batch] = {}  # stored, by batch_id
        self.probes: list[wire.Probe] = []
        self.heartbeats: list[float] = []  # when each arrived
        self.requests: list[httpx.Request] = []
        self.failures: dict[str, list[Reply]] = {"runs": [], "batches": [], "patch": []}
        self.down = False  # every request fails to connect
        self.max_body: int | None = None  # larger batches get 413
        self.gate: threading.Event | None = None  # when set up, requests wait for it
        self.entered = threading.Event()  # set when a request arrives
        self.lock = threading.Lock()

    def client(self) -> httpx.Client:
        return StrictClient(
            transport=httpx.MockTransport(self.handle), base_url="http://layerwatch.test"
        )

    def fail(self, endpoint: str, *replies: Reply) -> None:
        """Answer the next requests to `endpoint` ("runs", "batches", "patch") with `replies`."""
        self.failures[endpoint].extend(replies)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.entered.set()
        request.extensions["received"] = time.monotonic()
        if self.gate is not None:
            self.gate.wait(10)
        with self.lock:
            self.requests.append(request)
            if self.down:
                raise httpx.ConnectError("connection refused", request=request)
            parts = request.url.path.strip("/").split("/")  # api v1 runs [id [batches]]
            if parts == ["readyz"]:
                return httpx.Response(200, json={"status": "ready"})
            endpoint = "runs" if len(parts) == 3 else "batches" if len(parts) == 5 else "patch"
            if self.failures[endpoint]:
                reply = self.failures[endpoint].pop(0)
                if isinstance(reply, Exception):
                    raise reply
                return reply
            body = request.content
            if request.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if endpoint == "runs":
                run = wire.RunCreate.model_validate_json(body)
                assert run.id is not None
                self.runs.setdefault(run.id, run)
                return httpx.Response(201, json={"id": run.id})
            if parts[3] not in self.runs:
                return httpx.Response(
                    404, json={"detail": "run not found", "code": "run_not_found"}
                )
            if endpoint == "patch":
                self.statuses[parts[3]] = wire.RunUpdate.model_validate_json(body).status
                return httpx.Response(200, json={"id": parts[3]})
            if self.max_body is not None and len(body) > self.max_body:
                return httpx.Response(
                    413, json={"detail": "too large", "code": "payload_too_large"}
                )
            if parts[4] == "heartbeat":
                self.heartbeats.append(time.monotonic())
                return httpx.Response(204)
            if parts[4] == "probes":
                probe = wire.Probe.model_validate_json(body)
                self.probes.append(probe)
                receipt_ = wire.ProbeReceipt(step=probe.step, layers=len(probe.layers))
                return httpx.Response(200, content=receipt_.model_dump_json())
            try:
                batch = wire.Batch.model_validate_json(body)
            except pydantic.ValidationError as exc:
                return httpx.Response(
                    422, json={"detail": json.loads(exc.json()), "code": "invalid"}
                )
            duplicate = batch.batch_id in self.batches
            self.batches.setdefault(batch.batch_id, batch)
            receipt = wire.BatchReceipt(
                batch_id=batch.batch_id, duplicate=duplicate, histograms=0,
                stats=sum(len(s.steps) for s in batch.stats),
                scalars=sum(len(s.steps) for s in batch.scalars),
            )  # fmt: skip
            return httpx.Response(200, content=receipt.model_dump_json())

    # -- what was stored ------------------------------------------------------------

    def batch_posts(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path.endswith("/batches")]

    def stats(self) -> dict[tuple[str, str], dict[int, dict[str, float]]]:
        """(name, kind) -> step -> statistic -> value, over all stored batches."""
        rows: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
        for batch in self.batches.values():
            for block in batch.stats:
                for i, step in enumerate(block.steps):
                    per_step = rows.setdefault((block.name, block.kind), {})
                    assert step not in per_step, f"{block.name} sent twice for step {step}"
                    per_step[step] = {s: getattr(block, s)[i] for s in wire.STAT_NAMES}
        return rows

    def scalars(self) -> dict[str, dict[int, float]]:
        rows: dict[str, dict[int, float]] = {}
        for batch in self.batches.values():
            for block in batch.scalars:
                rows.setdefault(block.name, {}).update(zip(block.steps, block.values, strict=True))
        return rows

    def rows(self, field: str) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
        """(name, kind) -> step -> column -> value of the `field` blocks (e.g. "histograms")."""
        rows: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
        for batch in self.batches.values():
            for block in getattr(batch, field):
                columns = {k: v for k, v in block if isinstance(v, list) and k != "steps"}
                kind = getattr(block, "kind", "weight")
                for i, step in enumerate(block.steps):
                    per_step = rows.setdefault((block.name, kind), {})
                    assert step not in per_step, f"{block.name} sent twice for step {step}"
                    per_step[step] = {k: v[i] for k, v in columns.items()}
        return rows

    def models(self) -> list[wire.ModelTree]:
        return [tree for batch in self.batches.values() for tree in batch.models]

    def nonfinite(self) -> list[wire.NonfiniteEvent]:
        """The sentinel's events over all stored batches, in the order sent."""
        return [event for batch in self.batches.values() for event in batch.nonfinite]

    def tensors(self) -> dict[tuple[str, str], wire.TensorInfo]:
        return {(t.name, t.kind): t for b in self.batches.values() for t in b.tensors}


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def make_run(server: FakeServer) -> Iterator[Callable[..., layerwatch.Run]]:
    """Runs sending to `server`, with short timers; closed at teardown."""
    runs: list[layerwatch.Run] = []
    clients: list[httpx.Client] = []

    def make(**kwargs: Any) -> layerwatch.Run:
        if "http" not in kwargs:
            kwargs["http"] = server.client()
            clients.append(kwargs["http"])
        kwargs.setdefault("backoff", 0.001)
        kwargs.setdefault("flush_secs", 0.05)
        kwargs.setdefault("timeout", 5.0)
        run = layerwatch.Run(**kwargs)
        runs.append(run)
        return run

    yield make
    server.down = False
    if server.gate is not None:
        server.gate.set()
    for run in runs:
        run.close(timeout=2.0)
    for client in clients:
        client.close()


@pytest.fixture
def slow_reducer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each reduction on the reducer thread starts 3 ms late: training runs on meanwhile."""
    from layerwatch.reduce.statistics import Summarizer

    summarize = Summarizer.summarize

    def slow(self: Summarizer, tensor: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "layerwatch-reducer":
            time.sleep(0.003)
        return summarize(self, tensor, **kwargs)

    monkeypatch.setattr(Summarizer, "summarize", slow)

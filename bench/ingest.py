"""Ingest throughput: statistic rows and histograms per second through real HTTP.

A uvicorn server process is started on a fresh SQLite file, then on a fresh
PostgreSQL database, and one ``httpx.Client`` posts pre-built ``wire.Batch``
bodies to it over TCP. The ceiling is the same rows (same values, same count,
same batch size, one transaction per batch) inserted with ``executemany`` on
the driver's own connection (``sqlite3`` / ``psycopg``, opened with the
server's engine settings) into a second fresh, migrated database of the same
backend, in the same run. Each repeat posts a
new set of batches, then inserts the same rows raw, so both databases grow
alike and a slow spell of a shared machine hits both. Figures are medians.

    python bench/ingest.py            # the default run, under two minutes
    python bench/ingest.py --quick    # a smoke run of a few seconds
    python bench/ingest.py --help

It reports and exits 0; it never fails on a missed target. See bench/README.md.
"""

from __future__ import annotations

import abc
import argparse
import base64
import contextlib
import gzip
import hashlib
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import numpy as np
from sqlalchemy import Engine, Table, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from layerwatch import wire
from layerwatch_server import store
from layerwatch_server.db import make_engine, make_sessionmakers, managed_session
from layerwatch_server.migrate import upgrade_database
from layerwatch_server.models import SqlHistogram, SqlStat, SqlTensor
from report import machine, markdown

STATS: Table = SqlStat.__table__  # type: ignore[assignment]
HISTOGRAMS: Table = SqlHistogram.__table__  # type: ignore[assignment]
STAT_TARGET = 100_000  # stat rows/s into SQLite
HISTOGRAM_TARGET = 10_000  # 64-bin histograms/s into SQLite
CEILING_SHARE = 0.5  # HTTP ingest should reach this share of the raw executemany rate
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
GZIP_LEVEL = 1  # what the client's sender uses for bodies of 16 KiB and more
RANK = 0
ENCODINGS = ("json", "json+gzip")
FLOAT_STATS = wire.STAT_NAMES[:7]  # mean ... zero_frac; then the counts nonfinite, numel
STAGES = (  # rows of the second table, in the order of the data path
    "client: build + JSON",
    "client: gzip",
    "HTTP round trip (json)",
    "HTTP round trip (json+gzip)",
    "server: parse + validate",
    "server: digest",
    "server: store + commit",
    "raw executemany + commit",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- workloads ----------------------------------------------------------------------------


class Chunk(Protocol):
    """One batch worth of measurements, as a wire batch and as raw table rows."""

    @property
    def count(self) -> int: ...

    def batch(self, batch_id: str) -> wire.Batch: ...

    def rows(self, tensor_ids: dict[str, int]) -> list[tuple[Any, ...]]: ...


@dataclass(frozen=True)
class StatsChunk:
    """Statistics of every tensor in ``names`` at consecutive steps from ``first_step``."""

    names: list[str]
    first_step: int
    floats: np.ndarray  # (T, 7, S): mean ... zero_frac, float32 values widened as a client sends
    numel: int = 4096

    @property
    def count(self) -> int:
        return int(self.floats.shape[0] * self.floats.shape[2])

    def _steps(self) -> list[int]:
        return list(range(self.first_step, self.first_step + self.floats.shape[2]))

    def batch(self, batch_id: str) -> wire.Batch:
        steps = self._steps()
        blocks = [
            wire.Stats(
                name=name,
                kind="activation",
                steps=steps,
                **dict(zip(FLOAT_STATS, floats, strict=True)),
                nonfinite=[0] * len(steps),
                numel=[self.numel] * len(steps),
            )
            for name, floats in zip(self.names, self.floats.tolist(), strict=True)
        ]
        return wire.Batch(batch_id=batch_id, rank=RANK, stats=blocks)

    def rows(self, tensor_ids: dict[str, int]) -> list[tuple[Any, ...]]:
        steps = self._steps()
        n = len(steps)
        rows: list[tuple[Any, ...]] = []
        for name, floats in zip(self.names, self.floats.tolist(), strict=True):
            tensor = [tensor_ids[name]] * n
            rows.extend(
                zip(tensor, steps, [RANK] * n, *floats, [0] * n, [self.numel] * n, strict=True)
            )
        return rows


@dataclass(frozen=True)
class HistogramsChunk:
    """A histogram of every tensor in ``names`` at consecutive steps from ``first_step``."""

    names: list[str]
    first_step: int
    counts: np.ndarray  # (S, T, bins) int64
    bounds: np.ndarray  # (S, T, 2): lo, hi, float32 values widened

    @property
    def count(self) -> int:
        return int(self.counts.shape[0] * self.counts.shape[1])

    def _items(self) -> Iterator[tuple[str, int, list[int], float, float]]:
        for s, (counts, bounds) in enumerate(
            zip(self.counts.tolist(), self.bounds.tolist(), strict=True)
        ):
            for name, bins, (lo, hi) in zip(self.names, counts, bounds, strict=True):
                yield name, self.first_step + s, bins, lo, hi

    def batch(self, batch_id: str) -> wire.Batch:
        # One columnar block per tensor, counts packed as the client sends them.
        steps = list(range(self.first_step, self.first_step + self.counts.shape[0]))
        packed = self.counts.astype("<u4")  # (S, T, bins)
        histograms = [
            wire.Histograms(
                name=name,
                kind="weight",
                steps=steps,
                counts=[
                    base64.b64encode(packed[s, t].tobytes()).decode() for s in range(len(steps))
                ],
                lo=self.bounds[:, t, 0].tolist(),
                hi=self.bounds[:, t, 1].tolist(),
            )
            for t, name in enumerate(self.names)
        ]
        return wire.Batch(batch_id=batch_id, rank=RANK, histograms=histograms)

    def rows(self, tensor_ids: dict[str, int]) -> list[tuple[Any, ...]]:
        # As the server stores them: counts packed little-endian uint32, no explicit edges,
        # no sample (the counts cover every element).
        packed = [row.tobytes() for row in self.counts.astype("<u4").reshape(self.count, -1)]
        return [
            (tensor_ids[name], step, RANK, len(bins), lo, hi, None, blob, None)
            for (name, step, bins, lo, hi), blob in zip(self._items(), packed, strict=True)
        ]


@dataclass
class Workload:
    what: str  # "stats" or "histograms"
    kind: wire.Kind
    names: list[str]
    steps_per_batch: int
    make: Callable[[np.random.Generator, int], Chunk]
    table: Table
    next_step: int = 0

    @property
    def run_id(self) -> str:
        return f"bench-{self.what}"

    def chunks(self, rng: np.random.Generator, n: int) -> list[Chunk]:
        """The next ``n`` batches, each at steps after the last one's."""
        made = []
        for _ in range(n):
            made.append(self.make(rng, self.next_step))
            self.next_step += self.steps_per_batch
        return made


def stats_workload(tensors: int, steps: int) -> Workload:
    names = [f"blocks.{i}.mlp.fc1" for i in range(tensors)]

    def make(rng: np.random.Generator, first_step: int) -> Chunk:
        floats = rng.standard_normal((tensors, 7, steps), dtype=np.float32)
        floats[:, 1:] = np.abs(floats[:, 1:])
        return StatsChunk(names, first_step, floats.astype(np.float64))

    return Workload("stats", "activation", names, steps, make, STATS)


def histograms_workload(tensors: int, histograms: int, bins: int) -> Workload:
    steps = max(1, histograms // tensors)
    names = [f"blocks.{i}.mlp.fc1.weight" for i in range(tensors)]

    def make(rng: np.random.Generator, first_step: int) -> Chunk:
        counts = rng.integers(0, 10_000, (steps, tensors, bins))
        half = np.abs(rng.standard_normal((steps, tensors, 1), dtype=np.float32)) + 0.01
        return HistogramsChunk(names, first_step, counts, np.concatenate([-half, half], 2))

    return Workload("histograms", "weight", names, steps, make, HISTOGRAMS)


# -- databases ----------------------------------------------------------------------------


class Backend(abc.ABC):
    """Fresh databases of one kind, and transactions on their raw DB-API connections."""

    name: str
    placeholder: str

    @abc.abstractmethod
    def fresh_url(self, label: str) -> str:
        """A SQLAlchemy URL of a new, empty database."""

    def begin(self, cursor: Any) -> None:  # noqa: B027 (psycopg begins implicitly)
        pass

    def commit(self, connection: Any, cursor: Any) -> None:
        connection.commit()

    @abc.abstractmethod
    def version(self) -> str: ...

    def close(self) -> None:  # noqa: B027
        pass


class SqliteBackend(Backend):
    name = "sqlite"
    placeholder = "?"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def fresh_url(self, label: str) -> str:
        return f"sqlite:///{self.directory / f'{label}.db'}"

    def begin(self, cursor: Any) -> None:
        # The server's engine leaves transactions to its caller, and writes BEGIN IMMEDIATE.
        cursor.execute("BEGIN IMMEDIATE")

    def commit(self, connection: Any, cursor: Any) -> None:
        cursor.execute("COMMIT")

    def version(self) -> str:
        return f"SQLite {sqlite3.sqlite_version}"


class PostgresBackend(Backend):
    name = "postgresql"
    placeholder = "%s"

    def __init__(self, admin_url: str) -> None:
        import psycopg

        self.psycopg = psycopg
        self.admin_url = make_url(admin_url).set(drivername="postgresql")  # libpq's form
        self.admin = psycopg.connect(
            self.admin_url.render_as_string(hide_password=False), autocommit=True, connect_timeout=5
        )
        self.created: list[str] = []

    def fresh_url(self, label: str) -> str:
        database = f"layerwatch_bench_{os.getpid()}_{label}"
        self.admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
        self.admin.execute(f'CREATE DATABASE "{database}"')
        self.created.append(database)
        url = self.admin_url.set(drivername="postgresql+psycopg", database=database)
        return url.render_as_string(hide_password=False)

    def version(self) -> str:
        row = self.admin.execute("SHOW server_version").fetchone()
        return f"PostgreSQL {row[0] if row else '?'} (psycopg {self.psycopg.__version__})"

    def close(self) -> None:
        for database in self.created:
            self.admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        self.admin.close()


def migrated_sessions(url: str) -> tuple[Engine, sessionmaker[Session]]:
    """An engine on ``url``, upgraded to the newest schema, and its write sessions."""
    engine = make_engine(url)
    upgrade_database(engine)
    return engine, make_sessionmakers(engine)[1]


def create_run(sessions: sessionmaker[Session], workload: Workload) -> dict[str, int]:
    """The workload's run and tensors, made directly (not timed); tensor ids by name."""
    with managed_session(sessions) as session:
        store.create_or_resume_run(session, wire.RunCreate(id=workload.run_id, project="bench"))
        tensors = [
            {"run_id": workload.run_id, "name": n, "kind": workload.kind} for n in workload.names
        ]
        session.execute(insert(SqlTensor), tensors)
        found = session.execute(
            select(SqlTensor.name, SqlTensor.id).where(SqlTensor.run_id == workload.run_id)
        )
        return {name: tensor_id for name, tensor_id in found}


def insert_sql(table: Table, placeholder: str) -> str:
    columns = [column.name for column in table.columns]
    marks = ", ".join([placeholder] * len(columns))
    return f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({marks})"


def count_rows(url: str, table: Table) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return int(
                connection.exec_driver_sql(f"SELECT count(*) FROM {table.name}").scalar_one()
            )
    finally:
        engine.dispose()


# -- the server ---------------------------------------------------------------------------


@contextlib.contextmanager
def serve(url: str, directory: Path, timeout: float = 60.0) -> Iterator[str]:
    """A uvicorn server process on ``url``'s database; yields its base URL once ready."""
    port = free_port()
    env = {**os.environ, "LAYERWATCH_DATABASE_URL": url, "LAYERWATCH_DATA_DIR": str(directory),
           "LAYERWATCH_ALLOW_OPEN": "1"}  # fmt: skip  # on 127.0.0.1, without tokens: open
    log_path = directory / f"server-{port}.log"
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "layerwatch_server.main:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server was not ready in {timeout} s")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- measuring ----------------------------------------------------------------------------


@dataclass
class Figures:
    """Rows per second of every repeat, and milliseconds per batch of every stage."""

    http: dict[str, list[float]] = field(default_factory=dict)  # by body encoding
    raw: list[float] = field(default_factory=list)
    ms: dict[str, list[float]] = field(default_factory=dict)

    def note(self, stage: str, seconds: float, batches: int) -> None:
        self.ms.setdefault(stage, []).append(1000 * seconds / batches)


@contextlib.contextmanager
def timed(figures: Figures, stage: str, batches: int) -> Iterator[None]:
    started = time.perf_counter()
    yield
    figures.note(stage, time.perf_counter() - started, batches)


@dataclass
class Target:
    """One backend's three databases: one served over HTTP, one raw, one for stage timings."""

    backend: Backend
    client: httpx.Client
    http_url: str
    raw_url: str
    raw_engine: Engine  # the server's engine settings (SQLite pragmas), for raw connections
    raw_sessions: sessionmaker[Session]  # only to create the run and tensors, untimed
    stage_sessions: sessionmaker[Session]


def post_all(client: httpx.Client, run_id: str, bodies: list[bytes], zipped: bool) -> float:
    headers = {"Content-Type": "application/json"}
    if zipped:
        headers["Content-Encoding"] = "gzip"
    path = f"/api/v1/runs/{run_id}/batches"
    started = time.perf_counter()
    for body in bodies:
        response = client.post(path, content=body, headers=headers)
        if response.status_code != 200:
            raise RuntimeError(f"ingest answered {response.status_code}: {response.text[:500]}")
    return time.perf_counter() - started


def insert_all(backend: Backend, connection: Any, sql: str, batches: list[list[Any]]) -> float:
    cursor = connection.cursor()
    started = time.perf_counter()
    for rows in batches:
        backend.begin(cursor)
        cursor.executemany(sql, rows)
        backend.commit(connection, cursor)
    return time.perf_counter() - started


def time_server_stages(
    bodies: list[bytes], sessions: sessionmaker[Session], run_id: str, figures: Figures
) -> None:
    """The server's own work on the same bodies, in this process and without HTTP."""
    n = len(bodies)
    with timed(figures, "server: parse + validate", n):
        batches = [wire.Batch.model_validate_json(body) for body in bodies]
    with timed(figures, "server: digest", n):
        digests = [hashlib.sha256(body).hexdigest() for body in bodies]
    with timed(figures, "server: store + commit", n):
        for batch, digest in zip(batches, digests, strict=True):
            with managed_session(sessions) as session:
                store.ingest_batch(session, run_id, batch, digest=digest)


def measure(target: Target, workload: Workload, args: argparse.Namespace) -> Figures:
    figures = Figures()
    rng = np.random.default_rng(args.seed)
    backend, client = target.backend, target.client
    client.post("/api/v1/runs", json={"id": workload.run_id, "project": "bench"}).raise_for_status()
    create_run(target.stage_sessions, workload)
    tensor_ids = create_run(target.raw_sessions, workload)
    sql = insert_sql(workload.table, backend.placeholder)
    # The driver's own connection (sqlite3 / psycopg), opened with the server's settings.
    pooled = target.raw_engine.raw_connection()
    raw = pooled.driver_connection

    def encode(chunks: list[Chunk], prefix: str) -> list[bytes]:
        # Client side, timed apart: the wire models and their JSON, as the sender builds them.
        with timed(figures, "client: build + JSON", len(chunks)):
            return [
                c.batch(f"{prefix}-{i}").model_dump_json().encode() for i, c in enumerate(chunks)
            ]

    try:
        # Warm-up: the server creates the tensors, caches and connections warm up.
        warm = workload.chunks(rng, args.warmup)
        bodies = encode(warm, "warm")
        post_all(client, workload.run_id, bodies, zipped=False)
        time_server_stages(bodies, target.stage_sessions, workload.run_id, figures)
        insert_all(backend, raw, sql, [c.rows(tensor_ids) for c in warm])
        figures.ms.clear()
        for repeat in range(args.repeats):
            for encoding in ENCODINGS if args.gzip else ENCODINGS[:1]:
                chunks = workload.chunks(rng, args.batches)
                bodies = encode(chunks, f"r{repeat}-{encoding.replace('+', '-')}")
                if encoding == "json":
                    time_server_stages(bodies, target.stage_sessions, workload.run_id, figures)
                else:
                    with timed(figures, "client: gzip", len(bodies)):
                        bodies = [gzip.compress(b, compresslevel=GZIP_LEVEL) for b in bodies]
                seconds = post_all(client, workload.run_id, bodies, encoding != "json")
                figures.note(f"HTTP round trip ({encoding})", seconds, len(bodies))
                figures.http.setdefault(encoding, []).append(sum(c.count for c in chunks) / seconds)

                rows = [c.rows(tensor_ids) for c in chunks]
                seconds = insert_all(backend, raw, sql, rows)
                figures.note("raw executemany + commit", seconds, len(rows))
                figures.raw.append(sum(len(r) for r in rows) / seconds)
    finally:
        pooled.close()
    served = count_rows(target.http_url, workload.table)
    inserted = count_rows(target.raw_url, workload.table)
    if served != inserted:
        print(f"  ! {backend.name} {workload.what}: {served} rows via HTTP, {inserted} raw")
    return figures


def run_backend(backend: Backend, args: argparse.Namespace, directory: Path) -> dict[str, Figures]:
    workloads = [
        stats_workload(args.tensors, args.steps),
        histograms_workload(args.tensors, args.histograms, args.bins),
    ]
    http_url, raw_url, stage_url = (backend.fresh_url(n) for n in ("http", "raw", "stages"))
    raw_engine, raw_sessions = migrated_sessions(raw_url)
    stage_engine, stage_sessions = migrated_sessions(stage_url)
    results = {}
    try:
        with serve(http_url, directory) as base, httpx.Client(base_url=base, timeout=300) as client:
            target = Target(
                backend, client, http_url, raw_url, raw_engine, raw_sessions, stage_sessions
            )
            for workload in workloads:
                print(f"  {workload.what} ...", flush=True)
                results[workload.what] = measure(target, workload, args)
    finally:
        raw_engine.dispose()
        stage_engine.dispose()
    return results


# -- the report ---------------------------------------------------------------------------


def rate_table(results: dict[tuple[str, str], Figures]) -> str:
    rows = [["backend", "what", "body", "HTTP rows/s", "raw rows/s", "HTTP/raw", "target", "met"]]
    for (backend, what), figures in results.items():
        absolute = None
        if backend == "sqlite":
            absolute = STAT_TARGET if what == "stats" else HISTOGRAM_TARGET
        raw = statistics.median(figures.raw)
        for body, rates in figures.http.items():
            http = statistics.median(rates)
            met = http / raw >= CEILING_SHARE and (absolute is None or http >= absolute)
            wanted = f">= {CEILING_SHARE:.0%} of raw"
            if absolute is not None:
                wanted = f">= {absolute // 1000}k/s, {wanted}"
            rows.append([
                backend, what, body, f"{http:,.0f}", f"{raw:,.0f}", f"{http / raw:.2f}",
                wanted, "yes" if met else "no",
            ])  # fmt: skip
    return markdown(rows, lambda i: i in (3, 4, 5))


def stage_table(results: dict[tuple[str, str], Figures]) -> str:
    stages = [stage for stage in STAGES if any(stage in f.ms for f in results.values())]
    rows = [["median ms per batch"] + [f"{backend} {what}" for backend, what in results]]
    for stage in stages:
        cells = [
            f"{statistics.median(f.ms[stage]):.1f}" if stage in f.ms else "-"
            for f in results.values()
        ]
        rows.append([stage, *cells])
    return markdown(rows, lambda i: i > 0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--tensors", type=int, default=50, help="tensors per batch (default 50)")
    add("--steps", type=int, default=200, help="steps of statistics per batch (200)")
    add("--histograms", type=int, default=1000, help="histograms per batch (1000)")
    add("--bins", type=int, default=64, help="bins per histogram (64)")
    add("--batches", type=int, default=6, help="timed batches per repeat and body (6)")
    add("--repeats", type=int, default=5, help="repeats; medians are reported (5)")
    add("--warmup", type=int, default=2, help="untimed batches first (2)")
    add("--no-gzip", dest="gzip", action="store_false", help="post plain JSON bodies only")
    add(
        "--postgres",
        default=DEFAULT_POSTGRES,
        help="URL of a PostgreSQL database from which to create and drop throw-away "
        f"databases (default {DEFAULT_POSTGRES}); 'none' skips PostgreSQL",
    )
    add("--seed", type=int, default=0)
    add("--quick", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.histograms = 20, 4 * args.tensors
        args.batches, args.repeats, args.warmup = 2, 1, 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    histograms = args.tensors * max(1, args.histograms // args.tensors)
    print(
        f"Per batch: {args.tensors} tensors x {args.steps} steps = "
        f"{args.tensors * args.steps:,} stat rows, or {histograms:,} histograms of "
        f"{args.bins} bins; {args.batches} timed batches x {args.repeats} repeats "
        f"after {args.warmup} warm-up."
    )
    print(f"Machine: {machine()}")
    results: dict[tuple[str, str], Figures] = {}
    with tempfile.TemporaryDirectory(prefix="layerwatch-bench-") as tmp:
        backends: list[Backend] = [SqliteBackend(Path(tmp))]
        if args.postgres.lower() != "none":
            try:
                backends.append(PostgresBackend(args.postgres))
            except Exception as error:  # unreachable, refused, no driver: report and go on
                reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
                print(f"PostgreSQL skipped: {reason}")
        for backend in backends:
            print(backend.version(), flush=True)
            try:
                for what, figures in run_backend(backend, args, Path(tmp)).items():
                    results[(backend.name, what)] = figures
            finally:
                backend.close()
    print()
    print(rate_table(results))
    print()
    print(stage_table(results))
    print(
        f"\n{time.perf_counter() - started:.0f} s in all; load {os.getloadavg()[0]:.1f} at the end."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

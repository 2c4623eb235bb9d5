"""Reads at scale: series, thinned series, plots and bytes on disk, at 10k, 100k and 1M steps.

For each backend (SQLite, then PostgreSQL when it answers) a real server
process (``uvicorn``, as ``bench/ingest.py`` starts it) on a fresh database
receives, through ``POST /batches``, one run holding one tensor with 10,000,
one with 100,000 and one with 1,000,000 steps of statistics, and one tensor
with 10,000 64-bin histograms (sampled-histogram counts of 65,536 normal
values, as the client sends them). Then, over real HTTP with one keep-alive
``httpx.Client``, the median of ``--repeats`` of:

- every page of a full series (``/series``, pages of 10,000), and the same rows
  read directly through the driver (``SELECT step, mean ... ORDER BY step``):
  the database's ceiling, printed beside as a ratio;
- the series thinned to 1,000 points (``max_points=1000``);
- ``series.png`` of the 100k-step tensor: first render, again with
  ``If-None-Match`` (304) and again without (another user: the server's cache);
- ``distributions.png`` over the 10,000 histograms (first render, then cached);
- ``/findings`` just after a new value arrived (so computed anew), and again;
- bytes on disk per statistics row and per histogram (SQLite: file growth after
  a WAL checkpoint, rollups and indexes included; PostgreSQL:
  ``pg_total_relation_size`` of the tables).

How the costs grow from 10k to 1M steps is the headline: thinned reads should
stay flat. It reports and exits 0; no target fails it. See bench/README.md.

    python bench/reads.py                    # both backends: about 3 minutes
    python bench/reads.py --postgres none    # SQLite only
    python bench/reads.py --sizes 10000,100000 --repeats 3
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import make_url

from ingest import PostgresBackend, SqliteBackend, serve
from layerwatch_server.db import make_engine
from layerwatch_server.migrate import upgrade_database
from report import machine, markdown

BATCH_ROWS = 10_000  # statistics rows per POST
HISTOGRAMS = 10_000
HISTOGRAM_BATCH = 1_000
BINS = 64
SAMPLE = 65_536


def _stats_body(name: str, steps: np.ndarray, rng: np.random.Generator) -> bytes:
    n = len(steps)
    walk = np.cumsum(rng.standard_normal(n)) * 0.01
    block = {"name": name, "kind": "activation", "steps": steps.tolist()}
    for i, stat in enumerate(("mean", "std", "min", "max", "abs_mean", "l2", "zero_frac")):
        block[stat] = (walk + i).astype(np.float32).astype(np.float64).tolist()
    block["nonfinite"] = [0] * n
    block["numel"] = [65_536] * n
    return httpx.Request("POST", "/", json={
        "schema_version": 1, "batch_id": uuid.uuid4().hex, "rank": 0, "stats": [block],
    }).content  # fmt: skip


def _histograms_body(steps: np.ndarray, rng: np.random.Generator) -> bytes:
    counts, lo, hi = [], [], []
    for step in steps.tolist():
        values = rng.standard_normal(SAMPLE) * (1 + step / HISTOGRAMS)
        found, edges = np.histogram(values, bins=BINS)
        counts.append(base64.b64encode(found.astype("<u4").tobytes()).decode())
        lo.append(float(np.float32(edges[0])))
        hi.append(float(np.float32(edges[-1])))
    block = {"name": "h", "kind": "activation", "steps": steps.tolist(), "counts": counts,
             "lo": lo, "hi": hi, "sample_size": [SAMPLE] * len(steps)}  # fmt: skip
    return httpx.Request("POST", "/", json={
        "schema_version": 1, "batch_id": uuid.uuid4().hex, "rank": 0, "histograms": [block],
    }).content  # fmt: skip


def _post(client: httpx.Client, run: str, body: bytes) -> None:
    answer = client.post(f"/api/v1/runs/{run}/batches", content=body,
                         headers={"Content-Type": "application/json"})  # fmt: skip
    answer.raise_for_status()


def _median_ms(action: Callable[[], object], repeats: int) -> float:
    action()  # warm
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def _all_pages(client: httpx.Client, run: str, tensor: str) -> int:
    after, points = None, 0
    while True:
        params: dict[str, Any] = {"tensor": tensor, "limit": 10_000}
        if after is not None:
            params["after_step"] = after
        page = client.get(f"/api/v1/runs/{run}/series", params=params).json()
        points += len(page["steps"])
        after = page["next_after_step"]
        if after is None:
            return points


class Database:
    """The bench's direct view of the server's database: the raw ceiling, and sizes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.postgres = make_url(url).get_backend_name() == "postgresql"

    def raw_series(self, tensor_id: int) -> Callable[[], object]:
        def read() -> object:
            with self.engine.connect() as connection:
                cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
                mark = "%s" if self.postgres else "?"
                cursor.execute(
                    f"SELECT step, mean FROM stats WHERE tensor_id = {mark} AND rank = 0 "
                    "ORDER BY step", (tensor_id,)
                )  # fmt: skip
                return cursor.fetchall()

        return read

    def tensor_id(self, run: str, name: str) -> int:
        with self.engine.connect() as connection:
            return int(connection.exec_driver_sql(
                "SELECT id FROM tensors WHERE run_id = " + ("%s" if self.postgres else "?")
                + " AND name = " + ("%s" if self.postgres else "?"), (run, name),
            ).scalar_one())  # fmt: skip

    def size(self, tables: Sequence[str]) -> int:
        """Bytes the tables take (PostgreSQL), or the whole file (SQLite, checkpointed)."""
        with self.engine.connect() as connection:
            if self.postgres:
                return sum(
                    int(connection.exec_driver_sql(
                        f"SELECT pg_total_relation_size('{table}')").scalar_one())
                    for table in tables
                )  # fmt: skip
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            page_size = int(connection.exec_driver_sql("PRAGMA page_size").scalar_one())
            pages = int(connection.exec_driver_sql("PRAGMA page_count").scalar_one())
            free = int(connection.exec_driver_sql("PRAGMA freelist_count").scalar_one())
            return page_size * (pages - free)


def measure_backend(url: str, directory: Path, args: argparse.Namespace) -> dict[str, Any]:
    engine = make_engine(url)
    upgrade_database(engine)
    engine.dispose()
    database = Database(url)
    figures: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    run = "reads" + uuid.uuid4().hex[:8]
    with serve(url, directory) as base, httpx.Client(base_url=base, timeout=120) as client:
        client.post("/api/v1/runs", json={"id": run, "project": "bench"}).raise_for_status()
        empty = database.size(["stats", "stat_rollups"])
        rows = 0
        for size in args.sizes:
            name = f"s{size}"
            for start in range(0, size, BATCH_ROWS):
                steps = np.arange(start, min(start + BATCH_ROWS, size))
                _post(client, run, _stats_body(name, steps, rng))
            rows += size
        figures["stat_bytes"] = (database.size(["stats", "stat_rollups"]) - empty) / rows
        before = database.size(["histograms"])
        for start in range(0, HISTOGRAMS, HISTOGRAM_BATCH):
            steps = np.arange(start, start + HISTOGRAM_BATCH)
            _post(client, run, _histograms_body(steps, rng))
        figures["histogram_bytes"] = (database.size(["histograms"]) - before) / HISTOGRAMS

        series = f"/api/v1/runs/{run}/series"
        for size in args.sizes:
            name = f"s{size}"
            tensor_id = database.tensor_id(run, name)
            assert _all_pages(client, run, name) == size
            figures[("full", size)] = _median_ms(lambda n=name: _all_pages(client, run, n),
                                                 args.repeats)  # fmt: skip
            figures[("raw", size)] = _median_ms(database.raw_series(tensor_id), args.repeats)
            thin = client.get(series, params={"tensor": name, "max_points": 1000}).json()
            assert thin["total"] == size
            assert len(thin["steps"]) <= 1000
            figures[("thin", size)] = _median_ms(
                lambda n=name: client.get(series, params={"tensor": n, "max_points": 1000}),
                args.repeats,
            )

        middle = f"s{args.sizes[len(args.sizes) // 2]}"
        png = f"/api/v1/runs/{run}/plots/series.png"
        figures["png_sizes"] = middle

        def first_render(url: str, params: dict[str, Any]) -> Callable[[], object]:
            widths = iter(range(600, 6000))  # a new image size: nothing cached

            def render() -> object:
                answer = client.get(url, params={**params, "width": next(widths)})
                answer.raise_for_status()
                return answer

            return render

        figures["png_first"] = _median_ms(first_render(png, {"tensor": middle}), args.repeats)
        etag = client.get(png, params={"tensor": middle}).headers["etag"]
        figures["png_304"] = _median_ms(
            lambda: client.get(png, params={"tensor": middle}, headers={"If-None-Match": etag}),
            args.repeats,
        )
        figures["png_cached"] = _median_ms(
            lambda: client.get(png, params={"tensor": middle}), args.repeats
        )
        findings = f"/api/v1/runs/{run}/findings"
        fresh_steps = iter(range(10**7, 10**8))

        def diagnose_new_data() -> object:
            # A new loss value changes the run's data version: the findings are computed anew
            step = next(fresh_steps)
            _post(client, run, httpx.Request("POST", "/", json={
                "schema_version": 1, "batch_id": uuid.uuid4().hex, "rank": 0,
                "scalars": [{"name": "loss", "steps": [step], "values": [1.0]}],
            }).content)  # fmt: skip
            started = time.perf_counter()
            client.get(findings).raise_for_status()
            return time.perf_counter() - started

        diagnose_new_data()
        figures["findings_first"] = 1000 * statistics.median(
            [float(diagnose_new_data()) for _ in range(args.repeats)]  # type: ignore[arg-type]
        )
        figures["findings_cached"] = _median_ms(lambda: client.get(findings), args.repeats)
        dist = f"/api/v1/runs/{run}/plots/distributions.png"
        figures["dist_first"] = _median_ms(first_render(dist, {"tensor": "h"}), args.repeats)
        figures["dist_cached"] = _median_ms(
            lambda: client.get(dist, params={"tensor": "h"}), args.repeats
        )
    database.engine.dispose()
    return figures


def report(results: dict[str, dict[str, Any]], sizes: Sequence[int]) -> str:
    header = ["read", *(f"{backend} {size:,}" for backend in results for size in sizes)]
    lines = [header]

    def row(label: str, cell: Callable[[dict[str, Any], int], str]) -> None:
        lines.append([label, *(cell(f, size) for f in results.values() for size in sizes)])

    row("full series, all pages (ms)", lambda f, s: f"{f[('full', s)]:.1f}")
    row("raw SELECT of the same rows (ms)", lambda f, s: f"{f[('raw', s)]:.1f}")
    row("full / raw", lambda f, s: f"{f[('full', s)] / f[('raw', s)]:.2f}")
    row("max_points=1000 (ms)", lambda f, s: f"{f[('thin', s)]:.1f}")
    table = markdown(lines, right=lambda i: i > 0)
    once = [["once per backend", *results]]
    for label, key, unit in (
        ("series.png of {png_sizes}, first render", "png_first", "ms"),
        ("series.png again, If-None-Match (304)", "png_304", "ms"),
        ("series.png again, no If-None-Match", "png_cached", "ms"),
        ("distributions.png of 10,000 histograms, first render", "dist_first", "ms"),
        ("distributions.png again, no If-None-Match", "dist_cached", "ms"),
        ("findings after new data (every tensor, 1M steps the longest)", "findings_first", "ms"),
        ("findings again (cached by data version)", "findings_cached", "ms"),
        ("disk per statistics row (rollups included)", "stat_bytes", "B"),
        ("disk per 64-bin histogram", "histogram_bytes", "B"),
    ):
        name = label.format(png_sizes=next(iter(results.values()))["png_sizes"])
        once.append([f"{name} ({unit})", *(f"{f[key]:.1f}" for f in results.values())])
    return table + "\n\n" + markdown(once, right=lambda i: i > 0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000",
                        type=lambda v: [int(x) for x in v.split(",")])  # fmt: skip
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="admin URL, or `none` for SQLite only")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        sqlite = SqliteBackend(directory)
        results["sqlite"] = measure_backend(sqlite.fresh_url("reads"), directory, args)
        print("sqlite done", file=sys.stderr, flush=True)
        if args.postgres != "none":
            backend = None
            with contextlib.suppress(Exception):
                backend = PostgresBackend(args.postgres)
            if backend is None:
                print("PostgreSQL: not reachable, skipped", file=sys.stderr)
            else:
                try:
                    results["postgresql"] = measure_backend(
                        backend.fresh_url("reads"), directory, args
                    )
                finally:
                    backend.close()
    print(machine())
    print(report(results, args.sizes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

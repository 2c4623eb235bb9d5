"""`Api`: query a layerwatch server: find runs, read their measurements as NumPy arrays,
fetch plots and export files.

Usage:

```python
import layerwatch

with layerwatch.Api("http://localhost:8000") as api:
    for run in api.runs(project="digits", config={"optimizer": "adam"}):
        loss = run.scalars("loss")
        std = run.series("fc1", stat="std")
        print(run.name, loss.values[-1], std.to_pandas().tail())
        run.plot("series", path=f"{run.id}.png", tensor=["fc1", "fc2"])
```

Queries raise `NotFoundError` (`RunNotFoundError` for a run) on 404,
`RejectedError` with the server's `detail` for any other refusal, and
`RetryableError` (a `DeliveryError`) when the server cannot be reached, with the
httpx error as its cause. Paged endpoints are followed to the end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import JsonValue, TypeAdapter

from layerwatch import wire
from layerwatch.delivery.transport import error_for, make_client, send
from layerwatch.errors import (
    ConfigError,
    NotFoundError,
    RetryableError,
)
from layerwatch.options import resolve_server
from layerwatch.query.results import (
    Finding,
    Floats,
    Histogram,
    Ints,
    ProbeData,
    Project,
    Series,
    floats,
    ints,
    padded,
)

__all__ = ["Api", "RunRef"]

Json = dict[str, JsonValue]
Params = Mapping[str, object]  # values: str, int, float, bool, None, RunRef, or lists of them
_Pairs = list[tuple[str, str | int | float | bool | None]]
_DATETIME = TypeAdapter(datetime)
_RUNS_PAGE = 1000


class Api:
    """A client of a layerwatch server's query API.

    * **server** - base URL; defaults to `$LAYERWATCH_SERVER`, then `http://127.0.0.1:8000`.
    * **timeout** - seconds to wait for the server, per request.
    * **transport** - an `httpx.BaseTransport` to send with (e.g. `httpx.MockTransport`).

    `Authorization: Bearer $LAYERWATCH_TOKEN` is sent when that variable is set.
    Use it as a context manager, or call `close()`.
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = resolve_server(server, None)
        self._http = make_client(
            timeout=timeout, base_url=f"{self.server}/api/v1", transport=transport
        )

    def __enter__(self) -> Api:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections; further queries raise."""
        self._http.close()

    def __repr__(self) -> str:
        return f"<Api {self.server}>"

    # -- runs ----------------------------------------------------------------------------

    def projects(self) -> list[Project]:
        """Every project, by name, with its number of runs."""
        return [
            Project(p["name"], _DATETIME.validate_python(p["created_at"]), p["runs"])
            for p in self._fetch("/projects")["data"]
        ]

    def runs(
        self,
        project: str | None = None,
        *,
        tag: str | None = None,
        status: str | None = None,
        name: str | None = None,
        config: Mapping[str, JsonValue] | None = None,
    ) -> list[RunRef]:
        """Runs newest first, with every filter given matching.

        `config` maps keys (dotted for nested values: `"opt.momentum"`) to the
        values a run's config must hold there, compared as JSON (1 equals 1.0).
        """
        filters = [f"{key}:{json.dumps(value)}" for key, value in (config or {}).items()]
        params = {"project": project, "tag": tag, "status": status, "name": name,
                  "config": filters}  # fmt: skip
        found: dict[str, RunRef] = {}
        offset = 0
        while True:
            page = self._fetch("/runs", {**params, "offset": offset, "limit": _RUNS_PAGE})
            data = page["data"]
            for run in data:  # a run created meanwhile shifts the pages: keep each once
                found.setdefault(str(run["id"]), RunRef.from_json(self, run))
            offset += len(data)
            if not data or offset >= page["count"]:
                return list(found.values())

    def run(self, run_id: str) -> RunRef:
        """The run with this id; `RunNotFoundError` when there is none."""
        return RunRef.from_json(self, self._fetch(f"/runs/{quote(run_id, safe='')}"))

    # -- requests --------------------------------------------------------------------------

    def get(self, path: str, params: Params | None = None) -> httpx.Response:
        """GET `path` (under `/api/v1`) with `params` (lists repeat; None is left out)."""
        return send(self._http, "GET", path, params=_query(params or {}))

    def get_json(self, path: str, params: Params | None = None) -> Json:
        """The JSON answer to GET `path`; NaN and infinities are the strings "NaN", ..."""
        body: Json = self._fetch(path, params)
        return body

    def _fetch(self, path: str, params: Params | None = None) -> Any:
        return self.get(path, params).json()

    def download(self, path: str, params: Params, target: Path) -> Path:
        """Stream the answer to GET `path` into the file `target`."""
        try:
            with self._http.stream("GET", path, params=_query(params)) as response:
                if not response.is_success:
                    response.read()
                    raise error_for("GET", path, response)
                with target.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.TransportError as error:
            target.unlink(missing_ok=True)  # no half-written file
            raise RetryableError(f"GET {path}: {type(error).__name__}: {error}") from error
        return target


def _query(params: Params) -> _Pairs:
    """Query pairs: a list repeats its key, a `RunRef` is its id, None is left out."""
    pairs: _Pairs = []
    for key, value in params.items():
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            if isinstance(item, RunRef):
                item = item.id
            if item is None:
                continue
            if not isinstance(item, str | int | float | bool):
                raise ConfigError(f"query parameter `{key}` cannot be a {type(item).__name__}")
            pairs.append((key, item))
    return pairs


@dataclass(frozen=True, eq=False)
class RunRef:
    """A run on the server: its description, and queries of its measurements.

    Measurement queries go to the server each time (a running run keeps growing).
    """

    id: str
    name: str
    project: str
    config: Json
    tags: tuple[str, ...]
    status: str
    started_at: datetime
    finished_at: datetime | None
    host: str | None
    api: Api = field(repr=False)

    @classmethod
    def from_json(cls, api: Api, run: Any) -> RunRef:
        finished = run.get("finished_at")
        return cls(
            id=str(run["id"]), name=str(run["name"]), project=str(run["project"]),
            config=run["config"], tags=tuple(run["tags"]), status=str(run["status"]),
            started_at=_DATETIME.validate_python(run["started_at"]),
            finished_at=None if finished is None else _DATETIME.validate_python(finished),
            host=None if run.get("host") is None else str(run["host"]), api=api,
        )  # fmt: skip

    def _path(self, suffix: str) -> str:
        return f"/runs/{self.id}/{suffix}"

    def _pages(self, suffix: str, params: Params) -> Iterator[Any]:
        """Every page of a paged endpoint, following `next_after_step`."""
        after: int | None = None
        while True:
            page = self.api._fetch(self._path(suffix), {**params, "after_step": after})
            yield page
            after = page.get("next_after_step")
            if after is None:
                return

    def tensors(self, kind: wire.Kind | None = None) -> list[wire.TensorInfo]:
        """The tensors the run has measurements of, in network order."""
        data = self.api._fetch(self._path("tensors"), {"kind": kind})["data"]
        return [wire.TensorInfo.model_validate(t) for t in data]

    def scalar_names(self) -> list[str]:
        return [str(n) for n in self.api._fetch(self._path("scalars"))["data"]]

    def series(
        self,
        tensor: str,
        stat: wire.StatName = "mean",
        kind: wire.Kind = "activation",
        start: int | None = None,
        end: int | None = None,
        max_points: int | None = None,
        *,
        rank: int = 0,
    ) -> Series:
        """One statistic of one tensor over steps; every step unless `max_points` thins it
        (keeping each bucket's min and max, the first and the last point)."""
        params = {"tensor": tensor, "stat": stat, "kind": kind, "start": start, "end": end,
                  "rank": rank, "max_points": max_points}  # fmt: skip
        return self._series("series", tensor, params)

    def scalars(
        self,
        name: str,
        start: int | None = None,
        end: int | None = None,
        max_points: int | None = None,
        *,
        rank: int = 0,
    ) -> Series:
        """One logged scalar over steps, like `series`."""
        params = {"name": name, "start": start, "end": end, "rank": rank,
                  "max_points": max_points}  # fmt: skip
        return self._series("scalars/series", name, params)

    def _series(self, suffix: str, name: str, params: Params) -> Series:
        steps: list[int] = []
        values: list[float | str] = []
        downsampled = False
        for page in self._pages(suffix, params):
            steps += page["steps"]
            values += page["values"]
            downsampled = downsampled or bool(page["downsampled"])
        return Series(name, ints(steps), floats(values), downsampled)

    def histograms(
        self,
        tensor: str,
        kind: wire.Kind = "activation",
        step: int | None = None,
        start: int | None = None,
        end: int | None = None,
        *,
        rank: int = 0,
    ) -> list[Histogram]:
        """Histograms of one tensor: at `step`, or at every step in [`start`, `end`]."""
        params = {"tensor": tensor, "kind": kind, "step": step, "start": start, "end": end,
                  "rank": rank}  # fmt: skip
        return [
            Histogram(int(h["step"]), floats(h["edges"]), ints(h["counts"]), h["sample_size"])
            for page in self._pages("histograms", params)
            for h in page["data"]
        ]

    def unit_means(
        self,
        tensor: str,
        kind: wire.Kind = "activation",
        start: int | None = None,
        end: int | None = None,
        *,
        rank: int = 0,
    ) -> tuple[Ints, Floats]:
        """(steps, means): `means[i, u]` is unit `u`'s mean at `steps[i]`."""
        params = {"tensor": tensor, "kind": kind, "start": start, "end": end, "rank": rank}
        steps: list[int] = []
        rows: list[list[float | str]] = []
        for page in self._pages("unit-means", params):
            steps += page["steps"]
            rows += page["values"]
        return ints(steps), padded(rows)

    def weight_changes(
        self, tensor: str, start: int | None = None, end: int | None = None, *, rank: int = 0
    ) -> dict[str, Ints | Floats]:
        """`steps`, and `since_prev`, `since_init`, `update_ratio` at each (see the README)."""
        params = {"tensor": tensor, "start": start, "end": end, "rank": rank}
        columns: dict[str, list[Any]] = {
            "steps": [], "since_prev": [], "since_init": [], "update_ratio": []}  # fmt: skip
        for page in self._pages("weight-changes", params):
            for key, values in columns.items():
                values += page[key]
        result: dict[str, Ints | Floats] = {"steps": ints(columns.pop("steps"))}
        return result | {key: floats(values) for key, values in columns.items()}

    def findings(self) -> list[Finding]:
        """What the server's diagnosis finds wrong with the run: errors first, then by step.

        ```python
        for finding in run.findings():
            print(finding.severity, finding.kind, finding.tensor or finding.scalar,
                  finding.step, finding.message)
        ```
        """
        data = self.api._fetch(self._path("findings"))["findings"]
        return [Finding.from_json(f) for f in data]

    def model(self) -> Json:
        """The module tree of each watched model, as the server answers `/model`."""
        return self.api.get_json(self._path("model"))

    def probe_steps(self, *, rank: int = 0) -> list[int]:
        """The steps at which the run was probed, in order."""
        data = self.api._fetch(self._path("probes"), {"rank": rank})["data"]
        return [int(p["step"]) for p in data]

    def probe(
        self, layer: str | Sequence[str] | None = None, step: int | None = None, *, rank: int = 0
    ) -> ProbeData:
        """The probe at `step` (default: the latest), with `layer` (a name or several; all
        when None)."""
        if step is None:
            steps = self.probe_steps(rank=rank)
            if not steps:
                raise NotFoundError(f"run `{self.id}` has no probe (rank {rank})", status_code=404)
            step = steps[-1]
        layers = [layer] if isinstance(layer, str) else layer
        response = self.api.get(self._path(f"probes/{step}"), {"rank": rank, "layer": layers})
        return ProbeData.decode(wire.Probe.model_validate_json(response.content))

    def plot(
        self, view: str, path: str | os.PathLike[str] | None = None, **params: object
    ) -> bytes:
        """The PNG of gallery view `view` (`series`, `scalars`, ...) with its query `params`
        (lists repeat; other runs may be given as `RunRef`s); also written to `path`."""
        png = self.api.get(self._path(f"plots/{quote(view, safe='')}.png"), params).content
        if path is not None:
            Path(path).write_bytes(png)
        return png

    def view_data(self, view: str, **params: object) -> Json:
        """The numbers behind view `view` (its JSON twin) for the same `params` as `plot`."""
        return self.api.get_json(self._path(f"plots/{quote(view, safe='')}.json"), params)

    def export(
        self,
        path: str | os.PathLike[str],
        table: Literal["stats", "scalars", "histograms", "unit_means", "weight_changes"]
        | None = None,
        format: Literal["csv", "npz"] = "csv",
        **filters: object,
    ) -> Path:
        """Download one `table` as CSV (default `stats`), or every series as npz, to `path`.

        `filters`: `kind`, `tensor` (a name or a list), `name` (scalars), `start`,
        `end`, `rank`, as the export endpoints take them.
        """
        if format not in ("csv", "npz"):
            raise ConfigError(f"`format` must be 'csv' or 'npz', not {format!r}")
        if format == "npz" and table is not None:
            raise ConfigError("an npz export holds every table: leave out `table`")
        params = dict(filters) | ({"table": table or "stats"} if format == "csv" else {})
        return self.api.download(self._path(f"export.{format}"), params, Path(path))

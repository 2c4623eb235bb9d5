"""Response models of the query endpoints.

Ingest payloads are not here: they are defined once, in ``layerwatch.wire``.
Non-finite floats are answered as the JSON strings "NaN", "Infinity" and
"-Infinity", which the client reads back as floats; the JSON schema of every
number these models answer says so (`allow_nonfinite`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from layerwatch.wire import Kind, NonfiniteEvent, RunStatus, StatName
from layerwatch_server.wire_schema import allow_nonfinite


def _as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class JsonAnswer(BaseModel):
    """Base of the models answered as JSON: NaN and infinities as strings, as their schema says."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return allow_nonfinite(handler.resolve_ref_schema(handler(core_schema)))


class _Public(JsonAnswer):
    model_config = ConfigDict(from_attributes=True)


class ValidationIssue(BaseModel):
    """One reason a request or payload was refused."""

    loc: list[str | int] = Field(description="Where: `query`, `path`, `body` and the field's path.")
    msg: str
    type: str = Field(description="pydantic's error type, e.g. `less_than_equal`.")


class ErrorPublic(BaseModel):
    """The body of every error answer; branch on `code`, never on `detail`."""

    detail: str | list[ValidationIssue] = Field(
        description="For people: prose, or the list of validation errors."
    )
    code: str = Field(
        description="For programs, stable across releases: `run_not_found`, `tensor_not_found`, "
        "`scalar_not_found`, `project_not_found`, `probe_not_found`, `not_found`, "
        "`method_not_allowed`, `conflict`, `payload_too_large`, `unsupported_encoding`, "
        "`invalid`, `unavailable`, or `http_<status>` for any other HTTP error.",
        examples=["run_not_found", "invalid"],
    )


class Readiness(BaseModel):
    """Whether the server can answer: its database answers and is migrated."""

    status: Literal["ok", "unavailable"]
    database: str | None = Field(None, description="The database's dialect, when ready.")
    detail: str | None = Field(None, description="Why not, when unavailable.")
    code: Literal["unavailable"] | None = Field(None, description="Set when unavailable.")


class ProjectPublic(_Public):
    name: str
    created_at: UtcDatetime
    runs: int = Field(description="Number of runs in the project.")


class ProjectsPublic(_Public):
    data: list[ProjectPublic]
    count: int


class RunPublic(_Public):
    id: str
    project: str
    name: str
    config: dict[str, Any]
    tags: list[str]
    status: RunStatus
    host: str | None
    started_at: UtcDatetime
    finished_at: UtcDatetime | None
    updated_at: UtcDatetime
    last_seen_at: UtcDatetime | None = Field(
        description="When the run's process last sent data or a heartbeat. A `running` run "
        "silent for longer than the server's run timeout is reported `crashed`."
    )
    skipped_captures: int | None = Field(
        None,
        description="Captures the client skipped because its reducer fell behind (the "
        "steps stored are then a subsample), as it reported when the run ended; null when "
        "it did not say.",
    )


class RunsPublic(_Public):
    data: list[RunPublic]
    count: int


class TensorPublic(_Public):
    name: str
    kind: Kind
    module_type: str | None
    shape: list[int] | None
    dtype: str | None


class TensorsPublic(_Public):
    data: list[TensorPublic]
    count: int


class SeriesPublic(_Public):
    """One statistic of one tensor over steps."""

    tensor: str
    kind: Kind
    stat: StatName
    rank: int
    steps: list[int]
    values: list[float]
    total: int = Field(description="Points in the requested step range before downsampling.")
    downsampled: bool = Field(
        description="True when `steps`/`values` keep only the min/max envelope, first and last."
    )
    next_after_step: int | None = Field(
        description="Pass as `after_step` for the next page; null on the last page."
    )


class ScalarSeriesPublic(_Public):
    """One user-logged scalar over steps."""

    name: str
    rank: int
    steps: list[int]
    values: list[float]
    times: list[float | None]
    total: int
    downsampled: bool
    next_after_step: int | None


class ScalarNamesPublic(_Public):
    data: list[str]
    count: int


class HistogramPublic(_Public):
    step: int
    rank: int
    edges: list[float] = Field(description="Bin edges, one more than `counts`.")
    counts: list[int]
    sample_size: int | None = Field(
        None, description="Elements the counts were estimated from; null: every finite one."
    )


class HistogramsPublic(_Public):
    tensor: str
    kind: Kind
    data: list[HistogramPublic]
    count: int
    next_after_step: int | None


class HistogramStepsPublic(_Public):
    """The steps at which one tensor has a histogram."""

    tensor: str
    kind: Kind
    rank: int
    steps: list[int]
    total: int = Field(description="Steps with a histogram before thinning.")
    downsampled: bool


class UnitMeansPublic(_Public):
    """Per-unit means of one activation: ``values[i]`` holds the units at ``steps[i]``."""

    tensor: str
    kind: Kind
    rank: int
    units: int
    steps: list[int]
    values: list[list[float]]
    next_after_step: int | None


class WeightChangesPublic(_Public):
    """How far one weight moved at each captured step (see ``layerwatch.wire.WeightChanges``)."""

    tensor: str
    rank: int
    steps: list[int]
    since_prev: list[float]
    since_init: list[float]
    update_ratio: list[float]
    next_after_step: int | None


class ModulePublic(_Public):
    path: str
    type: str
    params: int
    trainable: int
    inputs: list[list[int]] | None
    outputs: list[list[int]] | None


class ModelTreePublic(_Public):
    name: str
    rank: int
    params: int = Field(description="Parameters of the whole model.")
    modules: list[ModulePublic] = Field(description="In `named_modules()` order.")


class ModelTreesPublic(_Public):
    data: list[ModelTreePublic]
    count: int


class ProbeLayerSummary(_Public):
    name: str
    features_shape: list[int]
    source_shape: list[int] | None
    reduced: str
    maps_shape: list[int] | None


class ProbeSkippedPublic(_Public):
    """A probed layer the client left out (see ``layerwatch.wire.ProbeSkipped``)."""

    name: str
    reason: str


class ProbeSummary(_Public):
    step: int
    rank: int
    samples: int
    labels: bool = Field(description="Whether the probe's labels are stored.")
    predictions: bool = Field(description="Whether the model's predictions are stored.")
    layers: list[ProbeLayerSummary]
    attributions: list[int] | None = Field(
        None, description="Shape of the stored integrated gradients, (samples, *input shape)."
    )
    skipped: list[ProbeSkippedPublic] = Field(
        default_factory=list, description="Probed layers the client left out, and why."
    )


class ProbesPublic(_Public):
    data: list[ProbeSummary]
    count: int


class NonfiniteEventPublic(NonfiniteEvent, _Public):
    """A watched tensor turning non-finite, as the client's sentinel sent it
    (``layerwatch.wire.NonfiniteEvent``), with the process that saw it."""

    rank: int = Field(description="The process that saw it.")


class NonfiniteEventsPublic(_Public):
    data: list[NonfiniteEventPublic] = Field(description="Sorted by step, then rank.")
    count: int


TOKEN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class TokenCreate(BaseModel):
    """An API token to create; its secret is made by the server and shown once."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TOKEN_NAME_PATTERN, description="Unique; letters, digits, . _ -")
    scope: Literal["read", "write", "admin"] = Field(
        description="read; write: read plus ingest and run updates; admin: everything."
    )
    projects: list[Annotated[str, Field(min_length=1, max_length=250)]] | None = Field(
        None, max_length=1000, description="The projects it covers; omitted or null: all."
    )
    expires_in_seconds: int | None = Field(
        None, gt=0, le=100 * 365 * 86400, description="Expires this long after creation."
    )


class TokenPublic(_Public):
    name: str
    scope: Literal["read", "write", "admin"]
    projects: list[str] | None = Field(description="The projects it covers; null: all.")
    created_at: UtcDatetime
    expires_at: UtcDatetime | None
    last_used_at: UtcDatetime | None = Field(
        description="When it was last used, to within a minute."
    )
    revoked_at: UtcDatetime | None


class TokenCreated(TokenPublic):
    secret: str = Field(description="The secret: shown this once, never stored.")


class TokensPublic(_Public):
    data: list[TokenPublic]
    count: int


class LayerLatest(_Public):
    """One tensor's newest statistics, and the recent values of one of them (a sparkline)."""

    name: str
    kind: Kind
    module_type: str | None
    shape: list[int] | None
    step: int | None = Field(description="Step of the newest statistics; null: none stored.")
    stats: dict[StatName, float | None]
    update_ratio: float | None = Field(
        description="Newest update-to-weight ratio (weights whose change is captured)."
    )
    trend_stat: StatName = Field(description="The statistic `trend` follows.")
    trend_steps: list[int]
    trend: list[float | None] = Field(description="Its newest values, oldest first.")


class LayersLatestPublic(_Public):
    run_id: str
    rank: int
    data: list[LayerLatest] = Field(description="In network order.")
    count: int


class LatestScalar(_Public):
    step: int
    value: float | None


class RunLatestScalars(_Public):
    run_id: str
    last_step: int | None = Field(description="The newest step of any scalar; null: none.")
    scalars: dict[str, LatestScalar]


class LatestScalarsPublic(_Public):
    data: list[RunLatestScalars]
    count: int


FindingKind = Literal[
    "dead_units",
    "vanishing_gradients",
    "exploding_gradients",
    "nonfinite",
    "not_updating",
    "saturation",
    "update_ratio",
    "loss_divergence",
    "oscillating_loss",
    "slow_convergence",
]
Severity = Literal["info", "warning", "error"]
EvidenceValue = float | int | str | bool | list[str] | list[int] | list[float] | None


class FindingPublic(_Public):
    """One thing the diagnosis found wrong with a run."""

    kind: FindingKind = Field(description="What is wrong (see the README's Diagnosis section).")
    tensor: str | None = Field(
        description="The tensor it concerns, as stored (`fc1`, `fc1.weight`); null for a loss."
    )
    tensor_kind: Kind | None = Field(description="The tensor's kind; null for a loss.")
    scalar: str | None = Field(description="The logged loss it concerns; null for a tensor.")
    step: int = Field(description="The first step at which it holds.")
    last_step: int | None = Field(description="The last step at which it was seen.")
    severity: Severity = Field(description="`error`, `warning` or `info`.")
    confidence: float = Field(ge=0, le=1, description="How sure the diagnosis is, 0 to 1.")
    message: str = Field(description="One sentence for people, naming layer and step.")
    evidence: dict[str, EvidenceValue] = Field(description="The numbers behind the finding.")
    view: str = Field(
        description="Relative URL of the gallery plot that shows it, with its parameters."
    )


class FindingsPublic(_Public):
    """A run's findings: errors first, then warnings, then information; each by step."""

    findings: list[FindingPublic]

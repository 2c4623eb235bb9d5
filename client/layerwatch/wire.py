"""Every HTTP payload between client and server, defined once.

The server imports these models to validate what it receives, so a payload
the client can build is by construction one the server accepts. Only the
standard library and pydantic are imported here: no torch, no server code.

Measurements travel as columns (one list per statistic) rather than one
object per row: that is several times cheaper to encode and to validate.
Non-finite floats are legitimate measurements; they are written as the
JSON strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` and read back
from those strings or from the bare ``NaN``/``Infinity`` literals.

Over 400 lines on purpose: this file is the whole HTTP contract, read and
reviewed in one place; splitting it would give the contract two homes.
Decoding the packed arrays these payloads carry lives beside it, in `codec.py`.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Annotated, Final, Literal, get_args

from pydantic import (
    AfterValidator,
    Base64Bytes,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StringConstraints,
    model_validator,
)

SCHEMA_VERSION: Final = 1
MAX_NAME_LENGTH = 250
MAX_BINS = 512
DEFAULT_BINS = 64
DEFAULT_SAMPLE_SIZE = 65_536
"""Histograms of larger tensors are estimated from this many elements (client default)."""
MAX_UNITS = 4096
"""Most units (output features, or channels) whose means one record carries."""
MAX_PROBE_SAMPLES = 4096
MAX_PROBE_VALUES = 16 * 1024 * 1024
"""Most float16 values of one probed layer (samples x features, or feature maps)."""
MAX_ATTRIBUTION_SAMPLES = 64
MAX_ATTRIBUTION_VALUES = 4 * 1024 * 1024
"""Most float32 values of a probe's attributions (samples x input size)."""

MAX_CONFIG_BYTES = 64 * 1024
MAX_NONFINITE_ALSO = 64
"""Most other tensors a `NonfiniteEvent` names as firing at its step."""
MAX_NONFINITE_EVENTS = 1024
"""Most `NonfiniteEvent`s in one batch."""
"""Most bytes of a run's `config` as compact JSON: hyperparameters, not data."""

# The one rule for user text. Names, projects, tags and config keys: no control
# (Cc), format (Cf: bidirectional and zero-width marks, which make two names look
# alike), surrogate (Cs) or line/paragraph separator (Zl, Zp) characters. Config
# text values may also hold tabs and newlines, and format characters (scripts and
# emoji sequences need them).
_NAME_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_TEXT_CATEGORIES = frozenset({"Cc", "Cs"})
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ASCII_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _check_text(value: str, *, name: bool) -> str:
    ascii_control = _ASCII_CONTROL if name else _ASCII_TEXT_CONTROL
    if (found := ascii_control.search(value)) is not None:
        raise ValueError(f"must not contain the control character U+{ord(found[0]):04X}")
    if value.isascii():
        return value
    forbidden = _NAME_CATEGORIES if name else _TEXT_CATEGORIES
    for char in value:
        if unicodedata.category(char) in forbidden and (name or char not in "\t\n\r"):
            raise ValueError(
                f"must not contain U+{ord(char):04X} ({unicodedata.category(char)}: control, "
                "format such as bidirectional or zero-width, or separator characters)"
            )
    return value


def _printable_name(value: str) -> str:
    return _check_text(value, name=True)


Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH),
    AfterValidator(_printable_name),
]
"""A project, run, tensor or scalar name or a tag: 1-250 printable characters."""

ConfigKey = Annotated[
    str, StringConstraints(max_length=MAX_NAME_LENGTH), AfterValidator(_printable_name)
]
"""A key of a run's config, at any depth: up to 250 printable characters."""

Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
"""A client-made id (run id, batch id): safe in a URL path and a file name."""

MAX_INT64 = 2**63 - 1
Step = Annotated[int, Field(ge=0, le=MAX_INT64)]
"""An optimizer step index, counted from 0."""
Count = Annotated[int, Field(ge=0, le=MAX_INT64)]


def _finite_json(value: JsonValue) -> JsonValue:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must not contain NaN or Infinity (only measurements may)")
    if isinstance(value, list):
        for item in value:
            _finite_json(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if len(key) > MAX_NAME_LENGTH:
                raise ValueError(f"keys must be at most {MAX_NAME_LENGTH} characters")
            _check_text(key, name=True)
            _finite_json(item)
    elif isinstance(value, str):
        _check_text(value, name=False)  # lone surrogates too: no response could encode them
    return value


def _config_size(config: dict[str, JsonValue]) -> dict[str, JsonValue]:
    size = len(json.dumps(config, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_CONFIG_BYTES:
        raise ValueError(f"must be at most {MAX_CONFIG_BYTES} bytes as JSON, not {size}")
    return config


FiniteJson = Annotated[JsonValue, AfterValidator(_finite_json)]
Config = Annotated[dict[ConfigKey, FiniteJson], AfterValidator(_config_size)]
Kind = Literal["activation", "weight", "grad"]
StatName = Literal["mean", "std", "min", "max", "abs_mean", "l2", "zero_frac", "nonfinite", "numel"]
STAT_NAMES: tuple[StatName, ...] = get_args(StatName)
STAT_INDEX: Final[dict[StatName, int]] = {name: i for i, name in enumerate(STAT_NAMES)}
"""Position of each statistic in a stacked statistics vector (the order of `STAT_NAMES`)."""
RunStatus = Literal["running", "finished", "failed", "crashed"]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, ser_json_inf_nan="strings", allow_inf_nan=True
    )


class RunCreate(_Model):
    """Create a run, or resume it when ``id`` names one that exists."""

    id: Identifier | None = Field(
        None, description="Client-chosen run id; several processes may write to one run."
    )
    project: Name = Field("default", description="Project the run belongs to.")
    name: Name | None = Field(None, description="Display name; defaults to one made from the id.")
    config: Config = Field(
        default_factory=dict,
        description=f"Hyperparameters and other settings, any JSON up to {MAX_CONFIG_BYTES} bytes.",
    )
    tags: list[Name] = Field(default_factory=list, max_length=64)
    host: Name | None = Field(None, description="Host the run trains on.")


class RunUpdate(_Model):
    """Change a run's status, e.g. when training finishes or fails."""

    status: RunStatus
    skipped_captures: Count | None = Field(
        None,
        description="Captures the client skipped because its reducer fell behind, sent when "
        "the run ends; the steps stored are then a subsample.",
    )


class TensorInfo(_Model):
    """What is known about a watched tensor besides its measurements."""

    name: Name = Field(description="Qualified module or parameter name, e.g. `encoder.fc1`.")
    kind: Kind
    module_type: Name | None = None
    shape: list[Count] | None = Field(None, max_length=32)
    dtype: Annotated[Name, StringConstraints(max_length=32)] | None = None


def _check_columns(owner: str, steps: list[int], columns: Mapping[str, Sequence[object]]) -> None:
    n = len(steps)
    for column, values in columns.items():
        if len(values) != n:
            raise ValueError(f"{owner}: `{column}` has {len(values)} values for {n} steps")
    if len(set(steps)) != n:
        raise ValueError(f"{owner}: `steps` has repeated values")


class Stats(_Model):
    """Summary statistics of one tensor at one or more steps, one column each."""

    name: Name
    kind: Kind
    steps: list[Step] = Field(min_length=1)
    mean: list[float]
    std: list[float]
    min: list[float]
    max: list[float]
    abs_mean: list[float]
    l2: list[float]
    zero_frac: list[float]
    nonfinite: list[Count]
    numel: list[Count]

    @model_validator(mode="after")
    def _same_lengths(self) -> Stats:
        _check_columns(
            f"stats of {self.kind} `{self.name}`",
            self.steps,
            {stat: getattr(self, stat) for stat in STAT_NAMES},
        )
        return self


def _packed(what: str, dtype: str, itemsize: int, most: int) -> AfterValidator:
    """A check that base64-decoded bytes hold 1 to `most` values of `itemsize` bytes."""

    def check(value: bytes) -> bytes:
        if not value or len(value) % itemsize or len(value) > itemsize * most:
            raise ValueError(
                f"packed {what} must decode to 1-{most} little-endian {dtype} values "
                f"(got {len(value)} bytes)"
            )
        return value

    return AfterValidator(check)


PackedCounts = Annotated[Base64Bytes, _packed("counts", "uint32", 4, MAX_BINS)]
"""Bin counts as base64 of little-endian uint32: compact and quick to encode and parse."""

Counts = Annotated[list[Count], Field(min_length=1, max_length=MAX_BINS)] | PackedCounts
"""The counts of one histogram: a JSON list of integers, or `PackedCounts`."""

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


PackedFloat32 = Annotated[Base64Bytes, _packed("values", "float32", 4, MAX_UNITS)]
"""Base64 of little-endian float32 values (NaN and infinities allowed)."""

Shape = Annotated[list[Count], Field(max_length=32)]


def bin_count(counts: list[int] | bytes) -> int:
    """How many bins ``counts`` (a list, or packed uint32 bytes) has."""
    return len(counts) // 4 if isinstance(counts, bytes) else len(counts)


class Histograms(_Model):
    """Bin counts of one tensor at one or more steps, one entry per step.

    Each step's bins are equal-width over ``[lo, hi]``, or given by explicit
    ``edges``. Non-finite elements are never binned; the statistics count
    them in ``nonfinite``.
    """

    name: Name
    kind: Kind
    steps: list[Step] = Field(min_length=1)
    counts: list[Counts] = Field(
        description="Per step: a list of 1-512 counts, or base64 of little-endian uint32."
    )
    lo: list[FiniteFloat] | None = Field(None, description="Per step: lower edge of the bins.")
    hi: list[FiniteFloat] | None = Field(None, description="Per step: upper edge of the bins.")
    edges: list[Annotated[list[FiniteFloat], Field(max_length=MAX_BINS + 1)]] | None = Field(
        None, description="Per step: explicit bin edges, one more than the counts, increasing."
    )
    sample_size: list[Count | None] | None = Field(
        None,
        description="Per step: elements drawn (uniformly, with replacement) to estimate the "
        "histogram, or null where the counts cover every finite element.",
    )

    @model_validator(mode="after")
    def _consistent_bins(self) -> Histograms:
        where = f"histograms of {self.kind} `{self.name}`"
        columns: dict[str, Sequence[object]] = {"counts": self.counts}
        if self.edges is not None:
            if self.lo is not None or self.hi is not None:
                raise ValueError(f"{where}: give either `edges` or `lo`/`hi`, not both")
            columns["edges"] = self.edges
        elif self.lo is None or self.hi is None:
            raise ValueError(f"{where}: needs `lo` and `hi`, or `edges`")
        else:
            columns["lo"], columns["hi"] = self.lo, self.hi
        if self.sample_size is not None:
            columns["sample_size"] = self.sample_size
        _check_columns(where, self.steps, columns)
        if self.lo is not None and self.hi is not None:
            for step, lo, hi in zip(self.steps, self.lo, self.hi, strict=True):
                if hi < lo:
                    raise ValueError(f"{where} at step {step}: `hi` ({hi}) is below `lo` ({lo})")
        for step, counts, edges in zip(self.steps, self.counts, self.edges or (), strict=False):
            bins = bin_count(counts)
            if len(edges) != bins + 1:
                raise ValueError(
                    f"{where} at step {step}: {len(edges)} edges for {bins} bins (need {bins + 1})"
                )
            if any(b <= a for a, b in itertools.pairwise(edges)):
                raise ValueError(f"{where} at step {step}: `edges` must be strictly increasing")
        return self


class UnitMeans(_Model):
    """Per-unit means of one tensor at one or more steps.

    A unit is an output feature (the last dimension) or, for convolution and
    normalisation outputs, a channel (dimension 1); the mean is over every other
    dimension. A ReLU unit whose mean is 0 was inactive on the whole batch.
    """

    name: Name
    kind: Kind
    steps: list[Step] = Field(min_length=1)
    values: list[PackedFloat32] = Field(
        description=f"Per step: base64 of little-endian float32, one per unit (1-{MAX_UNITS})."
    )

    @model_validator(mode="after")
    def _same_lengths(self) -> UnitMeans:
        where = f"unit means of {self.kind} `{self.name}`"
        _check_columns(where, self.steps, {"values": self.values})
        if len({len(v) for v in self.values}) > 1:
            raise ValueError(f"{where}: every step must have the same number of units")
        return self


class WeightChanges(_Model):
    """How much one parameter moved, at one or more captured steps.

    ``since_prev`` is ``||W_t - W_prev|| / ||W_prev||`` against the previous
    capture (NaN at the first), ``since_init`` the same against the weights when
    the model was watched, and ``update_ratio`` ``||W_after - W_t|| / ||W_t||``
    for the optimizer step taken at step t alone (NaN where unknown). Norms are
    Frobenius norms; a ratio over a zero norm is NaN or infinite.
    """

    name: Name
    steps: list[Step] = Field(min_length=1)
    since_prev: list[float]
    since_init: list[float]
    update_ratio: list[float]

    @model_validator(mode="after")
    def _same_lengths(self) -> WeightChanges:
        columns = {"since_prev": self.since_prev, "since_init": self.since_init,
                   "update_ratio": self.update_ratio}  # fmt: skip
        _check_columns(f"weight changes of `{self.name}`", self.steps, columns)
        return self


ModulePath = Annotated[
    str, StringConstraints(max_length=MAX_NAME_LENGTH), AfterValidator(_printable_name)
]


class ModuleInfo(_Model):
    """One module of a model tree, as `named_modules()` lists it."""

    path: ModulePath = Field(description="Qualified name; empty for the model itself.")
    type: Name = Field(description="Class name, e.g. `Conv2d`.")
    params: Count = Field(
        description="Parameters the module owns itself (not its children's); one shared "
        "with an earlier module (tied weights) is counted there only, so the counts of a "
        "tree add up to the model's size."
    )
    trainable: Count = Field(description="Of those, the ones that require gradients.")
    inputs: list[Shape] | None = Field(
        None, max_length=64, description="Shapes of its tensor inputs at the first forward."
    )
    outputs: list[Shape] | None = Field(
        None, max_length=64, description="Shapes of its tensor outputs at the first forward."
    )


class ModelTree(_Model):
    """The structure of a watched model; sent once, at its first forward pass."""

    name: Name = Field(description="The model's class name.")
    modules: list[ModuleInfo] = Field(min_length=1, max_length=100_000)

    @model_validator(mode="after")
    def _unique_paths(self) -> ModelTree:
        if len({m.path for m in self.modules}) != len(self.modules):
            raise ValueError(f"model `{self.name}`: module paths must be unique")
        return self


class Scalars(_Model):
    """Values of one user-logged scalar (loss, accuracy, ...) at one or more steps."""

    name: Name
    steps: list[Step] = Field(min_length=1)
    values: list[float]
    times: list[FiniteFloat] | None = Field(None, description="Wall-clock Unix time of each value.")

    @model_validator(mode="after")
    def _same_lengths(self) -> Scalars:
        columns: dict[str, list[float]] = {"values": self.values}
        if self.times is not None:
            columns["times"] = self.times
        _check_columns(f"scalar `{self.name}`", self.steps, columns)
        return self


class NonfiniteEvent(_Model):
    """The first step at which a watched tensor turned non-finite (NaN or infinite) after
    being finite, as the client's sentinel saw it between two captured steps."""

    step: Step = Field(description="The step at which the tensor first held a NaN or inf.")
    tensor: Name = Field(
        description="The first tensor that fired at that step: activations in the order "
        "their modules ran, then gradients, then weights, in parameter order."
    )
    kind: Literal["activation", "grad", "weight"] = Field(
        description="`activation` (a module's output), `grad` (a parameter's gradient) or "
        "`weight` (a parameter's weights, made non-finite by the update that ended `step`)."
    )
    also: list[Name] = Field(
        default_factory=list,
        max_length=MAX_NONFINITE_ALSO,
        description=f"Other tensors that turned non-finite at the same step, in the same "
        f"order (at most {MAX_NONFINITE_ALSO}).",
    )


class Batch(_Model):
    """One POST of measurements from one process.

    ``batch_id`` is made by the client once per batch; sending the same batch
    again (a retry, a replay from the spool) is a no-op on the server.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    batch_id: Identifier
    rank: int = Field(0, ge=0, le=2**31 - 1, description="Process rank under torch.distributed.")
    tensors: list[TensorInfo] = Field(default_factory=list)
    stats: list[Stats] = Field(default_factory=list)
    histograms: list[Histograms] = Field(default_factory=list)
    scalars: list[Scalars] = Field(default_factory=list)
    unit_means: list[UnitMeans] = Field(default_factory=list)
    weight_changes: list[WeightChanges] = Field(default_factory=list)
    models: list[ModelTree] = Field(default_factory=list)
    nonfinite: list[NonfiniteEvent] = Field(
        default_factory=list,
        max_length=MAX_NONFINITE_EVENTS,
        description="Non-finite values the client's sentinel saw since its previous "
        "report; left out when empty, so servers from before it take the batch.",
    )

    def body(self) -> bytes:
        """The JSON to POST; without non-finite events it is what servers from before
        `nonfinite` take."""
        leave_out = None if self.nonfinite else {"nonfinite"}
        return self.model_dump_json(exclude=leave_out).encode()


class BatchReceipt(_Model):
    """The server's answer to a batch."""

    batch_id: str
    duplicate: bool = Field(description="True when this batch had been stored before.")
    stats: int = Field(description="Statistic rows in the batch (stored now or before).")
    histograms: int
    scalars: int
    unit_means: int = 0
    weight_changes: int = 0
    models: int = Field(0, description="Model trees in the batch.")


PackedFloat16 = Annotated[Base64Bytes, _packed("values", "float16", 2, MAX_PROBE_VALUES)]
"""Base64 of little-endian float16 values in C order."""


PackedInt32 = Annotated[Base64Bytes, _packed("class indices", "int32", 4, MAX_PROBE_SAMPLES)]
"""Base64 of little-endian int32 values, one per probe sample."""


def _check_packed(where: str, field: str, data: bytes, shape: list[int], itemsize: int) -> None:
    expected = math.prod(shape) * itemsize
    if len(data) != expected:
        raise ValueError(
            f"{where}: `{field}` holds {len(data) // itemsize} values, "
            f"its shape {shape} needs {expected // itemsize}"
        )


Reduction = Literal["none", "pooled", "truncated", "averaged"]
"""How a probed layer's features were made from its output."""


class ProbeLayer(_Model):
    """What one layer output on the probe inputs: a row of features per sample.

    ``features`` is ``(samples, *feature_shape)`` in float16: the output itself
    when it fits the client's feature budget, else pooled (convolution maps are
    average-pooled spatially) or truncated; ``source_shape`` is the output's
    shape per sample before that. ``maps`` keeps the full-resolution maps
    (capped) of the first few samples of a convolution output.
    """

    name: Name
    features_shape: Shape = Field(min_length=2)
    features: PackedFloat16
    source_shape: Shape | None = None
    reduced: Reduction = Field(
        "none", description="How `features` was made from the layer's output."
    )
    maps_shape: Shape | None = Field(None, min_length=4, max_length=4)
    maps: PackedFloat16 | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ProbeLayer:
        where = f"probe layer `{self.name}`"
        if self.features_shape[0] > MAX_PROBE_SAMPLES:
            raise ValueError(f"{where}: more than {MAX_PROBE_SAMPLES} samples")
        _check_packed(where, "features", self.features, self.features_shape, 2)
        if (self.maps is None) != (self.maps_shape is None):
            raise ValueError(f"{where}: give both `maps` and `maps_shape`, or neither")
        if self.maps is not None and self.maps_shape is not None:
            _check_packed(where, "maps", self.maps, self.maps_shape, 2)
        return self


PackedAttributions = Annotated[
    Base64Bytes, _packed("attributions", "float32", 4, MAX_ATTRIBUTION_VALUES)
]


class ProbeAttributions(_Model):
    """Integrated gradients of the first probe samples' inputs, toward one class each.

    ``values`` has the shape ``(samples, *input shape)``: each input element's
    share of the target logit's rise from an all-zero baseline, in float32 (the
    shares are small, and float16 would flush many to zero). ``deltas`` holds each
    sample's convergence delta: the shares' sum minus that rise, near zero when
    ``steps`` was enough.
    """

    method: Literal["integrated_gradients"] = "integrated_gradients"
    shape: Shape = Field(min_length=2)
    values: PackedAttributions
    targets: PackedInt32 = Field(description="The class each sample's values explain.")
    steps: int = Field(ge=1, le=10_000, description="Steps of the path integral.")
    deltas: list[float] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ProbeAttributions:
        where = "attributions"
        samples = self.shape[0]
        if not 1 <= samples <= MAX_ATTRIBUTION_SAMPLES:
            raise ValueError(f"{where}: 1-{MAX_ATTRIBUTION_SAMPLES} samples, not {samples}")
        _check_packed(where, "values", self.values, self.shape, 4)
        _check_packed(where, "targets", self.targets, [samples], 4)
        if self.deltas is not None and len(self.deltas) != samples:
            raise ValueError(f"{where}: {len(self.deltas)} deltas for {samples} samples")
        return self


class ProbeSkipped(_Model):
    """A layer chosen for the probe that sent no outputs, and why."""

    name: Name
    reason: str = Field(
        max_length=500, description="Why, e.g. `output (12, 3, 8) is not batch-first`."
    )


class Probe(_Model):
    """The model's outputs on the fixed probe inputs at one step (or part of them).

    A probe's layers may come in several requests with the same ``step``: the
    first one that carries ``labels``, ``predictions`` or ``attributions`` sets them, later ones
    add layers. Sending a layer again with the same content is a no-op; with
    other content it is a conflict.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    step: Step
    rank: int = Field(0, ge=0, le=2**31 - 1)
    samples: int = Field(ge=1, le=MAX_PROBE_SAMPLES)
    labels: PackedInt32 | None = Field(None, description="Class label of each sample.")
    predictions: PackedInt32 | None = Field(
        None, description="Predicted class of each sample (argmax of the model's output)."
    )
    layers: list[ProbeLayer] = Field(default_factory=list, max_length=1024)
    attributions: ProbeAttributions | None = Field(
        None, description="Integrated gradients of the first samples, when asked for."
    )
    skipped: list[ProbeSkipped] = Field(
        default_factory=list,
        max_length=1024,
        description="Probed layers left out of this probe, with the reason; carried by "
        "the first part of a probe, like `labels`.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Probe:
        for field in ("labels", "predictions"):
            data = getattr(self, field)
            if data is not None:
                _check_packed(f"probe at step {self.step}", field, data, [self.samples], 4)
        if self.attributions is not None and self.attributions.shape[0] > self.samples:
            raise ValueError(f"probe at step {self.step}: attributions of more samples than it has")
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"probe at step {self.step}: layer names must be unique")
        for layer in self.layers:
            if layer.features_shape[0] != self.samples:
                raise ValueError(
                    f"probe layer `{layer.name}` has {layer.features_shape[0]} samples, "
                    f"the probe {self.samples}"
                )
        return self


class ProbeReceipt(_Model):
    """The server's answer to a probe upload."""

    step: int
    layers: int = Field(description="Layers stored now (sent before: not counted).")

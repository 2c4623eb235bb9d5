"""The OpenAPI document: valid OpenAPI 3.1, whole, and saying what the server does.

Its errors, bounds and value formats are checked here against the document
itself and against the validators they describe; `test_fuzz.py` checks the
document against the running server.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import unicodedata
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from pydantic import TypeAdapter, ValidationError

from layerwatch import wire
from layerwatch_server.config import Settings
from layerwatch_server.main import create_app
from layerwatch_server.wire_schema import NAME_PATTERN, NONFINITE, TEXT_PATTERN, packed_schema

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def document() -> Doc:
    app = create_app(Settings(database_url="sqlite://"), migrate=False)
    # Through JSON, as clients read it: no Python object may hide in it.
    doc: Doc = json.loads(json.dumps(app.openapi()))
    return doc


def operations(document: Doc) -> Iterator[tuple[str, str, Doc]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


def subschemas(schema: object) -> Iterator[Doc]:
    """``schema`` and every schema nested in it."""
    if isinstance(schema, dict):
        yield schema
        for value in schema.values():
            yield from subschemas(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from subschemas(value)


def resolve(document: Doc, schema: Doc) -> Doc:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_the_document_is_valid_openapi_3_1(document: Doc) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema


def test_every_reference_resolves(document: Doc) -> None:
    text = json.dumps(document)
    refs = set(re.findall(r'"\$ref": "([^"]+)"', text))
    assert refs
    schemas = document["components"]["schemas"]
    assert {ref for ref in refs if ref.rsplit("/", 1)[1] not in schemas} == set()
    assert all(ref.startswith("#/components/schemas/") for ref in refs)
    assert '"$defs"' not in text


def test_the_served_document_is_the_same(live_server: str, document: Doc) -> None:
    served = httpx.get(f"{live_server}/openapi.json", timeout=10).raise_for_status().json()
    assert served == document


def bounded(schema: Doc) -> bool:
    return bool({"minimum", "exclusiveMinimum"} & set(schema)) and bool(
        {"maximum", "exclusiveMaximum"} & set(schema)
    )


def test_every_integer_parameter_has_bounds(document: Doc) -> None:
    unbounded = [
        f"{method} {path} {parameter['name']}"
        for method, path, operation in operations(document)
        for parameter in operation.get("parameters", [])
        for schema in subschemas(parameter["schema"])
        if schema.get("type") == "integer" and not bounded(schema)
    ]
    assert unbounded == []


def reachable(document: Doc, schema: object, seen: set[str] | None = None) -> Iterator[Doc]:
    """Every schema in ``schema`` and in the components it refers to, each once."""
    seen = set() if seen is None else seen
    for sub in subschemas(schema):
        yield sub
        ref = sub.get("$ref")
        if ref is not None and ref not in seen:
            seen.add(ref)
            yield from reachable(document, resolve(document, sub), seen)


def test_every_integer_of_a_body_has_bounds(document: Doc) -> None:
    unbounded = [
        f"{method} {path} {json.dumps(schema)}"
        for method, path, operation in operations(document)
        for schema in reachable(document, operation.get("requestBody", {}))
        if schema.get("type") == "integer" and "const" not in schema and not bounded(schema)
    ]
    assert unbounded == []


def test_every_error_is_documented_with_the_error_model(document: Doc) -> None:
    """404 where a path names something, 413 and 415 where there is a body, 422 wherever
    a request can be refused, 503 wherever the database is asked, 401 wherever a token is
    needed, 403 and 429 where it must allow a write; all one model."""
    missing = []
    for method, path, operation in operations(document):
        expected = {"400"}
        if path.startswith("/api/"):  # a token is needed, and the database asked
            expected |= {"401", "503"}
            if method != "GET" or path.startswith("/api/v1/tokens"):
                expected |= {"403"}
            if method != "GET":
                expected |= {"429"}
        if operation.get("parameters") or "requestBody" in operation:
            expected |= {"422"}
        if "{" in path:
            expected |= {"404"}
        if "requestBody" in operation:
            expected |= {"413", "415"}
        responses = operation["responses"]
        missing += [f"{method} {path} {status}" for status in expected - set(responses)]
        for status, response in responses.items():
            # /readyz answers its 503 as a `Readiness`, a probe's status (with a `code`).
            errors = {"401", "403", "404", "409", "413", "415", "422", "429", "503"}
            if path.startswith("/api/") and status in errors:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorPublic"}, (path, status)
    assert missing == []


def test_the_error_model_has_detail_and_code(document: Doc) -> None:
    error = document["components"]["schemas"]["ErrorPublic"]
    assert set(error["required"]) == {"detail", "code"}
    detail = error["properties"]["detail"]["anyOf"]
    assert {"type": "string"} in detail  # prose: a refused config filter, a missing run
    assert any(branch.get("type") == "array" for branch in detail)  # validation errors
    answers = document["paths"]["/api/v1/runs"]["post"]["responses"]
    assert "Retry-After" in answers["503"]["headers"]
    assert "Retry-After" in answers["429"]["headers"]
    assert "WWW-Authenticate" in answers["401"]["headers"]
    assert set(answers["400"]["content"]) == {"application/json", "text/plain"}


NUMBERS_ANSWERED = [
    ("/api/v1/runs/{run_id}/series", "SeriesPublic", "values"),
    ("/api/v1/runs/{run_id}/scalars/series", "ScalarSeriesPublic", "values"),
    ("/api/v1/runs/{run_id}/unit-means", "UnitMeansPublic", "values"),
    ("/api/v1/runs/{run_id}/weight-changes", "WeightChangesPublic", "since_prev"),
    ("/api/v1/runs/{run_id}/plots/gradient-flow.json", "GradientFlowData", "abs_mean"),
    ("/api/v1/runs/{run_id}/plots/weight-change.json", "Panel", "values"),
    ("/api/v1/runs/{run_id}/plots/histogram.json", "Curve", "values"),
    ("/api/v1/runs/{run_id}/plots/scatter.json", "ScatterPanel", "x"),
]


@pytest.mark.parametrize(("path", "model", "field"), NUMBERS_ANSWERED)
def test_answered_numbers_may_be_nan_strings(
    document: Doc, path: str, model: str, field: str
) -> None:
    assert path in document["paths"]
    schema = document["components"]["schemas"][model]["properties"][field]
    numbers = [s for s in subschemas(schema) if s.get("type") == "number"]
    enums = [s["enum"] for s in subschemas(schema) if "enum" in s]
    assert numbers
    assert enums == [list(NONFINITE)] * len(numbers)


def test_no_number_forgets_nan(document: Doc) -> None:
    """Every number of every model may also be one of the strings NaN travels as."""
    numbers, beside_nan = {}, set()
    for name, schema in document["components"]["schemas"].items():
        for sub in subschemas(schema):
            if sub.get("type") == "number":
                numbers[id(sub)] = name
            branches = sub.get("anyOf", [])
            if {"type": "string", "enum": list(NONFINITE)} in branches:
                beside_nan |= {id(branch) for branch in branches}
    forgetful = {name for key, name in numbers.items() if key not in beside_nan}
    # Which floats must be finite wire knows: bin edges, times (`FiniteFloat`), a config.
    assert forgetful == {"Histograms", "Scalars", "ConfigValue"}


def test_uploads_say_nan_travels_as_a_string(document: Doc) -> None:
    stats = document["components"]["schemas"]["Stats"]["properties"]["mean"]["items"]
    assert {"type": "string", "enum": list(NONFINITE)} in stats["anyOf"]
    times = document["components"]["schemas"]["Scalars"]["properties"]["times"]
    assert "NaN" not in json.dumps(times)  # wall-clock times must be finite


# -- the rules wire checks in code, as patterns ------------------------------------


def _accepted(adapter: TypeAdapter[Any], value: Any) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def _characters() -> Iterator[str]:
    for code in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code)) != "Cs":  # surrogates: no characters (see wire_schema)
            yield chr(code)


def test_the_name_pattern_refuses_what_wire_refuses() -> None:
    name = TypeAdapter(wire.Name)
    pattern = re.compile(NAME_PATTERN)
    disagree = [hex(ord(c)) for c in _characters()
                if bool(pattern.match(f"a{c}b")) != _accepted(name, f"a{c}b")]  # fmt: skip
    assert disagree == []


def test_the_text_pattern_refuses_what_wire_refuses_in_a_config() -> None:
    config = TypeAdapter(wire.Config)
    pattern = re.compile(TEXT_PATTERN)
    disagree = [hex(ord(c)) for c in _characters()
                if bool(pattern.match(f"a{c}b")) != _accepted(config, {"k": f"a{c}b"})]  # fmt: skip
    assert disagree == []


@pytest.mark.parametrize(("itemsize", "most"), [(2, 5), (2, 6), (4, 5), (4, 512)])
def test_the_packed_schema_takes_whole_values_only(itemsize: int, most: int) -> None:
    """Base64 of whole values, at least one; at most ``most``, as far as a length can say
    (a last value that pads into the same length is the server's to refuse)."""
    schema = packed_schema(itemsize, most)
    pattern = re.compile(schema["pattern"])
    longest = len(base64.b64encode(bytes(most * itemsize)))
    assert schema["maxLength"] == longest
    for size in range(3 * most * itemsize):
        text = base64.b64encode(bytes(size)).decode()
        documented = bool(pattern.match(text)) and schema["minLength"] <= len(text)
        documented = documented and len(text) <= schema["maxLength"]
        assert documented == (size % itemsize == 0 and size > 0 and len(text) <= longest), size


def test_names_and_packed_values_are_documented_where_they_are_sent(document: Doc) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["Stats"]["properties"]["name"]["pattern"] == NAME_PATTERN
    run = document["paths"]["/api/v1/runs"]["post"]["requestBody"]["content"]
    config = run["application/json"]["schema"]["properties"]["config"]
    assert config["propertyNames"]["pattern"] == NAME_PATTERN
    assert "patternProperties" not in config  # it would let other keys through
    assert schemas["ConfigValue"]["anyOf"][0] == {"type": "string", "pattern": TEXT_PATTERN}
    features = schemas["ProbeLayer"]["properties"]["features"]
    assert features["pattern"] == packed_schema(2, wire.MAX_PROBE_VALUES)["pattern"]
    series = document["paths"]["/api/v1/runs/{run_id}/plots/series.json"]["get"]
    tensor = next(p for p in series["parameters"] if p["name"] == "tensor")
    assert tensor["schema"]["items"]["pattern"] == NAME_PATTERN


# -- what only the running server can say ------------------------------------------


def test_a_method_a_path_does_not_take_is_405_naming_every_one_it_takes(
    api: httpx.Client,
) -> None:
    for method in ("OPTIONS", "DELETE", "PUT", "HEAD"):
        response = api.request(method, "/runs/some-run")
        assert response.status_code == 405, (method, response.text)
        assert response.headers["allow"] == "GET, PATCH"
        if method != "HEAD":
            assert response.json()["code"] == "method_not_allowed"
    assert api.options("/runs").headers["allow"] == "GET, POST"
    assert api.delete("/runs/r/heartbeat").headers["allow"] == "POST"

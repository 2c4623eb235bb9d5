"""JSON schemas that say what `layerwatch.wire` checks in code, where pydantic cannot see it.

pydantic writes a model's JSON schema from its declared constraints; the rules
`wire` checks in validators are invisible to it. The OpenAPI document must
still say them, or a client built from it sends what the server refuses:

- Non-finite floats travel as the JSON strings "NaN", "Infinity" and
  "-Infinity" (`nonfinite_number`; `allow_nonfinite` for a whole schema).
- Names (projects, runs, tensors, scalars, tags, config keys) hold no
  control, format, line or paragraph separator characters (`NAME_PATTERN`);
  text in a config holds no control characters but tabs and newlines
  (`TEXT_PATTERN`).
- Packed arrays are base64 of whole little-endian values, at least one and
  at most some number (`packed_schema`).

`WireJsonSchema` writes the schemas of wire models with all three; `Name` is
`wire.Name` for query parameters, documented likewise.
"""

from __future__ import annotations

import math
import sys
import unicodedata
from collections.abc import Iterator
from typing import Annotated, Any, get_args

from pydantic import BaseModel, WithJsonSchema
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue
from pydantic_core import core_schema

from layerwatch import wire

NONFINITE = ("NaN", "Infinity", "-Infinity")
"""How NaN and the infinities travel in JSON: as these strings."""

REF_TEMPLATE = "#/components/schemas/{model}"

_ANNOTATIONS = ("title", "description", "default", "examples")


def nonfinite_number(schema: JsonSchemaValue) -> JsonSchemaValue:
    """A number schema that also admits the strings of `NONFINITE`."""
    outer = {key: schema[key] for key in _ANNOTATIONS if key in schema}
    inner = {key: value for key, value in schema.items() if key not in _ANNOTATIONS}
    return {"anyOf": [inner, {"type": "string", "enum": list(NONFINITE)}], **outer}


def _subschemas(schema: JsonSchemaValue) -> Iterator[tuple[Any, Any]]:
    """(container, key) of each schema nested in `schema`, but not behind a `$ref`."""
    for keyword in ("items", "additionalProperties"):
        if isinstance(schema.get(keyword), dict):
            yield schema, keyword
    for keyword in ("anyOf", "oneOf", "allOf", "prefixItems"):
        yield from ((schema[keyword], i) for i in range(len(schema.get(keyword, ()))))
    properties = schema.get("properties", {})
    yield from ((properties, name) for name in properties)


def allow_nonfinite(schema: JsonSchemaValue) -> JsonSchemaValue:
    """`schema` with every number in it (in place) also admitting the strings of `NONFINITE`."""
    for container, key in _subschemas(schema):
        if container[key].get("type") == "number":
            container[key] = nonfinite_number(container[key])
        else:
            allow_nonfinite(container[key])
    return schema


def _refused(categories: frozenset[str], allowed: str = "") -> str:
    """The contents of a regex character class of the characters of ``categories``, but
    ``allowed``.

    Characters are written as ``\\uXXXX`` (read alike by ECMA-262, Python and
    Rust regexes), those beyond U+FFFF as themselves.
    """
    ranges: list[list[int]] = []
    for code in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code)) in categories and chr(code) not in allowed:
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])

    def char(code: int) -> str:
        return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)

    return "".join(char(lo) if lo == hi else f"{char(lo)}-{char(hi)}" for lo, hi in ranges)


# Surrogates (Cs), which `wire` refuses too, are left out of the patterns: they are no
# characters, JSON in UTF-8 cannot hold them, and regex engines refuse them in a pattern.
NAME_PATTERN = f"^[^{_refused(frozenset({'Cc', 'Cf', 'Zl', 'Zp'}))}]*$"
"""What `wire` allows in a name: no control (Cc), format (Cf), line or paragraph
separator (Zl, Zp) characters."""
TEXT_PATTERN = f"^[^{_refused(frozenset({'Cc'}), allowed=chr(9) + chr(10) + chr(13))}]*$"
"""What `wire` allows in text inside a config: no control characters but tab, line feed
and carriage return."""

Name = Annotated[
    wire.Name,
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "maxLength": wire.MAX_NAME_LENGTH,
            "pattern": NAME_PATTERN,
        }
    ),
]
"""`wire.Name`, its schema saying which characters it refuses."""

_BASE64 = "[A-Za-z0-9+/]"


def packed_schema(itemsize: int, most: int) -> JsonSchemaValue:
    """Length and pattern of base64 of 1 to ``most`` values of ``itemsize`` bytes."""

    def chars(size: int) -> tuple[int, int]:  # base64 of `size` bytes: (data chars, padding)
        return 4 * (size // 3) + (0, 2, 3)[size % 3], (0, 2, 1)[size % 3]

    period = math.lcm(itemsize, 3)  # bytes whose base64 needs no padding
    tails = "|".join(f"{_BASE64}{{{data}}}{'=' * pad}"
                     for data, pad in map(chars, range(itemsize, period, itemsize)))  # fmt: skip
    return {
        "minLength": sum(chars(itemsize)),
        "maxLength": sum(chars(itemsize * most)),
        "pattern": f"^(?:{_BASE64}{{{chars(period)[0]}}})*(?:{tails})?$",
    }


# The check of each packed type of `wire`: its values' size in bytes, and how many at most.
_PACKED: dict[object, tuple[int, int]] = {
    get_args(packed)[-1].func: (itemsize, most)
    for packed, itemsize, most in (
        (wire.PackedCounts, 4, wire.MAX_BINS),  # uint32
        (wire.PackedFloat32, 4, wire.MAX_UNITS),
        (wire.PackedFloat16, 2, wire.MAX_PROBE_VALUES),
        (wire.PackedInt32, 4, wire.MAX_PROBE_SAMPLES),
        (wire.PackedAttributions, 4, wire.MAX_ATTRIBUTION_VALUES),  # float32
    )
}

CONFIG_VALUE = "ConfigValue"
_CONFIG_VALUE_SCHEMA: JsonSchemaValue = {
    "description": "Any JSON value but NaN and infinities; text without control characters "
    "(tabs and newlines are fine); keys of up to 250 characters, like names.",
    "anyOf": [
        {"type": "string", "pattern": TEXT_PATTERN},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "array", "items": {"$ref": REF_TEMPLATE.format(model=CONFIG_VALUE)}},
        {
            "type": "object",
            "propertyNames": {"maxLength": wire.MAX_NAME_LENGTH, "pattern": NAME_PATTERN},
            "additionalProperties": {"$ref": REF_TEMPLATE.format(model=CONFIG_VALUE)},
        },
    ],
}


_CONFIG_VALUE_MARK = "x-config-value"


class WireJsonSchema(GenerateJsonSchema):
    """Schemas of `layerwatch.wire` models that say what its validators check (see above)."""

    def float_schema(self, schema: core_schema.FloatSchema) -> JsonSchemaValue:
        json_schema = super().float_schema(schema)
        if schema.get("allow_inf_nan") is False:
            return json_schema
        return nonfinite_number(json_schema)

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        # pydantic says a key pattern as `patternProperties`, which lets other keys through.
        json_schema = super().dict_schema(schema)
        for pattern, values in json_schema.pop("patternProperties", {}).items():
            json_schema["additionalProperties"] = values
            json_schema["propertyNames"] = {
                **json_schema.get("propertyNames", {}),
                "pattern": pattern,
            }
        return json_schema

    def function_after_schema(
        self, schema: core_schema.AfterValidatorFunctionSchema
    ) -> JsonSchemaValue:
        json_schema = super().function_after_schema(schema)
        # wire's checks are private to it; tests/server/api/test_openapi.py proves that
        # the patterns refuse what they refuse, character by character.
        check = schema["function"]["function"]
        if check is wire._printable_name:
            return {**json_schema, "pattern": NAME_PATTERN}
        if check in _PACKED:
            return {**json_schema, **packed_schema(*_PACKED[check])}
        if check is wire._finite_json:
            return {_CONFIG_VALUE_MARK: True}  # pydantic refuses a `$ref` it did not make
        return json_schema


def model_schema(model: type[BaseModel], mode: JsonSchemaMode) -> JsonSchemaValue:
    """The JSON schema of a wire model, its definitions under `$defs`, referring to components."""
    schema = model.model_json_schema(
        ref_template=REF_TEMPLATE, schema_generator=WireJsonSchema, mode=mode
    )
    if _refer_to_config_value(schema):
        schema.setdefault("$defs", {})[CONFIG_VALUE] = _CONFIG_VALUE_SCHEMA
    return schema


def _refer_to_config_value(node: object) -> bool:
    """Replace each `WireJsonSchema` mark of a config value with a `$ref`; whether there was one."""
    found = False
    if isinstance(node, dict):
        if node.pop(_CONFIG_VALUE_MARK, False):
            node["$ref"] = REF_TEMPLATE.format(model=CONFIG_VALUE)
            found = True
        for value in node.values():
            found = _refer_to_config_value(value) or found
    elif isinstance(node, list):
        for value in node:
            found = _refer_to_config_value(value) or found
    return found

"""Schemathesis hooks of `test_fuzz.py` (loaded through ``SCHEMATHESIS_HOOKS``).

- Real data: run ids, tensor, scalar, layer and model names and steps of the
  seeded runs (``$LAYERWATCH_FUZZ_SEED``, JSON) take the place of generated
  ones part of the time, so requests reach past the 404 of a random id.
- The admin token the requests carry is never revoked.
- A 422 that no schema can foresee is not a failure of `positive_data_acceptance`:
  the OpenAPI document describes each parameter and field, not the rules
  between them (`start` after `end`, a part of a view that is not drawn) nor
  those on the run's data (a sample the probe does not have). The server says
  which kind of 422 it is: its own checks answer prose, and validators of
  several fields at once answer `value_error`s; a single field's failed
  constraint (a type, a range, a length) is anything else, and stays a failure.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

import schemathesis

SEED: dict[str, Any] = json.loads(os.environ["LAYERWATCH_FUZZ_SEED"])

# Parameters and what they name in the seeded runs (a path's `name` is a token's).
_IN_PATH = {"run_id": "runs", "project": "projects", "step": "steps"}
_IN_QUERY = {"tensor": "tensors", "name": "scalars", "layer": "layers", "model": "models",
             "step": "steps", "compare": "runs", "project": "projects"}  # fmt: skip


def _choose(options: list[Any], key: str, salt: int) -> Any:
    return options[zlib.crc32(f"{key}:{salt}".encode()) % len(options)]


def _real(values: dict[str, Any] | None, names: dict[str, str], salt: int) -> Any:
    """``values`` with each parameter that names something real, two times in three."""
    if not values:
        return values
    chosen = dict(values)
    for key, value in values.items():
        if key not in names or _choose([0, 1, 2], key, salt) == 0:
            continue
        known = SEED[names[key]]
        if isinstance(value, list):
            chosen[key] = [_choose(known, f"{key}{i}", salt) for i in range(1 + salt % 3)]
        else:
            chosen[key] = _choose(known, key, salt)
    return chosen


@schemathesis.hook
def filter_case(context: schemathesis.HookContext, case: Any) -> bool:
    # The token the requests carry is not for revoking: the rest of the run would be 401s.
    return (case.path_parameters or {}).get("name") != SEED["token"]


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: Any) -> Any:
    # Positive cases only: a negative case must keep what makes it negative; and not the
    # stateful phase's, whose values come from earlier answers. The choice is a function of
    # the generated values, so that a deterministic run stays one.
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or meta.phase.name == "stateful":
        return case
    salt = zlib.crc32(repr((case.path_parameters, case.query)).encode())
    case.path_parameters = _real(case.path_parameters, _IN_PATH, salt)
    case.query = _real(case.query, _IN_QUERY, salt)
    return case


def _unforeseeable(response: Any) -> bool:
    """A 422 for a rule between parameters or on the run's data (see above)."""
    if response.status_code != 422:
        return False
    try:
        answer = response.json()
    except ValueError:
        return False
    detail = answer.get("detail")
    if answer.get("code") != "invalid":
        return False
    return isinstance(detail, str) or all(issue["type"] == "value_error" for issue in detail)


@schemathesis.hook
def filter_failure(
    context: schemathesis.HookContext, failure: Any, case: Any, response: Any
) -> bool:
    return not (failure.code == "ST202" and _unforeseeable(response))

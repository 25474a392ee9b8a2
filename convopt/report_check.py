"""A saved report on its way into `convopt report`: bounded, strict JSON, then typed against the schema.

Whatever file a user hands over, the result is a report every renderer can draw, or one InputError line
(exit 2): a regular file of at most REPORT_MAX_BYTES, UTF-8 JSON without NaN/Infinity, nested at most
MAX_DEPTH levels, every number finite and every integer within ±2^63, and then valid against
``convopt/report_schema.json`` (draft 2020-12).

The schema is checked with jsonschema, a runtime dependency since this module: the schema uses $ref,
oneOf and if/then, and the reference implementation checks it as the tests do; a subset written here
would be a second copy of the schema's meaning to keep in step.
"""
from __future__ import annotations

import functools
import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

from convopt.errors import InputError
from convopt.limits import REPORT_MAX_BYTES
from convopt.text import safe

MAX_DEPTH = 64
INT_LIMIT = 2**63


def report_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of Report.to_dict(), shipped as convopt/report_schema.json."""
    text = resources.files("convopt").joinpath("report_schema.json").read_text(encoding="utf-8")
    return json.loads(text)


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    try:
        import jsonschema
    except ImportError:
        raise ImportError(
            "validating a report needs jsonschema, a dependency of convopt: pip install jsonschema "
            "(or reinstall convopt)"
        ) from None
    schema = report_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def validate_report(d: Any) -> None:
    """Raise jsonschema.ValidationError if ``d`` does not match the report schema."""
    _validator().validate(d)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def _check_values(data: Any) -> str | None:
    """Why ``data`` cannot be a report before the schema even looks (too deep, a number out of range), or None."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, float) and not math.isfinite(v):
            return "a number too large for a float"
        elif isinstance(v, int) and not isinstance(v, bool) and not -INT_LIMIT <= v < INT_LIMIT:
            return "an integer beyond ±2^63"
    return None


def check_report(data: Any, source: str) -> dict[str, Any]:
    """``data`` (parsed JSON) as a report the renderers can draw, or InputError saying where it is wrong."""
    def bad(why: str) -> InputError:
        return InputError(f"{safe(source)} is not a valid convopt report: {why}; render a report written by "
                          "convopt optimize --report")

    why = _check_values(data)
    if why is not None:
        raise bad(why)
    try:
        validator = _validator()
    except ImportError as exc:
        raise InputError(str(exc)) from None
    import jsonschema

    err = next(validator.iter_errors(data), None)  # the first error (collecting all costs 4x) ...
    if err is not None:
        err = jsonschema.exceptions.best_match([err])  # ... and, under a oneOf, its most specific cause
        where = "/".join(str(p) for p in err.absolute_path) or "the top level"
        raise bad(f"at {safe(where)[:120]}: {safe(err.message)[:160]}")
    return data


def read_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read, parse and check a JSON report file (module docstring); InputError with one line otherwise."""
    from convopt.io import read_regular_file

    p = Path(path)
    raw = read_regular_file(p, REPORT_MAX_BYTES, "a JSON report")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{safe(p)} is not a JSON report: {safe(str(exc))[:120]}") from None
    except RecursionError:
        raise InputError(f"{safe(p)} is not a valid convopt report: nested too deeply") from None
    return check_report(data, str(p))

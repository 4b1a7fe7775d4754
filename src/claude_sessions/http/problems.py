"""Validation failures in words: what is wrong with which field, and what is allowed.

Pydantic's own messages (``Input should be ...``, a regular expression, ``JSON decode
error``, ``loc`` lists) are for programmers of this server, not for its users; each kind
of failure is told here as a sentence that names the field (its dotted path, also the
``param`` of the answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from claude_sessions.config import _MODEL_NAME, _TENANT, _TOOL_NAME, END_USER

#: Where a failure's path starts: FastAPI's first ``loc`` item says which part of the request.
_PARTS = {"body", "path", "query", "header", "cookie"}

#: Regular expressions of this API's fields, in words.
PATTERNS: dict[str, str] = {
    r"^[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*$": "letters, digits, '.', '_' and '-', not dots only",
    r"^[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*(?:/[A-Za-z0-9._-]*[A-Za-z0-9_-][A-Za-z0-9._-]*)*$": (
        "a folder inside the workspace, relative to it: names of letters, digits and '._-' separated by '/', "
        "none made of dots only"
    ),
    rf"^{_TOOL_NAME.pattern}$": "a tool name or rule such as 'Read' or 'Bash(git log:*)'",
    _MODEL_NAME: "a model name such as 'sonnet' or 'claude-sonnet-4-5'",
    # A tenant's name, and a function's (the OpenAI endpoint's tools and calls): the same pattern.
    rf"^{_TENANT.pattern}$": "a name of 1 to 64 letters, digits, '_' or '-'",
    rf"^{END_USER.pattern}$": "an end user's id: up to 128 letters, digits and '._@-', not starting with '.'",
}

#: Pydantic's type names, as a user reads them.
_TYPES = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a JSON object",
    "model_type": "a JSON object",
    "model_attributes_type": "a JSON object",
    "list_type": "a JSON array",
    "tuple_type": "a JSON array",
    "none_required": "null",
}


@dataclass(frozen=True)
class Problem:
    """One failure: the field's dotted path (``None``: the whole body) and what is wrong, in words."""

    param: str | None
    message: str

    def __str__(self) -> str:
        return self.message


def problems(errors: Sequence[Any]) -> list[Problem]:
    """Pydantic's errors as problems in words, one per field (a union's branches told together)."""
    by_field: dict[str | None, list[dict[str, Any]]] = {}
    for error in errors:
        param = None if error["type"] == "json_invalid" else _path(error.get("loc", ()))
        by_field.setdefault(param, []).append(error)
    return [_problem(param, items) for param, items in by_field.items()]


def _path(loc: Sequence[Any]) -> str | None:
    """The field's dotted path; a union's branch names (``str``, ``list[...]``) are no field."""
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in _PARTS else [str(p) for p in loc]
    named = [p for p in parts if not _is_branch(p)]
    return ".".join(named) or None


def _is_branch(part: str) -> bool:
    return "[" in part or part in {"str", "int", "float", "bool", "dict", "list", "none", "tuple"}


def _problem(param: str | None, errors: list[dict[str, Any]]) -> Problem:
    field = param or "the body"
    if len(errors) > 1 and all(e["type"] in _TYPES for e in errors):  # a union: none of its types matched
        return Problem(param, f"{field} must be {' or '.join(dict.fromkeys(_TYPES[e['type']] for e in errors))}")
    specific = [e for e in errors if e["type"] not in _TYPES] or errors
    return Problem(param, _sentence(field, specific[0]))


def _sentence(field: str, error: dict[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "json_invalid":
        return "the body is not valid JSON: check its quotes, commas and brackets"
    if kind == "missing":
        return f"{field} is required"
    if kind == "extra_forbidden":
        return f"{field} is not a field of this request"
    if kind in _TYPES:
        return f"{field} must be {_TYPES[kind]}"
    if kind == "string_pattern_mismatch":
        allowed = PATTERNS.get(str(ctx.get("pattern")), "letters, digits and punctuation this field allows")
        return f"{field} must be {allowed}"
    if kind in ("string_too_short", "too_short"):
        unit = "characters" if kind == "string_too_short" else "items"
        return f"{field} must have at least {ctx.get('min_length')} {unit}"
    if kind in ("string_too_long", "too_long"):
        unit = "characters" if kind == "string_too_long" else "items"
        return f"{field} must have at most {ctx.get('max_length')} {unit}"
    if kind in ("literal_error", "enum"):
        return f"{field} is {_shown(error.get('input'))}; it must be one of {ctx.get('expected')}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = next(iter(ctx.values()), "")
        words = {"greater_than_equal": "at least", "greater_than": "more than"}
        return f"{field} must be {words.get(kind, 'at most' if kind == 'less_than_equal' else 'less than')} {bound}"
    if kind == "timezone_aware":
        return f"{field} must be a date and time with its offset, such as 2026-12-31T23:59:00Z"
    if kind in ("datetime_parsing", "datetime_from_date_parsing", "datetime_type"):
        return f"{field} must be an RFC 3339 date and time, such as 2026-12-31T23:59:00Z"
    if kind == "value_error":  # our own validators' words, after pydantic's prefix
        return f"{field}: {ctx.get('error', error.get('msg', ''))!s}"
    return f"{field} has a value this server does not accept"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

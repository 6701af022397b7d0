"""Claim checks: a measured number against a threshold fixed before the run.

A check is a plain dict (it goes to ``claim.json`` as is)::

    {"id": "a", "paper_claim": "...", "check": "gap <= tolerance = 0.02", "quantity": "gap",
     "op": "<=", "threshold": 0.02, "threshold_parameter": "tolerance",
     "measured": {"gap": 0.013}, "verdict": "reproduced"}

This module is the one home of the verdict vocabulary; ``claim.schema.json`` beside it
documents the whole ``claim.json`` record.

A claim that fails is reported as "not reproduced" with its numbers; it is never an
error, and never a reason to change the threshold after the fact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ntkrepro.files import jsonable, number

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
PARTLY = "partly reproduced"
VERDICTS = (REPRODUCED, PARTLY, NOT_REPRODUCED)

_OPS = {
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
}


def compare(
    claim_id: str,
    paper_claim: str,
    quantity: str,
    value: float,
    op: str,
    threshold: float,
    *,
    threshold_parameter: str | None = None,
    measured: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The check record of ``value op threshold`` for the measured ``quantity``.

    Args:
      claim_id: short id ("a", "b", ...).
      paper_claim: the paper's claim in words.
      quantity: name of the measured number (shown as ``"<quantity> <op> <threshold>"``).
      value: the measured number; NaN fails the check.
      op: one of ``<=, <, >=, >``.
      threshold: fixed before the run: the value of the notebook parameter
        ``threshold_parameter`` (:meth:`ntkrepro.results.Run.check` passes both).
      measured: further numbers to record beside ``value``.
    """
    if op not in _OPS:
        raise ValueError(f"op {op!r} not in {list(_OPS)}")
    ok = math.isfinite(float(value)) and _OPS[op](float(value), float(threshold))
    numbers = {quantity: number(value)}
    numbers.update({k: jsonable(v) for k, v in (measured or {}).items()})
    bound = f"{threshold_parameter} = {threshold:g}" if threshold_parameter else f"{threshold:g}"
    record = {
        "id": claim_id,
        "paper_claim": paper_claim,
        "check": f"{quantity} {op} {bound}",
        "quantity": quantity,
        "op": op,
        "measured": numbers,
        "threshold": float(threshold),
        "verdict": REPRODUCED if ok else NOT_REPRODUCED,
    }
    if threshold_parameter:
        record["threshold_parameter"] = threshold_parameter
    return record


def overall(checks: Sequence[Mapping[str, Any]]) -> str:
    """``reproduced`` if every check passed, ``not reproduced`` if none did, else partly."""
    if not checks:
        raise ValueError("a figure needs at least one claim check")
    passed = sum(c["verdict"] == REPRODUCED for c in checks)
    if passed == len(checks):
        return REPRODUCED
    return NOT_REPRODUCED if passed == 0 else PARTLY


def as_markdown(checks: Sequence[Mapping[str, Any]], scale: str = "") -> str:
    """A table of claim checks for the notebook page."""
    rows = ["| | paper's claim | check (threshold fixed before the run) | measured | verdict |"]
    rows.append("|---|---|---|---|---|")
    for c in checks:
        numbers = ", ".join(f"{k} = {_fmt(v)}" for k, v in c["measured"].items())
        rows.append(
            f"| {c['id']} | {c['paper_claim']} | `{c['check']}` | {numbers} | **{c['verdict']}** |"
        )
    head = f"**Overall: {overall(checks)}**" + (f" at {scale}" if scale else "")
    return head + "\n\n" + "\n".join(rows)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


# ---------------------------------------------------------------------------- schema


def schema_problems(record: Any) -> list[str]:
    """Every way in which a parsed ``claim.json`` departs from ``claim.schema.json`` (JSON
    Schema 2020-12), plus duplicate claim ids, one message each; empty if it is valid."""
    import datetime as dt
    import json
    from pathlib import Path

    import jsonschema

    schema = json.loads(Path(__file__).with_name("claim.schema.json").read_text("utf-8"))
    formats = jsonschema.FormatChecker(formats=())
    formats.checks("date-time", raises=ValueError)(
        lambda v: not isinstance(v, str) or bool(dt.datetime.fromisoformat(v))
    )
    validator = jsonschema.Draft202012Validator(schema, format_checker=formats)
    problems = [_schema_message(e) for e in validator.iter_errors(record)]
    if isinstance(record, dict) and isinstance(record.get("claims"), list):
        ids = [c.get("id") for c in record["claims"] if isinstance(c, dict)]
        duplicated = sorted({i for i in ids if isinstance(i, str) and ids.count(i) > 1})
        if duplicated:
            problems.append(f"claim ids are not unique: {duplicated}")
    return problems


def _schema_where(path: Sequence[Any]) -> str:
    """``claims[0]: `` for the path ``["claims", 0]``; empty for the top level."""
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return f"{where}: " if where else ""


def _schema_message(err: Any) -> str:
    """One jsonschema error in words, e.g. ``claims[0]: 'check' must be string, got number``."""
    path, kind, value = list(err.absolute_path), err.validator, err.validator_value
    if kind == "required":  # message: "'name' is a required property"
        return f"{_schema_where(path)}missing key {err.message.split(' is a required')[0]}"
    prefix, leaf = _schema_where(path[:-1]), path[-1] if path else None
    field = "top level" if not path else f"item {leaf}" if isinstance(leaf, int) else repr(leaf)
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array"}
    got = {**names, dict: "object", type(None): "null"}.get(type(err.instance), "value")
    if kind == "type":
        wanted = " or ".join([value] if isinstance(value, str) else value)
        return f"{prefix}{field} must be {wanted}, got {got}"
    if kind == "enum":
        return f"{prefix}{leaf} {err.instance!r} is not one of {list(value)}"
    if (kind, value) in (("minItems", 1), ("minProperties", 1), ("pattern", "\\S")):
        return f"{prefix}{field} is empty"
    if kind == "format":
        return f"{prefix}{field} is not an ISO 8601 {value}: {err.instance!r}"
    return f"{prefix}{field}: {err.message}"

"""Claim checks, validity gates and method checks: the verdict vocabulary of the book.

A **claim check** compares a measured number, with its 95% interval
(:class:`ntkrepro.intervals.Estimate`), against a threshold fixed before the run; the
verdict follows from the interval:

- *reproduced*: the whole interval lies on the claim's side of the threshold;
- *not reproduced*: it lies wholly on the other side;
- *inconclusive*: it straddles the threshold (or could not be computed).

A **validity gate** states a condition under which the paper's experiment means what it
claims (the network fits its training set, the linearization is trained as long as its
network, ...). A check whose gate failed is *invalid at this scale*: the run did not
test the claim. A **method check** verifies our own tools or an identity; it passes or
fails and is never counted as a reproduced claim.

Records are plain dicts (they go to ``claim.json`` as they are); ``claim.schema.json``
beside this module documents the whole record. A claim that fails is reported with its
numbers; it is never an error, and never a reason to change the threshold afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ntkrepro.files import jsonable, number
from ntkrepro.intervals import Estimate

REPRODUCED = "reproduced"
PARTLY = "partly reproduced"
INCONCLUSIVE = "inconclusive"
NOT_REPRODUCED = "not reproduced"
INVALID = "invalid at this scale"
#: Verdicts of a claim check (PARTLY only combines several checks).
CHECK_VERDICTS = (REPRODUCED, INCONCLUSIVE, NOT_REPRODUCED, INVALID)
#: Verdicts of a figure with at least one claim check.
VERDICTS = (REPRODUCED, PARTLY, INCONCLUSIVE, NOT_REPRODUCED, INVALID)
#: Outcomes of a method check or a gate.
PASSED, FAILED = "passed", "failed"
#: Verdicts of a figure with method checks only (it reproduces no claim).
METHOD_PASSED, METHOD_FAILED = "method checks passed", "method check failed"
FIGURE_VERDICTS = (*VERDICTS, METHOD_PASSED, METHOD_FAILED)
#: What each outcome means (shown on the status page).
MEANINGS = {
    REPRODUCED: "every claim check's 95% interval lies on the claim's side of its threshold",
    PARTLY: "some claim checks reproduced, others did not or were inconclusive or invalid",
    INCONCLUSIVE: "no claim check decided: the intervals straddle their thresholds",
    NOT_REPRODUCED: "no claim check reproduced, and at least one interval lies wholly on "
    "the wrong side of its threshold",
    INVALID: "a validity gate failed for every claim check: the setup did not test the "
    "claim at this scale (e.g. the network never fitted its training set)",
    METHOD_PASSED: "the figure verifies our tools or an identity, not a claim of the paper",
    METHOD_FAILED: "the figure verifies our tools or an identity, and one of its method "
    "checks failed",
}

_OPS = {
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
}


def _check_op(op: str) -> None:
    if op not in _OPS:
        raise ValueError(f"op {op!r} not in {list(_OPS)}")


def _bound(threshold: Any, threshold_parameter: str | None) -> str:
    t = f"{threshold:g}" if isinstance(threshold, int | float) else repr(threshold)
    return f"{threshold_parameter} = {t}" if threshold_parameter else t


def decide(low: float, high: float, op: str, threshold: float) -> str:
    """The verdict of the claim ``x op threshold`` for ``x`` in the interval [low, high]."""
    _check_op(op)
    low, high, t = float(low), float(high), float(threshold)
    if not (math.isfinite(t) and not math.isnan(low) and not math.isnan(high)):
        return INCONCLUSIVE
    if op in (">=", ">"):
        holds, fails = _OPS[op](low, t), not _OPS[op](high, t)
    else:
        holds, fails = _OPS[op](high, t), not _OPS[op](low, t)
    return REPRODUCED if holds else NOT_REPRODUCED if fails else INCONCLUSIVE


def compare(
    claim_id: str,
    paper_claim: str,
    quantity: str,
    estimate: Estimate,
    op: str,
    threshold: float,
    *,
    threshold_parameter: str | None = None,
    measured: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The claim check record of ``estimate op threshold`` for the measured ``quantity``.

    Args:
      claim_id: short id ("a", "b", ...); paper_claim: the paper's claim in words.
      quantity: name of the measured number (shown as ``"<quantity> <op> <threshold>"``).
      estimate: the measured number and its 95% interval (:mod:`ntkrepro.intervals`).
      op: one of ``<=, <, >=, >``.
      threshold: fixed before the run: the value of the notebook parameter
        ``threshold_parameter`` (:meth:`ntkrepro.results.Run.check` passes both).
      measured: further numbers to record beside the estimate.
    """
    _check_op(op)
    if not isinstance(estimate, Estimate):
        raise TypeError(
            f"claim check {claim_id!r}: {quantity} needs a 95% interval; pass an "
            "ntkrepro.intervals.Estimate (over_seeds or bootstrap), not a bare number"
        )
    numbers = {quantity: number(estimate.value)}
    if estimate.samples:
        numbers[f"{quantity}_per_seed"] = [number(v) for v in estimate.samples]
    numbers.update({k: jsonable(v) for k, v in (measured or {}).items()})
    record = {
        "id": claim_id,
        "paper_claim": paper_claim,
        "check": f"{quantity} {op} {_bound(threshold, threshold_parameter)}",
        "quantity": quantity,
        "op": op,
        "threshold": float(threshold),
        "measured": numbers,
        "interval": [number(estimate.low), number(estimate.high)],
        "interval_method": estimate.method,
        "n": int(estimate.n),
        "verdict": decide(estimate.low, estimate.high, op, threshold),
    }
    if threshold_parameter:
        record["threshold_parameter"] = threshold_parameter
    return record


def _point_check(
    key: str,
    text_key: str,
    text: str,
    quantity: str,
    value: Any,
    op: str,
    threshold: float,
    parameter,
    measured,
) -> dict[str, Any]:
    """A record for a number compared without an interval (a gate or a method check)."""
    _check_op(op)
    try:
        ok = math.isfinite(float(value)) and _OPS[op](float(value), float(threshold))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{key!r}: {quantity} must be a number, got {value!r}") from err
    record = {
        "id": key,
        text_key: text,
        "check": f"{quantity} {op} {_bound(threshold, parameter)}",
        "quantity": quantity,
        "op": op,
        "threshold": float(threshold),
        "measured": {quantity: number(value), **{k: jsonable(v) for k, v in measured.items()}},
        "verdict": PASSED if ok else FAILED,
    }
    if parameter:
        record["threshold_parameter"] = parameter
    return record


def gate(
    gate_id: str,
    condition: str,
    quantity: str,
    value: float,
    op: str,
    threshold: float,
    *,
    threshold_parameter: str | None = None,
    applies_to: Sequence[str] | None = None,
    measured: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A validity gate: the condition under which the claim checks ``applies_to`` (all
    checks when None) test the paper's claim; ``value op threshold`` must hold (NaN fails).
    """
    record = _point_check(
        gate_id, "condition", condition, quantity, value, op, threshold, threshold_parameter,
        measured or {},
    )  # fmt: skip
    record["applies_to"] = None if applies_to is None else list(applies_to)
    return record


def method_check(
    check_id: str,
    verifies: str,
    quantity: str,
    value: float,
    op: str,
    threshold: float,
    *,
    threshold_parameter: str | None = None,
    measured: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A method check: ``value op threshold`` verifies a tool or an identity (NaN fails);
    it passes or fails and never counts as a reproduced claim."""
    return _point_check(
        check_id, "verifies", verifies, quantity, value, op, threshold, threshold_parameter,
        measured or {},
    )  # fmt: skip


def apply_gates(
    checks: Sequence[Mapping[str, Any]], gates: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The claim checks with their gates: a check whose gate failed becomes *invalid at
    this scale*; what its interval alone said stays in ``interval_verdict``."""
    ids = {c["id"] for c in checks}
    for g in gates:
        unknown = set(g.get("applies_to") or ()) - ids
        if unknown:
            raise ValueError(f"gate {g['id']!r} applies to unknown checks {sorted(unknown)}")
    out = []
    for c in checks:
        mine = [g for g in gates if g.get("applies_to") is None or c["id"] in g["applies_to"]]
        failed = [g["id"] for g in mine if g["verdict"] != PASSED]
        c = {**c, "gates": [g["id"] for g in mine]}
        c["interval_verdict"] = c.get("interval_verdict", c["verdict"])
        c["verdict"] = INVALID if failed else c["interval_verdict"]
        if failed:
            c["failed_gates"] = failed
        out.append(c)
    return out


def overall(
    checks: Sequence[Mapping[str, Any]], method_checks: Sequence[Mapping[str, Any]] = ()
) -> str:
    """The figure's verdict from its claim checks (method checks only when it has none).

    Every check reproduced: reproduced; some: partly; none, but one not reproduced: not
    reproduced; every check invalid: invalid at this scale; else inconclusive.
    """
    if not checks:
        if not method_checks:
            raise ValueError("a figure needs at least one claim check or method check")
        return (
            METHOD_PASSED if all(m["verdict"] == PASSED for m in method_checks) else METHOD_FAILED
        )
    verdicts = [c["verdict"] for c in checks]
    if all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if REPRODUCED in verdicts:
        return PARTLY
    if NOT_REPRODUCED in verdicts:
        return NOT_REPRODUCED
    return INVALID if all(v == INVALID for v in verdicts) else INCONCLUSIVE


def as_markdown(
    checks: Sequence[Mapping[str, Any]],
    scale: str = "",
    gates: Sequence[Mapping[str, Any]] = (),
    method_checks: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The checks, gates and method checks of a figure as markdown for its page."""
    head = f"**Overall: {overall(checks, method_checks)}**" + (f" at {scale}" if scale else "")
    parts = [head]
    if checks:
        rows = [
            "| | paper's claim | check (threshold fixed before the run) | measured, 95% interval "
            "| verdict |",
            "|---|---|---|---|---|",
        ]
        for c in checks:
            verdict = c["verdict"]
            if verdict == INVALID:
                verdict += f" (gate {', '.join(c['failed_gates'])} failed)"
            rows.append(
                f"| {c['id']} | {c['paper_claim']} | `{c['check']}` | {estimate_text(c)} "
                f"| **{verdict}** |"
            )
        parts.append("\n".join(rows))
    if gates:
        rows = [
            "| gate | condition (fixed before the run) | check | measured | |",
            "|---|---|---|---|---|",
        ]
        for g in gates:
            rows.append(
                f"| {g['id']} | {g['condition']} | `{g['check']}` | "
                f"{_fmt(g['measured'][g['quantity']])} | {g['verdict']} |"
            )
        parts.append("Validity gates:\n\n" + "\n".join(rows))
    if method_checks:
        rows = ["| | method check (not a claim) | check | measured | |", "|---|---|---|---|---|"]
        for m in method_checks:
            rows.append(
                f"| {m['id']} | {m['verifies']} | `{m['check']}` | "
                f"{_fmt(m['measured'][m['quantity']])} | {m['verdict']} |"
            )
        parts.append("\n".join(rows))
    return "\n\n".join(parts)


def estimate_text(check: Mapping[str, Any]) -> str:
    """``0.78 [0.74, 0.81] (t-interval over 5 seeds)`` for a claim check record."""
    value = check["measured"].get(check["quantity"])
    low, high = check.get("interval", (None, None))
    text = f"{_fmt(value)} [{_fmt(low)}, {_fmt(high)}]"
    return text + (f" ({check['interval_method']})" if check.get("interval_method") else "")


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
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
        if record.get("claims") == [] and not record.get("method_checks"):
            problems.append("'claims' is empty (a figure needs a claim check or method check)")
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

"""The reproduction-status page (MyST markdown) from the validated claims of one profile."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ntkrepro.claims import (
    CHECK_VERDICTS,
    FAILED,
    INCONCLUSIVE,
    INVALID,
    MEANINGS,
    METHOD_FAILED,
    METHOD_PASSED,
    NOT_REPRODUCED,
    PARTLY,
    PASSED,
    REPRODUCED,
    VERDICTS,
)

#: sphinx-design badge role per outcome: coloured, and the outcome is spelled out in it.
#: Claim verdicts are filled badges; gates and method checks (not claims) are outlined.
BADGES = {
    REPRODUCED: "bdg-success",
    PARTLY: "bdg-warning",
    INCONCLUSIVE: "bdg-info",
    NOT_REPRODUCED: "bdg-danger",
    INVALID: "bdg-dark",
    METHOD_PASSED: "bdg-success-line",
    METHOD_FAILED: "bdg-danger-line",
    PASSED: "bdg-success-line",
    FAILED: "bdg-danger-line",
}
#: Keys that staging adds to a claim (not in claim.json): why it is stale, its image's path.
STALE_KEY = "_stale"
THUMBNAIL_KEY = "_thumbnail"
STALE = "{bdg-warning}`STALE`"
#: The class that sphinx-datatables makes sortable (``datatables_class`` in _config.yml).
DATATABLE_CLASS = "sphinx-datatable"
#: The class of the other tables of the page: fixed layout, long names wrap (book.TABLES_CSS).
STATUS_TABLE_CLASS = "ntkrepro-status"
#: An empty cell: "-" (DataTables' empty value), escaped (a bare "-" starts a list).
EMPTY_CELL = "\\-"
#: Four columns fit the theme's text width; "Measured" holds the value, its 95% interval
#: and how the interval was made; the check names the quantity, op, threshold parameter
#: and threshold (plain text, so that it wraps).
CHECKS_HEADER = ("Figure (claim)", "Verdict", "Measured, 95% interval", "Check")
#: The same four columns for the method checks (no interval: each is exact or one run).
METHOD_CHECKS_HEADER = ("Figure (method check)", "Outcome", "Measured", "Check")
# MyST inline syntax, escaped (CommonMark allows "\\" before any ASCII punctuation).
_MD_SPECIAL = set("\\`*_{}[]<>#|$~%&!^+:=")


def rerun_command(profile: str, key: str) -> str:
    """The command that (re)produces the results of figure ``key`` under ``profile``."""
    return f"ntkrepro run --profile {profile} --only {key}"


def md_inline(text: str) -> str:
    """``text`` on one line, escaped so that MyST renders it literally inside a line."""
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in " ".join(str(text).split()))


def md_text(text: str) -> str:
    """Like :func:`md_inline`, and also safe where a block starts (table cell, list item)."""
    escaped = re.sub(r"^(\d+)([.)])", r"\1\\\2", md_inline(text))  # "1. x" is a list
    return "\\" + escaped if escaped.startswith("-") else escaped


def md_code(text: str) -> str:
    """``text`` as an inline code span, whatever backticks it contains."""
    text = " ".join(str(text).split())
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def format_value(value: Any, max_items: int = 6, max_chars: int = 80) -> str:
    """A measured value in short human-readable form (4 significant digits for floats)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, list):
        shown = ", ".join(format_value(v, max_items, max_chars) for v in value[:max_items])
        return f"[{shown}{f', ... ({len(value)} values)' if len(value) > max_items else ''}]"
    if isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    else:
        text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def format_runtime(seconds: float) -> str:
    """Runtime in s, min or h with 2-3 significant digits."""
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _badge(verdict: str) -> str:
    return f"{{{BADGES.get(verdict, 'bdg-secondary')}}}`{verdict}`"


def meaning(outcome: str) -> str:
    """What a figure or check outcome means, in the words of :data:`claims.MEANINGS`."""
    return MEANINGS.get(outcome, "")


def _page_link(fig: dict) -> str:
    title = fig.get("title") or f"{fig['paper']}/{fig['figure']}"
    return f"[{md_text(title)}](../notebooks/{fig['paper']}/{fig['figure']}.ipynb)"


def _key(fig: dict) -> str:
    return f"{fig['paper']}/{fig['figure']}"


def _measured(claim: dict, primary_only: bool = False, skip_primary: bool = False) -> str:
    """``name`` = value of each measured number, or only the compared one (narrow summary),
    or all but the compared one (``skip_primary``)."""
    items = list(claim["measured"].items())
    primary = check_quantity(claim)
    if primary_only and items:
        items = [primary]
    elif skip_primary:
        items = [(k, v) for k, v in items if k != primary[0]]
    return ", ".join(f"{md_code(k)} = {md_inline(format_value(v))}" for k, v in items)


def _list_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], widths: str, classes: str = ""
) -> list[str]:
    """A MyST list-table; cells may hold several paragraphs separated by blank lines."""
    lines = ["```{list-table}", ":header-rows: 1", f":widths: {widths}"]
    lines += [f":class: {classes}", ""] if classes else [""]
    for row in [header, *rows]:
        for i, cell in enumerate(row):
            first, *more = cell.split("\n\n")
            lines.append(("* - " if i == 0 else "  - ") + first)
            for para in more:
                lines += ["", "    " + para]
    return lines + ["```"]


def check_quantity(check: dict) -> tuple[str, Any]:
    """The compared quantity of a check (else the first word of ``check``) and its value."""
    name = check.get("quantity") or str(check.get("check", "")).split(" ")[0]
    measured = check.get("measured", {})
    if name in measured:
        return name, measured[name]
    return next(iter(measured.items()), (name, None))


def _cell_number(value: Any) -> str:
    """A plain number cell (DataTables sorts numerically if every cell is a number or "-")."""
    return EMPTY_CELL if value is None else md_text(format_value(value))


def interval_text(check: dict) -> str:
    """``[low, high]`` of a claim check's 95% interval (``n/a`` for an end not computed)."""
    ends = check.get("interval") or (None, None)
    return "[" + ", ".join("n/a" if e is None else format_value(e) for e in ends) + "]"


def _estimate(check: dict) -> str:
    """The compared value and its 95% interval, e.g. ``0.01235 [0.008, 0.017]``."""
    _, value = check_quantity(check)
    shown = "n/a" if value is None else format_value(value)
    return f"{md_text(shown)} {md_text(interval_text(check))}"


def _method(check: dict) -> str:
    """How the interval was made (it names the number of seeds or resamples)."""
    return md_text(check.get("interval_method") or "interval method not recorded")


def _gates(fig: dict) -> dict[str, dict]:
    return {g["id"]: g for g in fig.get("gates", [])}


def _gate_result(gate: dict) -> str:
    """``gate g failed: `train_acc` = 0.93 (needs >= 0.99)``: a gate and its measured number."""
    name, value = check_quantity(gate)
    bound = format_value(gate["threshold"]) if "threshold" in gate else "?"
    return (
        f"gate {md_text(gate['id'])} {gate['verdict']}: {md_code(name)} = "
        f"{md_inline(format_value(value))} (needs {md_inline(gate.get('op', ''))} "
        f"{md_inline(bound)})"
    )


def _verdict_cell(check: dict, fig: dict) -> str:
    """A claim check's badge; for an invalid one, the gates that failed with their numbers,
    and what the interval alone said."""
    parts = [_badge(check["verdict"])]
    if check["verdict"] == INVALID:
        gates = _gates(fig)
        for gid in check.get("failed_gates", []):
            parts.append(
                _gate_result(gates[gid]) if gid in gates else f"gate {md_text(gid)} failed"
            )
        if check.get("interval_verdict"):
            parts.append(f"interval alone: {md_text(check['interval_verdict'])}")
    return "\n\n".join(parts)


def checks_table(claims: Sequence[dict]) -> list[str]:
    """The sortable table of every figure's claim checks, one per row (:data:`CHECKS_HEADER`)."""
    rows = []
    for fig in claims:
        key = _key(fig)
        for c in fig["claims"]:
            link = f"[{md_text(key)}](../notebooks/{key}.ipynb) ({md_text(c['id'])})"
            measured = f"{_estimate(c)}\n\n{_method(c)}"
            rows.append([link, _verdict_cell(c, fig), measured, md_text(c["check"])])
    return _list_table(CHECKS_HEADER, rows, "auto", DATATABLE_CLASS)


def method_checks_table(claims: Sequence[dict]) -> list[str]:
    """The sortable table of every figure's method checks (:data:`METHOD_CHECKS_HEADER`)."""
    rows = []
    for fig in claims:
        key = _key(fig)
        for m in fig.get("method_checks", []):
            link = f"[{md_text(key)}](../notebooks/{key}.ipynb) ({md_text(m['id'])})"
            _, value = check_quantity(m)
            rows.append([link, _badge(m["verdict"]), _cell_number(value), md_text(m["check"])])
    return _list_table(METHOD_CHECKS_HEADER, rows, "auto", DATATABLE_CLASS)


def _count(items: Sequence[dict], outcome: str) -> int:
    return sum(i["verdict"] == outcome for i in items)


def outcomes_section(claims: Sequence[dict]) -> list[str]:
    """How many figures and claim checks have each outcome, what each outcome means, and
    the method checks and gates, counted apart."""
    with_claims = [f for f in claims if f["claims"]]
    method_only = [f for f in claims if not f["claims"]]
    checks = [c for f in with_claims for c in f["claims"]]
    methods = [m for f in claims for m in f.get("method_checks", [])]
    gates = [g for f in claims for g in f.get("gates", [])]
    lines = [
        f"{len(claims)} figure(s): {len(with_claims)} with claim checks "
        f"({len(checks)} checks), {len(method_only)} with method checks only.",
        "",
    ]
    lines += ["| Outcome | Figures | Claim checks | What it means |", "|---|--:|--:|---|"]
    for v in VERDICTS:
        n_checks = str(_count(checks, v)) if v in CHECK_VERDICTS else EMPTY_CELL
        lines.append(
            f"| {_badge(v)} | {_count(with_claims, v)} | {n_checks} | {md_text(meaning(v))} |"
        )
    lines.append("")
    with_methods = sum(bool(f.get("method_checks")) for f in claims)
    with_gates = sum(bool(f.get("gates")) for f in claims)
    lines += [
        "**Method checks** verify our own tools or an identity that holds for any data "
        "(closed form against quadrature, an update's algebra, how a computation scales); "
        "they pass or fail, carry no interval and are never counted as reproduced claims. A "
        "figure with method checks only reproduces no claim and is counted apart "
        f"({md_text(meaning(METHOD_PASSED))}). **Validity gates** state, with thresholds "
        "fixed before the run, the conditions under which the experiment means what the "
        "paper claims (the network fits its training set, the linearization is trained as "
        "long as its network, ...); a check whose gate failed is *invalid at this scale*, "
        "never *not reproduced*.",
        "",
        f"| Not claims | {_badge(PASSED)} | {_badge(FAILED)} |",
        "|---|--:|--:|",
        f"| Method checks (in {with_methods} figure(s)) | {_count(methods, PASSED)} "
        f"| {_count(methods, FAILED)} |",
        f"| Figures with method checks only | {_count(method_only, METHOD_PASSED)} "
        f"| {_count(method_only, METHOD_FAILED)} |",
        f"| Validity gates (in {with_gates} figure(s)) | {_count(gates, PASSED)} "
        f"| {_count(gates, FAILED)} |",
        "",
    ]
    return lines


def _summary_row(fig: dict) -> list[str]:
    """Three cells (more do not fit the theme's text width): figure, claims, measured."""
    prov = fig["provenance"]
    image = [f"![figure]({fig[THUMBNAIL_KEY]})"] if THUMBNAIL_KEY in fig else []
    cell = [_page_link(fig), *image]
    cell += [_badge(fig["verdict"])] + ([STALE] if fig.get(STALE_KEY) else [])
    cell += [
        f"profile {md_code(fig['profile'])}",
        f"device {md_text(prov['device'])}",
        f"date {datetime.fromisoformat(prov['started']).date().isoformat()}",
        f"runtime {format_runtime(prov['runtime_s'])}",
    ]
    checks, methods = fig["claims"], fig.get("method_checks", [])
    said = [f"({md_text(c['id'])}) {md_text(c['paper_claim'])}" for c in checks]
    said += [f"({md_text(m['id'])}) method check: {md_text(m['verifies'])}" for m in methods]
    numbers = [
        f"({md_text(c['id'])}) {_measured(c, True)} {md_text(interval_text(c))}" for c in checks
    ]
    numbers += [f"({md_text(m['id'])}) {_measured(m, True)}, {m['verdict']}" for m in methods]
    return ["\n\n".join(cell), "\n\n".join(said), "\n\n".join(numbers)]


def _claims_details(fig: dict) -> list[str]:
    """The claim checks of one figure: claim, check, value with interval and method, verdict."""
    header = ["Claim", "Paper's claim", "Check", "Measured, 95% interval", "Verdict"]
    rows = []
    for c in fig["claims"]:
        name, _ = check_quantity(c)
        measured = f"{md_code(name)} = {_estimate(c)}\n\n{_method(c)}"
        if more := _measured(c, skip_primary=True):
            measured += f"\n\nalso measured: {more}"
        verdict = _verdict_cell(c, fig)
        if c.get("gates"):
            verdict += "\n\ngates: " + ", ".join(md_text(g) for g in c["gates"])
        rows.append(
            [md_text(c["id"]), md_text(c["paper_claim"]), md_code(c["check"]), measured, verdict]
        )
    return _list_table(header, rows, "8 26 22 28 16", STATUS_TABLE_CLASS)


def _gates_details(fig: dict) -> list[str]:
    """The validity gates of one figure: condition, check, measured number, passed/failed."""
    header = ["Gate", "Condition (fixed before the run)", "Check", "Measured", "Outcome"]
    rows = []
    for g in fig.get("gates", []):
        applies = g.get("applies_to")
        scope = (
            "all claim checks" if applies is None else ", ".join(f"({md_text(a)})" for a in applies)
        )
        rows.append(
            [md_text(g["id"]), f"{md_text(g['condition'])}\n\napplies to {scope or 'no check'}"]
            + [md_code(g["check"]), _measured(g), _badge(g["verdict"])]
        )
    return _list_table(header, rows, "8 34 22 20 16", STATUS_TABLE_CLASS)


def _method_details(fig: dict) -> list[str]:
    """The method checks of one figure (not claims): what each verifies, its outcome."""
    header = ["Id", "What it verifies (not a claim)", "Check", "Measured", "Outcome"]
    rows = [
        [md_text(m["id"]), md_text(m["verifies"]), md_code(m["check"]), _measured(m)]
        + [_badge(m["verdict"])]
        for m in fig.get("method_checks", [])
    ]
    return _list_table(header, rows, "8 34 22 20 16", STATUS_TABLE_CLASS)


def _figure_details(fig: dict) -> list[str]:
    """The section of one figure: every claim, gate and method check, scale, deviations,
    provenance."""
    prov, key = fig["provenance"], _key(fig)
    lines = [f"### {md_text(key)}: {md_text(fig['title'])}", ""]
    lines += [f"Page: {_page_link(fig)}. Verdict: {_badge(fig['verdict'])}.", ""]
    if fig.get(STALE_KEY):
        rerun = md_code(rerun_command(fig["profile"], key))
        why = md_text(fig[STALE_KEY])
        lines += [f"{STALE} These results no longer match the notebook: {why}. Rerun: {rerun}.", ""]
    if fig.get(THUMBNAIL_KEY):  # a directive option is literal text: no markdown escapes
        lines += ["```{image} " + fig[THUMBNAIL_KEY], f":alt: figure of {key}", ":width: 560px"]
        lines += ["```", ""]
    deviations = [f"- {md_text(d)}" for d in fig["deviations"]]
    lines += [f"Scale: {md_text(fig['scale'])}", ""]
    none = ["Deviations from the paper: none.", ""]
    lines += ["Deviations from the paper:", "", *deviations, ""] if deviations else none
    if fig["claims"]:
        lines += ["Claim checks:", "", *_claims_details(fig), ""]
    else:
        lines += ["This figure reproduces no claim of a paper: its checks are method checks.", ""]
    if fig.get("gates"):
        lines += ["Validity gates:", "", *_gates_details(fig), ""]
    if fig.get("method_checks"):
        lines += ["Method checks:", "", *_method_details(fig), ""]
    dirty = " (with uncommitted changes)" if prov["git_dirty"] else ""
    versions = ", ".join(f"{k} {v}" for k, v in prov["versions"].items()) or "not recorded"
    return lines + [
        f"Run: profile {md_code(fig['profile'])} on {md_text(prov['device'])}, started "
        f"{md_text(prov['started'])}, {format_runtime(prov['runtime_s'])}; git commit "
        f"{md_code(prov['git_commit'] or 'unknown')}{dirty}.",
        "",
        f"Versions: {md_text(versions)}.",
        "",
        "````{dropdown} Parameters of this run",  # the longer outer fence nests the inner
        "```json",
        json.dumps(prov["parameters"], indent=2, sort_keys=True, default=str),
        "```",
        "````",
        "",
    ]


def render_status(claims: list[dict], profile: str) -> str:
    """The status page: the outcomes counted, a sortable table of claim checks (and one of
    method checks), a summary table (one row per figure) and a section per figure."""
    lines = [
        "# Reproduction status",
        "",
        f"Generated when the book was built, from the `claim.json` files of the "
        f"{md_code(profile)} profile (`results/{md_text(profile)}/<paper>/<figure>/`). "
        "Each claim check compares a number measured in the run, with its 95% interval, "
        "against a threshold fixed before the run; the verdict follows from where the "
        "interval lies. A verdict holds at the scale of the run, which each figure states.",
        "",
    ]
    if not claims:
        return "\n".join(lines + ["No figure has been reproduced yet.", ""])
    lines += ["## Outcomes", "", *outcomes_section(claims)]
    stale = [_key(c) for c in claims if c.get(STALE_KEY)]
    if stale:
        text = f"{STALE} {len(stale)} figure(s) show results whose parameters or code no longer "
        lines += [text + f"match the notebook: {md_text(', '.join(stale))}.", ""]
    lines += ["## Checks", ""]
    if any(f["claims"] for f in claims):
        lines += [
            "Every claim check, one per row, with the measured value, its 95% interval and "
            "how the interval was made; click a header to sort.",
            "",
            *checks_table(claims),
            "",
        ]
    if any(f.get("method_checks") for f in claims):
        lines += [
            "### Method checks",
            "",
            "Checks of our own tools and of identities, one per row (not claims of a paper).",
            "",
            *method_checks_table(claims),
            "",
        ]
    header = ["Figure, verdict and run", "Paper's claim", "Measured, 95% interval"]
    lines += [
        "## Summary",
        "",
        *_list_table(header, [_summary_row(c) for c in claims], "30 38 32", STATUS_TABLE_CLASS),
    ]
    lines += ["", "## Details", ""]
    for fig in claims:
        lines += _figure_details(fig)
    return "\n".join(lines)

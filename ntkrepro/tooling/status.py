"""The reproduction-status page (MyST markdown) from the validated claims of one profile."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ntkrepro.claims import NOT_REPRODUCED, PARTLY, REPRODUCED, VERDICTS

#: sphinx-design badge role per verdict: coloured, and the verdict is spelled out in it.
BADGES = {REPRODUCED: "bdg-success", PARTLY: "bdg-warning", NOT_REPRODUCED: "bdg-danger"}
#: Keys that staging adds to a claim (not in claim.json): why it is stale, its image's path.
STALE_KEY = "_stale"
THUMBNAIL_KEY = "_thumbnail"
STALE = "{bdg-warning}`STALE`"
#: The class that sphinx-datatables makes sortable (``datatables_class`` in _config.yml).
DATATABLE_CLASS = "sphinx-datatable"
#: An empty cell: "-" (DataTables' empty value), escaped (a bare "-" starts a list).
EMPTY_CELL = "\\-"
#: Four columns fit the theme's text width; the check names the quantity, op, threshold
#: parameter and threshold (plain text, so that it wraps).
CHECKS_HEADER = ("Figure (claim)", "Verdict", "Measured", "Check")
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


def _page_link(fig: dict) -> str:
    title = fig.get("title") or f"{fig['paper']}/{fig['figure']}"
    return f"[{md_text(title)}](../notebooks/{fig['paper']}/{fig['figure']}.ipynb)"


def _measured(claim: dict, primary_only: bool = False) -> str:
    """``name`` = value of each measured number, or only the compared one (narrow summary)."""
    items = list(claim["measured"].items())
    if primary_only and items:
        items = [check_quantity(claim)]
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


def checks_table(claims: Sequence[dict]) -> list[str]:
    """The sortable table of every figure's claim checks, one per row (:data:`CHECKS_HEADER`)."""
    rows = []
    for fig in claims:
        key = f"{fig['paper']}/{fig['figure']}"
        for c in fig["claims"]:
            _, value = check_quantity(c)
            link = f"[{md_text(key)}](../notebooks/{key}.ipynb) ({md_text(c['id'])})"
            rows.append([link, _badge(c["verdict"]), _cell_number(value), md_text(c["check"])])
    return _list_table(CHECKS_HEADER, rows, "auto", DATATABLE_CLASS)


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
    claims = fig["claims"]
    return [
        "\n\n".join(cell),
        "\n\n".join(f"({md_text(c['id'])}) {md_text(c['paper_claim'])}" for c in claims),
        "\n\n".join(f"({md_text(c['id'])}) {_measured(c, True)}" for c in claims),
    ]


def _figure_details(fig: dict) -> list[str]:
    """The section of one figure: every claim, scale, deviations, provenance."""
    prov, key = fig["provenance"], f"{fig['paper']}/{fig['figure']}"
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
    header = ["Claim", "Paper's claim", "Check", "Measured", "Threshold", "Verdict"]
    rows = [
        [md_text(c["id"]), md_text(c["paper_claim"]), md_code(c["check"]), _measured(c)]
        + [md_code(format_value(c["threshold"])), _badge(c["verdict"])]
        for c in fig["claims"]
    ]
    lines += _list_table(header, rows, "6 30 26 20 8 10") + [""]
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
    """The status page: a summary table (one row per figure) and a section per figure."""
    lines = [
        "# Reproduction status",
        "",
        f"Generated when the book was built, from the `claim.json` files of the "
        f"{md_code(profile)} profile (`results/{md_text(profile)}/<paper>/<figure>/`). "
        "A verdict is the outcome of the check shown for each claim; it is as good as the "
        "scale of the run, which each figure states.",
        "",
    ]
    if not claims:
        return "\n".join(lines + ["No figure has been reproduced yet.", ""])
    counts = ", ".join(f"{sum(c['verdict'] == v for c in claims)} {v}" for v in VERDICTS)
    lines += [f"{len(claims)} figure(s): {counts}.", ""]
    stale = [f"{c['paper']}/{c['figure']}" for c in claims if c.get(STALE_KEY)]
    if stale:
        text = f"{STALE} {len(stale)} figure(s) show results whose parameters or code no longer "
        lines += [text + f"match the notebook: {md_text(', '.join(stale))}.", ""]
    lines += ["## Checks", "", "Every claim check, one per row; click a header to sort.", ""]
    lines += [*checks_table(claims), ""]
    header = ["Figure, verdict and run", "Paper's claim", "Measured"]
    lines += ["## Summary", "", *_list_table(header, [_summary_row(c) for c in claims], "30 38 32")]
    lines += ["", "## Details", ""]
    for fig in claims:
        lines += _figure_details(fig)
    return "\n".join(lines)

"""Stage, build and check the ntkrepro Jupyter Book for one profile.

The book is never built from the repository itself. :func:`stage` assembles, under
``_build/<profile>/src/``, a folder that mirrors the repository layout::

    _build/<profile>/src/
      _config.yml                       copy of the top-level _config.yml
      book/                             copy of book/, plus the generated book/status.md
      notebooks/<paper>/<figure>.ipynb  executed notebook from results/<profile>/<paper>/<figure>/
      _vendor/mathjax/                  MathJax 3 from npm (served as html/_static/mathjax/)

:func:`build` then runs (``-W``: warnings are errors)::

    jupyter-book build _build/<p>/src --toc _build/<p>/src/book/_toc.yml \
        --config _build/<p>/src/_config.yml --path-output _build/<p> -W --keep-going

so the HTML ends in ``_build/<profile>/_build/html`` (see :func:`html_dir`), and checks its
internal links (:func:`check_links`) and that no script is loaded from the network
(:func:`remote_scripts`). Staging refuses a figure whose results are missing, malformed,
corrupt (a file fails its checksum in claim.json) or stale (parameters or code changed
since the run; :func:`ntkrepro.results.result_state`, the same test as ``ntkrepro run``),
naming the page and the command that redoes it. The build runs jupyter-book in a
subprocess and never executes a notebook.

Command line: ``python -m ntkrepro.book build --profile cpu`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from ntkrepro.results import result_state

VERDICTS: tuple[str, ...] = ("reproduced", "partly reproduced", "not reproduced")
#: sphinx-design badge role per verdict: coloured, and the verdict is spelled out in it.
_BADGES = {
    "reproduced": "bdg-success",
    "partly reproduced": "bdg-warning",
    "not reproduced": "bdg-danger",
}
#: TOC pages that :func:`stage` writes itself rather than copies from book/.
GENERATED_PAGES: tuple[str, ...] = ("book/status",)
#: Where :func:`stage` puts each figure's figure.png as ``<paper>-<figure>.png``, relative to
#: book/ (the status page shows them).
FIGURES_DIR = "figures"
#: Keys that :func:`collect_claims` adds to a claim for the status page (not in claim.json):
#: why the results are stale (only with ``allow_stale``), and the figure image's path.
STALE_KEY = "_stale"
THUMBNAIL_KEY = "_thumbnail"
#: npm package spec of the MathJax that is copied into the book.
MATHJAX_NPM_SPEC = "mathjax@3"
#: Where MathJax goes inside the staging folder; ``_config.yml`` names it in
#: ``html_static_path``. Not ``_static``: Jupyter Book would add every ``*.js`` below a
#: top-level ``_static`` as a <script> tag on every page.
VENDOR_DIR = "_vendor"
#: Parts of MathJax's es5/ folder that tex-chtml.js loads (fonts, autoloaded TeX
#: extensions, menu and accessibility components); the other combined bundles are not
#: needed.
_MATHJAX_PARTS = ("tex-chtml.js", "input", "output/chtml", "ui", "a11y", "sre", "adaptors")
_PROFILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


class StagingError(RuntimeError):
    """The book cannot be staged: a page's results are missing or malformed."""


class BuildError(RuntimeError):
    """jupyter-book failed, or the built HTML has broken links or remote scripts."""


# ---------------------------------------------------------------------------- layout


def staging_dir(profile: str, root: Path) -> Path:
    """Folder that :func:`stage` fills for ``profile``: ``<root>/_build/<profile>/src``."""
    return Path(root) / "_build" / profile / "src"


def html_dir(profile: str, root: Path) -> Path:
    """Folder of the built HTML for ``profile``: ``<root>/_build/<profile>/_build/html``."""
    return Path(root) / "_build" / profile / "_build" / "html"


def figure_results_dir(profile: str, root: Path, key: str, results: Path | None = None) -> Path:
    """Results folder of figure ``key`` ("paper/figure"): ``<results>/<profile>/<paper>/<figure>``
    with ``results`` defaulting to ``<root>/results``."""
    return Path(results or Path(root) / "results") / profile / key


def rerun_command(profile: str, key: str) -> str:
    """The command that (re)produces the results of figure ``key`` under ``profile``."""
    return f"ntkrepro run --profile {profile} --only {key}"


def build_command(profile: str, root: Path) -> list[str]:
    """The jupyter-book command line that :func:`build` runs (absolute paths)."""
    root = Path(root).resolve()
    src = staging_dir(profile, root)
    return [
        _jupyter_book_exe(),
        "build",
        str(src),
        "--toc",
        str(src / "book" / "_toc.yml"),
        "--config",
        str(src / "_config.yml"),
        "--path-output",
        str(root / "_build" / profile),
        "-W",
        "--keep-going",
    ]


# ---------------------------------------------------------------------------- TOC


def _toc_entries(node: Any) -> Iterator[str]:
    """Yield every ``root``/``file`` entry of a parsed _toc.yml, in reading order."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("root", "file") and isinstance(value, str):
                yield value
            else:
                yield from _toc_entries(value)
    elif isinstance(node, list):
        for item in node:
            yield from _toc_entries(item)


def toc_pages(toc_path: Path) -> list[str]:
    """All pages of a jb-book ``_toc.yml``, without suffix, in reading order."""
    data = yaml.safe_load(Path(toc_path).read_text(encoding="utf-8"))
    pages = [re.sub(r"\.(md|ipynb|rst)$", "", p).strip("/") for p in _toc_entries(data)]
    return list(dict.fromkeys(pages))


def figures_in_toc(toc_path: Path) -> list[str]:
    """Figure pages listed in a ``_toc.yml``, as "paper/figure" keys in reading order.

    A figure page is an entry ``notebooks/<paper>/<figure>``; any other entry under
    ``notebooks/`` is an error because :func:`stage` could not map it to results.
    """
    keys = []
    for page in toc_pages(toc_path):
        parts = page.split("/")
        if parts[0] != "notebooks":
            continue
        if len(parts) != 3 or not all(parts):
            raise ValueError(
                f"{toc_path}: TOC entry {page!r} is not of the form notebooks/<paper>/<figure>"
            )
        keys.append(f"{parts[1]}/{parts[2]}")
    return keys


# ---------------------------------------------------------------------------- claim.json

_NUMBER = (int, float)
_TOP_FIELDS: dict[str, tuple[type, ...]] = {
    "paper": (str,),
    "figure": (str,),
    "title": (str,),
    "profile": (str,),
    "verdict": (str,),
    "claims": (list,),
    "scale": (str,),
    "deviations": (list,),
    "provenance": (dict,),
}
_CLAIM_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "paper_claim": (str,),
    "check": (str,),
    "measured": (dict,),
    # A threshold is a number for most checks, but a range, a label or null are legitimate.
    "threshold": (int, float, str, list, dict, type(None)),
    "verdict": (str,),
}
_PROVENANCE_FIELDS: dict[str, tuple[type, ...]] = {
    "started": (str,),
    "runtime_s": _NUMBER,
    "device": (str,),
    "versions": (dict,),
    # null when the run did not happen in a git checkout (e.g. from a release tarball).
    "git_commit": (str, type(None)),
    "git_dirty": (bool, type(None)),
    "parameters": (dict,),
}


def _type_name(value: Any) -> str:
    """JSON name of a value's type, for error messages."""
    names = {bool: "boolean", int: "number", float: "number", str: "string"}
    names |= {list: "array", dict: "object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _field_problems(obj: dict, fields: dict[str, tuple[type, ...]], where: str) -> list[str]:
    """Missing keys and wrongly typed values of ``obj`` against ``fields``."""
    problems = []
    for key, types in fields.items():
        if key not in obj:
            problems.append(f"{where}missing key {key!r}")
            continue
        value = obj[key]
        # bool is an int in Python but not a number in the schema.
        wrong_bool = isinstance(value, bool) and bool not in types
        if wrong_bool or not isinstance(value, types):
            wanted = " or ".join(dict.fromkeys(_type_name(t()) for t in types))
            problems.append(f"{where}{key!r} must be {wanted}, got {_type_name(value)}")
    return problems


def _claim_problems(claim: Any, index: int) -> list[str]:
    """Problems of one entry of ``claims``."""
    where = f"claims[{index}]: "
    if not isinstance(claim, dict):
        return [f"{where}must be an object, got {_type_name(claim)}"]
    problems = _field_problems(claim, _CLAIM_FIELDS, where)
    if isinstance(claim.get("verdict"), str) and claim["verdict"] not in VERDICTS:
        problems.append(f"{where}verdict {claim['verdict']!r} is not one of {list(VERDICTS)}")
    if isinstance(claim.get("measured"), dict) and not claim["measured"]:
        problems.append(f"{where}'measured' is empty")
    for key in ("id", "paper_claim", "check"):
        if isinstance(claim.get(key), str) and not claim[key].strip():
            problems.append(f"{where}{key!r} is empty")
    return problems


def _provenance_problems(prov: dict) -> list[str]:
    """Problems of the ``provenance`` object."""
    problems = _field_problems(prov, _PROVENANCE_FIELDS, "provenance: ")
    started = prov.get("started")
    if isinstance(started, str):
        try:
            datetime.fromisoformat(started)
        except ValueError:
            problems.append(f"provenance: 'started' is not an ISO 8601 date-time: {started!r}")
    runtime = prov.get("runtime_s")
    if isinstance(runtime, _NUMBER) and not isinstance(runtime, bool):
        if not math.isfinite(runtime) or runtime < 0:
            problems.append(f"provenance: 'runtime_s' must be finite and >= 0, got {runtime}")
    return problems


def claim_problems(data: Any) -> list[str]:
    """Every way in which parsed ``claim.json`` data departs from the schema (empty if valid)."""
    if not isinstance(data, dict):
        return [f"top level must be an object, got {_type_name(data)}"]
    problems = _field_problems(data, _TOP_FIELDS, "")
    if isinstance(data.get("verdict"), str) and data["verdict"] not in VERDICTS:
        problems.append(f"verdict {data['verdict']!r} is not one of {list(VERDICTS)}")
    if isinstance(data.get("claims"), list):
        if not data["claims"]:
            problems.append("'claims' is empty")
        for i, claim in enumerate(data["claims"]):
            problems += _claim_problems(claim, i)
        ids = [c.get("id") for c in data["claims"] if isinstance(c, dict)]
        duplicated = sorted({i for i in ids if isinstance(i, str) and ids.count(i) > 1})
        if duplicated:
            problems.append(f"claim ids are not unique: {duplicated}")
    if isinstance(data.get("deviations"), list):
        if not all(isinstance(d, str) for d in data["deviations"]):
            problems.append("'deviations' must be an array of strings")
    if isinstance(data.get("provenance"), dict):
        problems += _provenance_problems(data["provenance"])
    return problems


def load_claim(path: Path) -> dict:
    """Read and validate one ``claim.json``.

    Raises:
        ValueError: naming ``path`` and every problem found (missing file, invalid JSON,
            missing keys, wrong types, unknown verdicts).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: file does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot be read: {err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"
        ) from err
    problems = claim_problems(data)
    if problems:
        raise ValueError(f"{path}: malformed claim.json: " + "; ".join(problems))
    return data


# ---------------------------------------------------------------------------- status page

# Characters with a meaning in MyST inline syntax; escaped with a backslash, which CommonMark
# allows before any ASCII punctuation, so that claim text is shown literally.
_MD_SPECIAL = set("\\`*_{}[]<>#|$~%&!^+:=")


def md_inline(text: str) -> str:
    """``text`` on one line, escaped so that MyST renders it literally inside a line."""
    text = " ".join(str(text).split())
    return "".join("\\" + c if c in _MD_SPECIAL else c for c in text)


def md_text(text: str) -> str:
    """Like :func:`md_inline`, and also safe where a block starts (table cell, list item)."""
    escaped = md_inline(text)
    # A cell or paragraph that starts like a list item ("- x", "1. x") would become a list.
    escaped = re.sub(r"^(\d+)([.)])", r"\1\\\2", escaped)
    return "\\" + escaped if escaped.startswith("-") else escaped


def md_code(text: str) -> str:
    """``text`` as an inline code span, whatever backticks it contains."""
    text = " ".join(str(text).split())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
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
        more = f", ... ({len(value)} values)" if len(value) > max_items else ""
        return f"[{shown}{more}]"
    if isinstance(value, dict):
        parts = [f"{k}: {format_value(v, max_items, max_chars)}" for k, v in value.items()]
        text = "{" + ", ".join(parts) + "}"
    else:
        text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= max_chars else text[: max_chars - 3] + "..."


def format_runtime(seconds: float) -> str:
    """Runtime in s, min or h with 2-3 significant digits."""
    if seconds < 60:
        return f"{seconds:.3g} s"
    if seconds < 3600:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def _badge(verdict: str) -> str:
    """A coloured badge that spells out the verdict."""
    return f"{{{_BADGES.get(verdict, 'bdg-secondary')}}}`{verdict}`"


def _page_link(claim: dict) -> str:
    """Markdown link from book/status.md to the figure's page."""
    title = claim.get("title") or f"{claim['paper']}/{claim['figure']}"
    return f"[{md_text(title)}](../notebooks/{claim['paper']}/{claim['figure']}.ipynb)"


def _measured(claim: dict, primary_only: bool = False) -> str:
    """The measured numbers of one claim: ``name`` = value, comma-separated.

    With ``primary_only``, only the quantity the check compares (the first word of
    ``check``), so that the summary table stays narrow; the details list them all.
    """
    items = list(claim["measured"].items())
    if primary_only:
        name = str(claim.get("check", "")).split(" ")[0]
        items = [(k, v) for k, v in items if k == name] or items[:1]
    return ", ".join(f"{md_code(k)} = {md_inline(format_value(v))}" for k, v in items)


def _date(started: str) -> str:
    """Date part (YYYY-MM-DD) of an ISO date-time."""
    return datetime.fromisoformat(started).date().isoformat()


def _list_table(header: Sequence[str], rows: Sequence[Sequence[str]], widths: str) -> list[str]:
    """A MyST list-table; cells may hold several paragraphs separated by blank lines."""
    lines = ["```{list-table}", ":header-rows: 1", f":widths: {widths}", ""]
    for row in [header, *rows]:
        for i, cell in enumerate(row):
            paragraphs = cell.split("\n\n")
            lines.append(("* - " if i == 0 else "  - ") + paragraphs[0])
            for para in paragraphs[1:]:
                lines += ["", "    " + para]
    return lines + ["```"]


def _run_cell(fig: dict) -> str:
    """Profile, device, date and runtime of a figure's run, one per line; a STALE badge
    when its parameters or code no longer match the notebook."""
    prov = fig["provenance"]
    lines = [
        f"profile {md_code(fig['profile'])}",
        f"device {md_text(prov['device'])}",
        f"date {_date(prov['started'])}",
        f"runtime {format_runtime(prov['runtime_s'])}",
    ]
    if fig.get(STALE_KEY):
        lines.insert(0, "{bdg-warning}`STALE`")
    return "\n\n".join(lines)


def _figure_cell(fig: dict) -> str:
    """Link to the figure's page, with its image (when the run saved ``figure.png``)."""
    cell = _page_link(fig)
    if fig.get(THUMBNAIL_KEY):
        cell += f"\n\n![figure]({fig[THUMBNAIL_KEY]})"
    return cell


def _summary_rows(figures: list[dict]) -> list[list[str]]:
    """One summary row per figure: all of its claims and measurements in one row.

    Three columns: the figure cell stacks the page link, the verdict badge, the image and
    the run (profile, device, date, runtime); more columns do not fit the theme's text
    width and push the verdict out of view.
    """
    rows = []
    for fig in figures:
        claims = fig["claims"]
        rows.append(
            [
                "\n\n".join([_figure_cell(fig), _badge(fig["verdict"]), _run_cell(fig)]),
                "\n\n".join(f"({md_text(c['id'])}) {md_text(c['paper_claim'])}" for c in claims),
                "\n\n".join(f"({md_text(c['id'])}) {_measured(c, True)}" for c in claims),
            ]
        )
    return rows


def _figure_details(fig: dict) -> list[str]:
    """The per-figure section of the status page: every claim, scale, deviations, provenance."""
    prov = fig["provenance"]
    key = f"{fig['paper']}/{fig['figure']}"
    lines = [f"### {md_text(key)}: {md_text(fig['title'])}", ""]
    lines += [f"Page: {_page_link(fig)}. Verdict: {_badge(fig['verdict'])}.", ""]
    if fig.get(STALE_KEY):
        lines += [
            f"{{bdg-warning}}`STALE` These results no longer match the notebook: "
            f"{md_text(fig[STALE_KEY])}. Rerun: "
            f"{md_code(rerun_command(fig['profile'], key))}.",
            "",
        ]
    if fig.get(THUMBNAIL_KEY):
        # A directive option is literal text: no markdown escapes.
        lines += ["```{image} " + fig[THUMBNAIL_KEY], f":alt: figure of {key}", ":width: 560px"]
        lines += ["```", ""]
    lines += [f"Scale: {md_text(fig['scale'])}", ""]
    if fig["deviations"]:
        lines += ["Deviations from the paper:", ""]
        lines += [f"- {md_text(d)}" for d in fig["deviations"]] + [""]
    else:
        lines += ["Deviations from the paper: none.", ""]
    header = ["Claim", "Paper's claim", "Check", "Measured", "Threshold", "Verdict"]
    rows = [
        [
            md_text(c["id"]),
            md_text(c["paper_claim"]),
            md_code(c["check"]),
            _measured(c),
            md_code(format_value(c["threshold"])),
            _badge(c["verdict"]),
        ]
        for c in fig["claims"]
    ]
    lines += _list_table(header, rows, "6 30 26 20 8 10") + [""]
    commit = prov["git_commit"] or "unknown"
    dirty = " (with uncommitted changes)" if prov["git_dirty"] else ""
    versions = ", ".join(f"{k} {v}" for k, v in prov["versions"].items()) or "not recorded"
    lines += [
        f"Run: profile {md_code(fig['profile'])} on {md_text(prov['device'])}, started "
        f"{md_text(prov['started'])}, {format_runtime(prov['runtime_s'])}; git commit "
        f"{md_code(commit)}{dirty}.",
        "",
        f"Versions: {md_text(versions)}.",
        "",
        # The outer fence is longer than the inner one so that the inner one nests.
        "````{dropdown} Parameters of this run",
        "```json",
        json.dumps(prov["parameters"], indent=2, sort_keys=True, default=str),
        "```",
        "````",
        "",
    ]
    return lines


def render_status(claims: list[dict], profile: str) -> str:
    """The reproduction-status page (MyST markdown) for the validated claims of ``profile``.

    A summary table has one row per figure (figure linked to its page, the paper's claims,
    the measured numbers, the verdict as a badge that spells it out, and the run's profile,
    device, date and runtime); a section per figure then lists every claim with its check and
    threshold, the scale, the deviations from the paper and the provenance of the run.
    """
    counts = {v: sum(1 for c in claims if c["verdict"] == v) for v in VERDICTS}
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
    summary = ", ".join(f"{n} {v}" for v, n in counts.items())
    lines += [f"{len(claims)} figure(s): {summary}.", ""]
    stale = [f"{c['paper']}/{c['figure']}" for c in claims if c.get(STALE_KEY)]
    if stale:
        lines += [
            f"{{bdg-warning}}`STALE` {len(stale)} figure(s) show results whose parameters or "
            f"code no longer match the notebook: {md_text(', '.join(stale))}.",
            "",
        ]
    lines += ["## Summary", ""]
    header = ["Figure, verdict and run", "Paper's claim", "Measured"]
    lines += _list_table(header, _summary_rows(claims), "30 38 32") + [""]
    lines += ["## Details", ""]
    for fig in claims:
        lines += _figure_details(fig)
    return "\n".join(lines)


# ---------------------------------------------------------------------------- staging


def _notebook_problems(path: Path) -> list[str]:
    """Why an executed notebook must not go into the book (empty if it may)."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return [f"{path} is not a readable notebook: {err}"]
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        return [f"{path} is not a notebook (no 'cells' list)"]
    if nb.get("metadata", {}).get("papermill", {}).get("exception"):
        return [f"{path}: papermill recorded an exception: the run failed"]
    for i, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict):
            continue
        # A cell tagged raises-exception shows its error on purpose (as in myst-nb).
        if "raises-exception" in cell.get("metadata", {}).get("tags", []):
            continue
        for output in cell.get("outputs", []):
            if isinstance(output, dict) and output.get("output_type") == "error":
                return [f"{path}: cell {i} has an error output ({output.get('ename', '?')})"]
    return []


def _figure_problems(
    profile: str,
    root: Path,
    key: str,
    results: Path | None = None,
    allow_stale: bool = False,
) -> tuple[list[str], dict | None]:
    """Problems with the results of one figure page, and its claim if that is valid.

    Beyond the schema: the results must be intact (every file matches the checksum in
    claim.json, so a truncated or edited file is never shown) and current (parameters and
    code as the notebook has them now; with ``allow_stale`` stale results pass, marked).
    """
    page = f"notebooks/{key}"
    folder = figure_results_dir(profile, root, key, results)
    figure = key.split("/")[1]
    notebook = folder / f"{figure}.ipynb"
    problems = []
    if not notebook.is_file():
        problems.append(f"page {page}: no executed notebook {notebook}")
    else:
        problems += [f"page {page}: {p}" for p in _notebook_problems(notebook)]
    claim = None
    try:
        claim = load_claim(folder / "claim.json")
    except ValueError as err:
        problems.append(f"page {page}: {err}")
    if claim is not None:
        # A claim copied from another figure or profile would put wrong numbers on the page.
        expected = {"paper": key.split("/")[0], "figure": figure, "profile": profile}
        for field, want in expected.items():
            if claim[field] != want:
                problems.append(
                    f"page {page}: {folder / 'claim.json'}: {field} is {claim[field]!r}, "
                    f"expected {want!r}"
                )
    if not problems:
        base = Path(results or Path(root) / "results")
        state, reason = result_state(key, profile, root=Path(root), results=base)
        if state == "stale" and allow_stale:
            claim[STALE_KEY] = reason
        elif state != "current":
            problems.append(f"page {page}: results are {state}: {reason}")
    return problems, (None if problems else claim)


def _page_source(src_root: Path, page: str) -> Path | None:
    """The source file of a TOC page under ``src_root``, if any."""
    for suffix in (".md", ".ipynb", ".rst"):
        if (src_root / f"{page}{suffix}").is_file():
            return src_root / f"{page}{suffix}"
    return None


def _check_profile(profile: str) -> None:
    """Refuse profile names that could escape _build/ or results/."""
    if not _PROFILE_RE.match(profile):
        raise ValueError(f"invalid profile name {profile!r} (letters, digits, - and _ only)")


def collect_claims(
    profile: str, root: Path, *, results: Path | None = None, allow_stale: bool = False
) -> list[dict]:
    """Validated claims of every figure page in book/_toc.yml, in TOC order.

    ``results`` is the results folder (default ``<root>/results``); ``allow_stale`` lets
    stale results through, marked for the status page.

    Raises:
        StagingError: listing, for each page whose results are missing, malformed,
            corrupt (checksum) or stale, the problem and the command that redoes them.
    """
    _check_profile(profile)
    root = Path(root)
    toc = root / "book" / "_toc.yml"
    problems: list[str] = []
    claims: list[dict] = []
    commands: list[str] = []
    for key in figures_in_toc(toc):
        fig_problems, claim = _figure_problems(profile, root, key, results, allow_stale)
        if fig_problems:
            problems += fig_problems
            commands.append(rerun_command(profile, key))
        else:
            claims.append(claim)
    for page in toc_pages(toc):
        if page.startswith("notebooks/") or page in GENERATED_PAGES:
            continue
        if _page_source(root, page) is None:
            problems.append(f"page {page} is listed in {toc} but {root / page}.md does not exist")
    if problems:
        fix = "\n".join(f"  {c}" for c in commands)
        raise StagingError(
            f"cannot stage the {profile!r} book:\n"
            + "\n".join(f"- {p}" for p in problems)
            + (f"\nRedo those results with:\n{fix}" if fix else "")
            + "\n(ntkrepro run recomputes stale, missing and corrupt results; "
            "`ntkrepro book --allow-stale` builds with stale ones, flagged.)"
        )
    return claims


def ensure_mathjax(root: Path) -> Path:
    """MathJax's es5/ folder under ``_build/npm``, installed from npm if missing.

    Raises:
        RuntimeError: if MathJax is missing and npm is unavailable or fails.
    """
    prefix = Path(root) / "_build" / "npm"
    es5 = prefix / "node_modules" / "mathjax" / "es5"
    if (es5 / "tex-chtml.js").is_file():
        return es5
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            f"MathJax is not installed ({es5 / 'tex-chtml.js'} is missing) and npm is not "
            "available to install it. Install Node.js with npm (e.g. `apt-get install npm`), "
            f"or run `npm install --no-save --prefix {prefix} {MATHJAX_NPM_SPEC}` elsewhere "
            f"and copy {prefix} here."
        )
    cmd = [npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(prefix)]
    proc = subprocess.run(cmd + [MATHJAX_NPM_SPEC], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not (es5 / "tex-chtml.js").is_file():
        raise RuntimeError(
            f"`{' '.join(cmd)} {MATHJAX_NPM_SPEC}` failed (exit {proc.returncode}):\n"
            + (proc.stderr or proc.stdout)[-2000:]
        )
    return es5


def _copy_mathjax(es5: Path, dest: Path) -> None:
    """Copy the parts of MathJax that tex-chtml.js uses to ``dest``."""
    for part in _MATHJAX_PARTS:
        source = es5 / part
        if source.is_dir():
            shutil.copytree(source, dest / part)
        elif source.is_file():
            (dest / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / part)


def stage(
    profile: str, root: Path, *, results: Path | None = None, allow_stale: bool = False
) -> Path:
    """Assemble the book sources of ``profile`` under ``_build/<profile>/src`` and return it.

    Copies ``_config.yml`` and ``book/``, copies each figure's executed notebook from
    ``results/<profile>/<paper>/<figure>/<figure>.ipynb`` to ``notebooks/<paper>/<figure>.ipynb``,
    adds an offline MathJax and writes ``book/status.md`` (with each figure.png copied to
    ``book/figures/``) and ``book/_generated/benchmarks.md`` (:func:`benchmark_summary`).
    The folder is recreated from scratch so that no page of an earlier staging survives.
    ``results`` and ``allow_stale``: see :func:`collect_claims`.

    Raises:
        StagingError: if a TOC page is missing, or a figure's results are missing,
            malformed, corrupt or stale.
    """
    root = Path(root).resolve()
    claims = collect_claims(profile, root, results=results, allow_stale=allow_stale)
    es5 = ensure_mathjax(root)
    src = staging_dir(profile, root)
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    shutil.copy2(root / "_config.yml", src / "_config.yml")
    ignore = shutil.ignore_patterns("_generated", "__pycache__", ".ipynb_checkpoints")
    shutil.copytree(root / "book", src / "book", ignore=ignore)
    for claim in claims:
        paper, figure = claim["paper"], claim["figure"]
        folder = figure_results_dir(profile, root, f"{paper}/{figure}", results)
        (src / "notebooks" / paper).mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / f"{figure}.ipynb", src / "notebooks" / paper / f"{figure}.ipynb")
        if (folder / "figure.png").is_file():  # verified by its checksum above
            # Flat, paper-figure.png: Sphinx keeps the base name in _images/, so it is unique.
            image = Path(FIGURES_DIR) / f"{paper}-{figure}.png"
            (src / "book" / image).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / "figure.png", src / "book" / image)
            claim[THUMBNAIL_KEY] = image.as_posix()
    _copy_mathjax(es5, src / VENDOR_DIR / "mathjax")
    (src / "book" / "status.md").write_text(render_status(claims, profile), encoding="utf-8")
    generated = src / "book" / "_generated"
    generated.mkdir()
    (generated / "benchmarks.md").write_text(benchmark_summary(root, results), encoding="utf-8")
    return src


def benchmark_summary(root: Path, results: Path | None = None) -> str:
    """The tables ``make bench`` wrote (``results/bench/summary.md``), for the Performance
    page to include; a note saying how to make them when there are none."""
    path = Path(results or Path(root) / "results") / "bench" / "summary.md"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    return (
        "No benchmark results were found when this book was built: run `make bench`, "
        "then `ntkrepro book` again.\n"
    )


# ---------------------------------------------------------------------------- build


def _jupyter_book_exe() -> str:
    """The jupyter-book executable of this environment (next to python), else on PATH."""
    beside = Path(sys.executable).with_name("jupyter-book")
    if beside.is_file():
        return str(beside)
    found = shutil.which("jupyter-book")
    if found is None:
        raise BuildError("jupyter-book is not installed: pip install -e '.[book]'")
    return found


def _warnings(log: str, limit: int = 40) -> str:
    """The warning and error lines of a build log (the first ``limit``), without colours."""
    log = re.sub(r"\x1b\[[0-9;]*m", "", log)
    lines = [ln for ln in log.splitlines() if re.search(r"WARNING|ERROR|CRITICAL|Error", ln)]
    return "\n".join(lines[:limit])


def build(
    profile: str, root: Path, *, results: Path | None = None, allow_stale: bool = False
) -> Path:
    """Stage and build the book of ``profile``; return the HTML folder.

    The output folder is wiped first: an incremental Sphinx build would not re-emit the
    warnings of unchanged pages, so ``-W`` could pass on a stale error. The full log is
    written to ``_build/<profile>/build.log``.

    ``results`` and ``allow_stale``: see :func:`collect_claims`.

    Raises:
        StagingError: see :func:`stage`.
        BuildError: if jupyter-book reports a warning or error, or the HTML has broken
            internal links or loads a script from the network.
    """
    root = Path(root).resolve()
    stage(profile, root, results=results, allow_stale=allow_stale)
    out = root / "_build" / profile
    shutil.rmtree(out / "_build", ignore_errors=True)
    cmd = build_command(profile, root)
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    log = out / "build.log"
    log.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}", encoding="utf-8")
    html = html_dir(profile, root)
    if proc.returncode != 0 or not (html / "index.html").is_file():
        raise BuildError(
            f"jupyter-book build failed (exit {proc.returncode}; warnings are errors). "
            f"Full log: {log}\n{_warnings(proc.stdout + proc.stderr)}\n"
            f"Files under {staging_dir(profile, root)} are copies: fix book/... and "
            f"_config.yml in {root}, and notebooks/<paper>/<figure>.ipynb by rerunning "
            f"`{rerun_command(profile, '<paper>/<figure>')}`."
        )
    problems = [f"broken link: {b}" for b in check_links(html)]
    problems += [f"remote script: {r}" for r in remote_scripts(html)]
    if problems:
        raise BuildError(f"the built book {html} is not self-contained:\n" + "\n".join(problems))
    return html


# ---------------------------------------------------------------------------- HTML checks


class _PageScan(HTMLParser):
    """Collects the anchors (id, a[name]) and the href/src links of one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, url)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name == "id" or (name == "name" and tag == "a"):
                self.ids.add(value)
            elif name in ("href", "src"):
                self.links.append((tag, name, value))

    handle_startendtag = handle_starttag


def _scan(page: Path) -> _PageScan:
    """Parse one HTML page."""
    scan = _PageScan()
    scan.feed(page.read_text(encoding="utf-8", errors="replace"))
    scan.close()
    return scan


def _is_external(url: str) -> bool:
    """Whether ``url`` leaves the book (has a scheme such as http: or mailto:, or is //host)."""
    return bool(urlsplit(url).scheme) or url.startswith("//")


def _book_pages(html_dir: Path) -> list[Path]:
    """The HTML pages of a built book: all *.html except the theme's Jinja fragments,
    which the themes ship as _static/*macros.html and are not pages."""
    return [
        p
        for p in sorted(html_dir.rglob("*.html"))
        if "_static" not in p.relative_to(html_dir).parts
    ]


def check_links(html_dir: Path) -> list[str]:
    """Broken internal links of a built HTML folder (empty if none).

    Every relative ``href``/``src`` must point to an existing file inside ``html_dir`` (a
    folder counts if it has an index.html), and its ``#anchor``, when the target is an HTML
    page, must be an ``id`` (or ``<a name>``) of that page. Links with a scheme (http:,
    mailto:, data:, ...) are not followed; root-relative links (``/x``) count as broken
    because they break when the book is not served from a domain's root. Pages under
    ``_static/`` are theme template fragments, not pages, and are not scanned.
    """
    html_dir = Path(html_dir).resolve()
    scans: dict[Path, _PageScan] = {}

    def scan_of(page: Path) -> _PageScan:
        if page not in scans:
            scans[page] = _scan(page)
        return scans[page]

    broken = []
    for page in _book_pages(html_dir):
        rel_page = page.relative_to(html_dir).as_posix()
        for tag, attr, url in scan_of(page).links:
            url = url.strip()
            if not url or _is_external(url):
                continue
            parts = urlsplit(url)
            path, fragment = unquote(parts.path), unquote(parts.fragment)
            where = f"{rel_page}: <{tag} {attr}={url!r}>"
            if path.startswith("/"):
                broken.append(f"{where}: root-relative link")
                continue
            target = Path(os.path.normpath(page.parent / path)) if path else page
            if not target.is_relative_to(html_dir):
                broken.append(f"{where}: points outside {html_dir}")
                continue
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{where}: {target.relative_to(html_dir).as_posix()} does not exist")
                continue
            if fragment and target.suffix == ".html" and fragment not in scan_of(target).ids:
                broken.append(f"{where}: no anchor #{fragment} in {target.name}")
    return broken


def remote_scripts(html_dir: Path) -> list[str]:
    """``<script src>`` that load from the network (http(s): or //host), as "page: url"."""
    found = []
    for page in _book_pages(Path(html_dir)):
        for tag, attr, url in _scan(page).links:
            if tag == "script" and attr == "src" and _is_external(url.strip()):
                found.append(f"{page.relative_to(html_dir).as_posix()}: {url}")
    return found


# ---------------------------------------------------------------------------- browser


def find_chromium(chromium: str | Path | None = None) -> str:
    """Path of a Chromium executable: ``chromium`` if given, else /usr/bin/chromium or PATH.

    Raises:
        RuntimeError: if none is found (install it with ``apt-get install chromium``).
    """
    candidates = [str(chromium)] if chromium else ["/usr/bin/chromium"]
    if not chromium:
        candidates += [w for n in ("chromium", "chromium-browser") if (w := shutil.which(n))]
    for candidate in candidates:
        if Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        f"Chromium not found (looked for {', '.join(candidates) or 'chromium on PATH'}); "
        "install it with `apt-get install chromium`."
    )


def _run_chromium(args: list[str], chromium: str | Path | None, timeout: float) -> str:
    """Run headless Chromium with a throw-away profile; return its stdout."""
    exe = find_chromium(chromium)
    with tempfile.TemporaryDirectory(prefix="ntkrepro-chromium-") as user_data:
        cmd = [exe, *_CHROMIUM_FLAGS, f"--user-data-dir={user_data}", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def screenshot(
    html_file: Path,
    png: Path,
    width: int = 1280,
    height: int = 1600,
    *,
    chromium: str | Path | None = None,
    wait_ms: int = 10000,
    timeout: float = 120,
) -> Path:
    """Screenshot ``html_file`` with headless Chromium into ``png`` and return ``png``.

    ``wait_ms`` of virtual time let MathJax typeset before the picture is taken.

    Raises:
        RuntimeError: if Chromium is missing (``apt-get install chromium``) or fails.
    """
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    args = [f"--window-size={width},{height}", f"--virtual-time-budget={wait_ms}"]
    args += [f"--screenshot={png}", Path(html_file).resolve().as_uri()]
    _run_chromium(args, chromium, timeout)
    if not png.is_file():
        raise RuntimeError(f"chromium did not write {png}")
    return png


def screenshot_problems(png: Path, *, min_ink: float = 0.02, min_colors: int = 200) -> list[str]:
    """Why a screenshot does not show a rendered page (empty if it does).

    A page that failed to render is blank (one colour) or nearly so; text alone gives a
    few hundred grey levels at most, so figures (antialiased colour plots) show as many
    distinct colours. ``min_ink``: the least fraction of non-white pixels;
    ``min_colors``: the least number of distinct non-grey colours.
    """
    import numpy as np
    from matplotlib import image

    try:
        pixels = image.imread(Path(png))[..., :3]
    except (OSError, ValueError, SyntaxError) as err:
        return [f"{png} is not a readable PNG: {err}"]
    rgb = np.round(np.asarray(pixels, float) * 255).astype(np.uint8).reshape(-1, 3)
    problems = []
    ink = float(np.mean(rgb.min(axis=1) < 250))
    if ink < min_ink:
        problems.append(f"{png} is blank: {ink:.1%} non-white pixels (< {min_ink:.0%})")
    spread = rgb.max(axis=1).astype(int) - rgb.min(axis=1)
    colors = len(np.unique(rgb[spread > 30], axis=0))
    if colors < min_colors:
        problems.append(f"{png} shows no figure: {colors} distinct colours (< {min_colors})")
    return problems


def rendered_dom(
    html_file: Path, *, chromium: str | Path | None = None, wait_ms: int = 10000
) -> str:
    """The DOM of ``html_file`` after scripts ran (e.g. to find MathJax's mjx-container)."""
    args = [f"--virtual-time-budget={wait_ms}", "--dump-dom", Path(html_file).resolve().as_uri()]
    return _run_chromium(args, chromium, timeout=120)


# ---------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ntkrepro.book {stage,build,check-links,screenshot} ...``."""
    parser = argparse.ArgumentParser(prog="python -m ntkrepro.book", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("stage", "build"):
        cmd = sub.add_parser(name, help=f"{name} the book of one profile")
        cmd.add_argument("--profile", default="cpu")
        cmd.add_argument("--root", type=Path, default=Path.cwd(), help="project root")
        cmd.add_argument("--results", type=Path, help="results folder (default ROOT/results)")
        cmd.add_argument("--allow-stale", action="store_true", help="flag stale results")
    links = sub.add_parser("check-links", help="list broken internal links of built HTML")
    links.add_argument("html_dir", type=Path)
    shot = sub.add_parser("screenshot", help="screenshot an HTML page with headless Chromium")
    shot.add_argument("html_file", type=Path)
    shot.add_argument("png", type=Path)
    shot.add_argument("--width", type=int, default=1280)
    shot.add_argument("--height", type=int, default=1600)
    args = parser.parse_args(argv)
    try:
        options = {
            "results": getattr(args, "results", None),
            "allow_stale": getattr(args, "allow_stale", False),
        }
        if args.command == "stage":
            print(stage(args.profile, args.root, **options))
        elif args.command == "build":
            print(build(args.profile, args.root, **options))
        elif args.command == "check-links":
            broken = check_links(args.html_dir)
            print("\n".join(broken) or "no broken links")
            return 1 if broken else 0
        else:
            print(screenshot(args.html_file, args.png, args.width, args.height))
    except (StagingError, BuildError, RuntimeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

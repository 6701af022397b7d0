"""Stage, build and check the ntkrepro Jupyter Book of one profile (``ntkrepro book``).

The book is built from a staged copy (:func:`stage`), never from the repository itself.
The link checks are in-house: unlike LinkChecker they need no extra tool, check every page
and refuse root-relative links and links that leave the book.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from ntkrepro import config
from ntkrepro.claims import schema_problems
from ntkrepro.results import result_state
from ntkrepro.tooling.status import (
    STALE_KEY,
    STATUS_TABLE_CLASS,
    THUMBNAIL_KEY,
    render_status,
    rerun_command,
)

#: TOC pages that :func:`stage` writes itself rather than copies from book/.
GENERATED_PAGES = ("book/status",)
#: Where each figure's figure.png goes, as ``<paper>-<figure>.png``, relative to book/.
FIGURES_DIR = "figures"
MATHJAX_NPM_SPEC = "mathjax@3"
#: DataTables 2 (pulls datatables.net), for sphinx-datatables; jQuery: sphinxcontrib-jquery.
DATATABLES_NPM_SPEC = "datatables.net-dt@2.3.5"
#: (npm package, path) -> name in _vendor/datatables.
_DATATABLES_FILES = {
    ("datatables.net", "js/dataTables.min.js"): "dataTables.min.js",
    ("datatables.net-dt", "css/dataTables.dataTables.min.css"): "dataTables.dataTables.min.css",
}
#: Style of the sortable tables (``html_css_files`` in _config.yml), written by staging.
TABLES_CSS = (
    "/* ntkrepro: the status page's tables, compact enough for the text width */\n"
    "table.sphinx-datatable { font-size: 0.85rem; }\n"
    "table.sphinx-datatable th, table.sphinx-datatable td { padding: 0.3rem 0.4rem !important; }\n"
    "table.sphinx-datatable th { padding-right: 1.4rem !important; }\n"
    # Columns share the text width; long names (figure keys, quantities) wrap anywhere.
    "table.sphinx-datatable { table-layout: fixed; width: 100% !important; }\n"
    "table.sphinx-datatable td { overflow-wrap: anywhere; }\n"
    # The page's other tables keep their :widths: too.
    f"table.{STATUS_TABLE_CLASS} {{ table-layout: fixed; width: 100% !important; }}\n"
    f"table.{STATUS_TABLE_CLASS} td {{ overflow-wrap: anywhere; }}\n"
    # Quantity names and checks are code spans: they wrap inside their column too.
    f"table.{STATUS_TABLE_CLASS} code, table.sphinx-datatable code,\n"
    f"table.{STATUS_TABLE_CLASS} code span.pre, table.sphinx-datatable code span.pre "
    "{ white-space: normal; overflow-wrap: anywhere; }\n"
    # A verdict badge ("invalid at this scale") wraps rather than leave a narrow column.
    f"table.{STATUS_TABLE_CLASS} .sd-badge, table.sphinx-datatable .sd-badge "
    "{ white-space: normal; text-align: left; }\n"
    # The dark badge ("invalid at this scale") keeps an edge on the dark theme's background.
    'html[data-theme="dark"] .sd-badge.sd-bg-dark { box-shadow: 0 0 0 1px #adb5bd; }\n'
)
#: Result files offered for download beside each figure (besides claim.json).
DOWNLOAD_SUFFIXES = (".json", ".npz", ".csv", ".pdf")
#: Folder, beside a paper's staged notebooks, of each figure's downloadable numbers.
DATA_DIR = "_data"
#: ``html_static_path`` in _config.yml; not _static, whose *.js Jupyter Book loads everywhere.
VENDOR_DIR = "_vendor"
#: The parts of MathJax's es5/ folder that tex-chtml.js loads.
_MATHJAX_PARTS = ("tex-chtml.js", "input", "output/chtml", "ui", "a11y", "sre", "adaptors")
_PROFILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class StagingError(RuntimeError):
    """The book cannot be staged: a page's results are missing or malformed."""


class BuildError(RuntimeError):
    """jupyter-book failed, or the built HTML has broken links or remote scripts."""


def staging_dir(profile: str, root: Path) -> Path:
    return Path(root) / "_build" / profile / "src"


def html_dir(profile: str, root: Path) -> Path:
    return Path(root) / "_build" / profile / "_build" / "html"


def build_command(profile: str, root: Path) -> list[str]:
    """The jupyter-book command line that :func:`build` runs (absolute paths)."""
    root = Path(root).resolve()
    src = staging_dir(profile, root)
    return [
        *[_jupyter_book_exe(), "build", str(src), "--toc", str(src / "book" / "_toc.yml")],
        *["--config", str(src / "_config.yml"), "--path-output", str(root / "_build" / profile)],
        *["-W", "--keep-going"],
    ]


def _toc_entries(node: Any) -> Iterator[str]:
    """Every ``root``/``file`` entry of a parsed _toc.yml, in reading order."""
    node = dict(enumerate(node)) if isinstance(node, list) else node
    for key, value in node.items() if isinstance(node, dict) else ():
        if key in ("root", "file") and isinstance(value, str):
            yield value
        else:
            yield from _toc_entries(value)


def toc_pages(toc_path: Path) -> list[str]:
    """All pages of a jb-book ``_toc.yml``, without suffix, in reading order."""
    entries = _toc_entries(yaml.safe_load(Path(toc_path).read_text(encoding="utf-8")))
    return list(dict.fromkeys(re.sub(r"\.(md|ipynb|rst)$", "", p).strip("/") for p in entries))


def figures_in_toc(toc_path: Path) -> list[str]:
    """The "paper/figure" keys of the TOC's ``notebooks/<paper>/<figure>`` pages, in order."""
    keys = []
    for page in toc_pages(toc_path):
        parts = page.split("/")
        if parts[0] == "notebooks":
            if len(parts) != 3 or not all(parts):
                msg = f"{toc_path}: TOC entry {page!r} is not notebooks/<paper>/<figure>"
                raise ValueError(msg)
            keys.append(f"{parts[1]}/{parts[2]}")
    return keys


def load_claim(path: Path) -> dict:
    """Read one ``claim.json`` and check it against the schema (ValueError naming each problem)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: file does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot be read: {err}") from err
    if problems := schema_problems(data):
        raise ValueError(f"{path}: malformed claim.json: " + "; ".join(problems))
    return data


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
        tags = cell.get("metadata", {}).get("tags", []) if isinstance(cell, dict) else None
        if tags is None or "raises-exception" in tags:
            continue  # a cell tagged raises-exception shows its error on purpose (myst-nb)
        for output in cell.get("outputs", []):
            if isinstance(output, dict) and output.get("output_type") == "error":
                return [f"{path}: cell {i} has an error output ({output.get('ename', '?')})"]
    return []


def _figure_problems(
    profile: str, root: Path, key: str, results: Path, allow_stale: bool
) -> tuple[list[str], dict | None]:
    """Problems with the results of one figure page, and its claim if there are none."""
    page, folder, (paper, figure) = f"notebooks/{key}", results / profile / key, key.split("/")
    notebook = folder / f"{figure}.ipynb"
    problems = [] if notebook.is_file() else [f"no executed notebook {notebook}"]
    problems += _notebook_problems(notebook) if notebook.is_file() else []
    try:
        claim = load_claim(claim_file := folder / "claim.json")
    except ValueError as err:
        claim, problems = None, [*problems, str(err)]
    for field, want in {"paper": paper, "figure": figure, "profile": profile}.items():
        if claim is not None and claim[field] != want:  # copied from elsewhere: wrong numbers
            problems.append(f"{claim_file}: {field} is {claim[field]!r}, expected {want!r}")
    if not problems:
        state, reason = result_state(key, profile, root=root, results=results)
        if state == "stale" and allow_stale:
            claim[STALE_KEY] = reason
        elif state != "current":
            problems.append(f"results are {state}: {reason}")
    return [f"page {page}: {p}" for p in problems], (None if problems else claim)


def collect_claims(
    profile: str, root: Path, *, results: Path | None = None, allow_stale: bool = False
) -> list[dict]:
    """Validated claims of every figure page in book/_toc.yml, in TOC order (or StagingError)."""
    if not _PROFILE_RE.match(profile):  # it could escape _build/ or results/
        raise ValueError(f"invalid profile name {profile!r} (letters, digits, - and _ only)")
    root, toc = Path(root), Path(root) / "book" / "_toc.yml"
    results = Path(results or root / "results")
    problems, claims, commands = [], [], []
    for key in figures_in_toc(toc):
        found, claim = _figure_problems(profile, root, key, results, allow_stale)
        problems += found
        commands += [rerun_command(profile, key)] if found else []
        claims += [] if found else [claim]
    for page in toc_pages(toc):
        sources = [root / f"{page}{suffix}" for suffix in (".md", ".ipynb", ".rst")]
        if not page.startswith("notebooks/") and page not in GENERATED_PAGES:
            if not any(s.is_file() for s in sources):
                problems.append(f"page {page} is listed in {toc} but {sources[0]} does not exist")
    if problems:
        fix = "".join(f"\n  {c}" for c in commands)
        raise StagingError(
            f"cannot stage the {profile!r} book:\n"
            + "\n".join(f"- {p}" for p in problems)
            + (f"\nRedo those results with:{fix}" if fix else "")
            + "\n(ntkrepro run recomputes stale, missing and corrupt results; "
            "`ntkrepro book --allow-stale` builds with stale ones, flagged.)"
        )
    return claims


def _npm_install(prefix: Path, spec: str, marker: Path, what: str) -> None:
    """``npm install spec`` into ``prefix`` unless ``marker`` exists (RuntimeError if it fails)."""
    if marker.is_file():
        return
    if (npm := shutil.which("npm")) is None:
        raise RuntimeError(
            f"{what} is not installed ({marker} is missing) and npm is not "
            "available to install it. Install Node.js with npm (e.g. `apt-get install npm`), "
            f"or run `npm install --no-save --prefix {prefix} {spec}` elsewhere "
            f"and copy {prefix} here."
        )
    cmd = [npm, *"install --no-save --no-audit --no-fund --prefix".split(), str(prefix), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not marker.is_file():
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n"
            + (proc.stderr or proc.stdout)[-2000:]
        )


def ensure_mathjax(root: Path) -> Path:
    """MathJax's es5/ folder under ``_build/npm``, installed from npm if missing."""
    prefix = Path(root) / "_build" / "npm"
    es5 = prefix / "node_modules" / "mathjax" / "es5"
    _npm_install(prefix, MATHJAX_NPM_SPEC, es5 / "tex-chtml.js", "MathJax")
    return es5


def ensure_datatables(root: Path) -> Path:
    """DataTables' ``node_modules``, installed if missing."""
    # Its own prefix: `npm install --no-save` in MathJax's would remove MathJax.
    prefix = Path(root) / "_build" / "npm" / "datatables"
    modules = prefix / "node_modules"
    for (package, path), _name in _DATATABLES_FILES.items():
        _npm_install(prefix, DATATABLES_NPM_SPEC, modules / package / path, "DataTables")
    return modules


def repository_config(text: str, url: str) -> str:
    """``_config.yml`` text with ``repository.url`` set to ``url``, comments and layout kept."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if re.match(r"^repository:\s*$", ln)), None)
    if start is None:
        return text.rstrip("\n") + f"\n\nrepository:\n  url: {url}\n"
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^\S", lines[i])), len(lines))
    for i in range(start + 1, end):
        if m := re.match(r"^(\s+url:[ \t]*)(\S*)(.*)$", lines[i], flags=re.DOTALL):
            lines[i] = f"{m.group(1)}{url}{m.group(3)}"
            return "".join(lines)
    lines.insert(start + 1, f"  url: {url}\n")
    return "".join(lines)


def _repository_url(root: Path) -> str | None:
    """The repository URL of ``root``'s pyproject.toml (a test's root has none), else ours."""
    from ntkrepro.tooling import launch

    for folder in dict.fromkeys([Path(root), config.repo_root()]):
        if (folder / "pyproject.toml").is_file():
            return launch.repository_url(folder)
    return None


def download_files(folder: Path) -> list[Path]:
    """A figure's result files that its page offers for download, sorted by name."""
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and (p.suffix in DOWNLOAD_SUFFIXES or p.name == "claim.json")
    )


def _downloads_cell(figure: str, names: list[str], profile: str) -> dict:
    """A markdown cell of ``{download}`` links (Sphinx copies each file, checking it exists)."""
    links = ", ".join(f"{{download}}`{n} <{DATA_DIR}/{figure}/{n}>`" for n in names)
    return {
        "cell_type": "markdown",
        "id": "ntkrepro-downloads",
        "metadata": {"tags": ["ntkrepro-downloads"]},
        "source": f"**Numbers of this figure** (profile `{profile}`): {links}.",
    }


def _shows_image(cell: dict) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def _stage_notebook(source: Path, dest: Path, downloads: dict) -> None:
    """Copy an executed notebook, its parameters cell hidden, ``downloads`` after the figure."""
    nb = json.loads(source.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    shown = [i for i, c in enumerate(nb["cells"]) if _shows_image(c)]
    nb["cells"].insert(shown[-1] + 1 if shown else len(nb["cells"]), downloads)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(nb, indent=1, ensure_ascii=False), encoding="utf-8")


def stage(
    profile: str, root: Path, *, results: Path | None = None, allow_stale: bool = False
) -> Path:
    """Assemble the book sources of ``profile`` in a fresh ``_build/<profile>/src``; return it."""
    root = Path(root).resolve()
    results = Path(results or root / "results")
    claims = collect_claims(profile, root, results=results, allow_stale=allow_stale)
    es5, datatables = ensure_mathjax(root), ensure_datatables(root)
    src = staging_dir(profile, root)
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    config_text = (root / "_config.yml").read_text(encoding="utf-8")
    if url := _repository_url(root):
        config_text = repository_config(config_text, url)
    (src / "_config.yml").write_text(config_text, encoding="utf-8")
    ignore = shutil.ignore_patterns("_generated", "__pycache__", ".ipynb_checkpoints")
    shutil.copytree(root / "book", src / "book", ignore=ignore)
    for claim in claims:
        paper, figure = claim["paper"], claim["figure"]
        folder = results / profile / paper / figure
        data = src / "notebooks" / paper / DATA_DIR / figure
        data.mkdir(parents=True)
        names = [path.name for path in download_files(folder)]
        for name in names:  # verified by their checksums (claim.json too)
            shutil.copy2(folder / name, data / name)
        staged = src / "notebooks" / paper / f"{figure}.ipynb"
        _stage_notebook(folder / f"{figure}.ipynb", staged, _downloads_cell(figure, names, profile))
        if (folder / "figure.png").is_file():  # flat name: Sphinx's _images/ keeps base names
            claim[THUMBNAIL_KEY] = f"{FIGURES_DIR}/{paper}-{figure}.png"
            (src / "book" / FIGURES_DIR).mkdir(exist_ok=True)
            shutil.copy2(folder / "figure.png", src / "book" / claim[THUMBNAIL_KEY])
    mathjax = src / VENDOR_DIR / "mathjax"
    for part in _MATHJAX_PARTS:
        if (es5 / part).is_dir():
            shutil.copytree(es5 / part, mathjax / part)
        elif (es5 / part).is_file():
            (mathjax / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(es5 / part, mathjax / part)
    vendor_dt = src / VENDOR_DIR / "datatables"
    vendor_dt.mkdir(parents=True)
    (vendor_dt / "ntkrepro-tables.css").write_text(TABLES_CSS, encoding="utf-8")
    for (package, path), name in _DATATABLES_FILES.items():
        shutil.copy2(datatables / package / path, vendor_dt / name)
    (src / "book" / "status.md").write_text(render_status(claims, profile), encoding="utf-8")
    (src / "book" / "_generated").mkdir()
    summary = results / "bench" / "summary.md"  # written by `make bench`
    missing = "No benchmark results were found when this book was built: run `make bench`, "
    missing += "then `ntkrepro book` again.\n"
    text = summary.read_text(encoding="utf-8") if summary.is_file() else missing
    (src / "book" / "_generated" / "benchmarks.md").write_text(text, encoding="utf-8")
    return src


def _jupyter_book_exe() -> str:
    """The jupyter-book executable of this environment (next to python), else on PATH."""
    beside = Path(sys.executable).with_name("jupyter-book")
    if found := str(beside) if beside.is_file() else shutil.which("jupyter-book"):
        return found
    raise BuildError("jupyter-book is not installed: pip install -e '.[book]'")


def build(
    profile: str, root: Path, *, results: Path | None = None, allow_stale: bool = False
) -> Path:
    """Stage and build the book of ``profile``; return the HTML folder (log: build.log)."""
    root = Path(root).resolve()
    stage(profile, root, results=results, allow_stale=allow_stale)
    out, html = root / "_build" / profile, html_dir(profile, root)
    # An incremental build would not repeat unchanged pages' warnings: -W could miss them.
    shutil.rmtree(out / "_build", ignore_errors=True)
    cmd = build_command(profile, root)
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    log = re.sub(r"\x1b\[[0-9;]*m", "", f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}")
    (out / "build.log").write_text(log, encoding="utf-8")
    if proc.returncode != 0 or not (html / "index.html").is_file():
        warnings = [ln for ln in log.splitlines() if re.search(r"WARNING|ERROR|CRITICAL|Error", ln)]
        raise BuildError(
            f"jupyter-book build failed (exit {proc.returncode}; warnings are errors). "
            f"Full log: {out / 'build.log'}\n" + "\n".join(warnings[:40]) + "\n"
            f"Files under {staging_dir(profile, root)} are copies: fix book/... and "
            f"_config.yml in {root}, and notebooks/<paper>/<figure>.ipynb by rerunning "
            f"`{rerun_command(profile, '<paper>/<figure>')}`."
        )
    problems = [f"broken link: {b}" for b in check_links(html)]
    problems += [f"remote script: {r}" for r in remote_scripts(html)]
    problems += [f"remote style sheet: {r}" for r in remote_stylesheets(html)]
    if problems:
        raise BuildError(f"the built book {html} is not self-contained:\n" + "\n".join(problems))
    return html


class _PageScan(HTMLParser):
    """The anchors (id, a[name]) and the href/src links of one HTML page."""

    def __init__(self, page: Path) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, url)
        self.stylesheets: list[str] = []  # href of <link rel="stylesheet">
        self.feed(page.read_text(encoding="utf-8", errors="replace"))
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is not None and (name == "id" or (name == "name" and tag == "a")):
                self.ids.add(value)
            elif value is not None and name in ("href", "src"):
                self.links.append((tag, name, value.strip()))
        rel = (dict(attrs).get("rel") or "").lower().split()
        if tag == "link" and "stylesheet" in rel and dict(attrs).get("href"):
            self.stylesheets.append(str(dict(attrs)["href"]).strip())

    handle_startendtag = handle_starttag


def _is_external(url: str) -> bool:
    """Whether ``url`` leaves the book (has a scheme such as http: or mailto:, or is //host)."""
    return bool(urlsplit(url).scheme) or url.startswith("//")


def book_pages(html: Path) -> list[Path]:
    """The HTML pages of a built book: all *.html but the theme's fragments in _static/."""
    return [
        p for p in sorted(Path(html).rglob("*.html")) if "_static" not in p.relative_to(html).parts
    ]


def check_links(html: Path) -> list[str]:
    """Broken internal links of a built HTML folder, as "page: <tag attr=url>: why"."""
    html = Path(html).resolve()
    scans: dict[Path, _PageScan] = {}
    broken = []
    for page in book_pages(html):
        scan = scans.setdefault(page, _PageScan(page))
        for tag, attr, url in scan.links:
            if not url or _is_external(url):
                continue
            parts = urlsplit(url)
            path, fragment = unquote(parts.path), unquote(parts.fragment)
            target = Path(os.path.normpath(page.parent / path)) if path else page
            target = target / "index.html" if target.is_dir() else target
            if path.startswith("/"):  # breaks unless the book is served from a domain's root
                why = "root-relative link"
            elif not target.is_relative_to(html):
                why = f"points outside {html}"
            elif not target.is_file():
                why = f"{target.relative_to(html).as_posix()} does not exist"
            elif fragment and target.suffix == ".html":
                ids = scans.setdefault(target, _PageScan(target)).ids
                why = None if fragment in ids else f"no anchor #{fragment} in {target.name}"
            else:
                why = None
            if why:
                broken.append(f"{page.relative_to(html).as_posix()}: <{tag} {attr}={url!r}>: {why}")
    return broken


def _remote(html: Path, urls: Callable[[_PageScan], list[str]]) -> list[str]:
    return [
        f"{page.relative_to(html).as_posix()}: {url}"
        for page in book_pages(Path(html))
        for url in urls(_PageScan(page))
        if _is_external(url)
    ]


def remote_scripts(html: Path) -> list[str]:
    """``<script src>`` that load from the network (http(s): or //host), as "page: url"."""
    return _remote(html, lambda s: [u for t, a, u in s.links if t == "script" and a == "src"])


def remote_stylesheets(html: Path) -> list[str]:
    """``<link rel="stylesheet" href>`` that load from the network, as "page: url"."""
    return _remote(html, lambda s: s.stylesheets)


def archive_name(root: Path) -> str:
    """``ntkrepro-book-<short commit>[-dirty]``, or ``ntkrepro-book-nogit``."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, check=False
        )

    try:
        sha = git("rev-parse", "--short=12", "HEAD")
    except OSError:
        return "ntkrepro-book-nogit"
    if sha.returncode != 0 or not sha.stdout.strip():
        return "ntkrepro-book-nogit"
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return f"ntkrepro-book-{sha.stdout.strip()}{'-dirty' if dirty else ''}"


def archive(html: Path, dest: Path, name: str) -> Path:
    """Pack the self-contained built book ``html`` into ``<dest>/<name>.tar.gz``; return it."""
    import tarfile

    html = Path(html)
    if not (html / "index.html").is_file():
        raise BuildError(f"{html / 'index.html'} does not exist: build the book first")
    if remote := remote_scripts(html) + remote_stylesheets(html):
        raise BuildError(f"{html} loads from the network:\n" + "\n".join(remote))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    target, partial = dest / f"{name}.tar.gz", dest / f".{name}.tar.gz.partial"

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:  # no build machine's user names
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(partial, "w:gz") as tar:
        tar.add(html, arcname=name, filter=clean)
    os.replace(partial, target)
    return target

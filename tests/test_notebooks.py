"""Every figure notebook under the smoke profile, through papermill (the users' path);
then the book built from those results. Plus the hygiene of committed notebooks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import htmlcheck
import nbformat
import papermill
import pytest

from ntkrepro import claims, config
from ntkrepro.tooling import book, cli, launch

ROOT = Path(__file__).resolve().parent.parent
FIGURES = config.figures()


def test_there_are_figures_and_they_are_in_the_toc():
    assert "lee2020/kernels_vs_networks" in FIGURES
    assert set(book.figures_in_toc(ROOT / "book" / "_toc.yml")) == set(FIGURES)


@pytest.mark.parametrize("key", FIGURES)
def test_notebook_is_committed_clean(key):
    nb = nbformat.read(config.notebook_path(key), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    # The first code cell installs ntkrepro on Colab (ntkrepro.tooling.launch; hidden in the
    # book); the first one after it is the parameters cell.
    after_colab = [c for c in code if not launch.is_colab_cell(c)]
    assert "parameters" in after_colab[0].metadata.get("tags", []), (
        "first code cell after the Colab cell: parameters"
    )
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    for cell in code:
        assert not cell.outputs and cell.execution_count is None, f"{key} has outputs"
    # Progress bars through ntkrepro.progress: off under `ntkrepro run`, so executed pages
    # carry no widgets (and no widget scripts from a CDN).
    assert not any("from tqdm" in c.source for c in code), f"{key}: use ntkrepro.progress.tqdm"
    # The page shows the figure, not the matplotlib code that draws it (a toggle reveals it).
    drawing = [c for c in code if "run.save_figure(" in c.source]
    assert drawing, f"{key} never calls run.save_figure"
    for cell in drawing:
        tags = cell.metadata.get("tags", [])
        assert "hide-input" in tags, f"{key}: tag the figure cell hide-input"


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory):
    """Run every notebook once under smoke; results in a temporary folder."""
    return _run_smoke(tmp_path_factory.mktemp("results"))


def _run_smoke(folder):
    """``ntkrepro run --profile smoke`` of every figure, results into ``folder``."""
    proc = subprocess.run(
        [sys.executable, "-m", "ntkrepro.tooling.cli", "run", "--profile", "smoke"],
        cwd=ROOT,
        env={**__import__("os").environ, "NTKREPRO_RESULTS": str(folder)},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("key", FIGURES)
def test_smoke_run_writes_figure_numbers_and_claim(smoke_results, key):
    folder = smoke_results / "smoke" / key
    claim = book.load_claim(folder / "claim.json")  # validates the schema
    assert claim["profile"] == "smoke" and (claim["claims"] or claim["method_checks"])
    assert claim["verdict"] in claims.FIGURE_VERDICTS
    for c in claim["claims"]:
        assert c["verdict"] in claims.CHECK_VERDICTS
        assert c["check"] and c["measured"] and c["threshold"] is not None
        assert len(c["interval"]) == 2 and c["interval_method"] and c["n"] >= 1
    for m in claim["method_checks"]:
        assert m["verdict"] in (claims.PASSED, claims.FAILED)
    prov = claim["provenance"]
    for field in ("versions", "code_hash", "parameters", "device", "started", "runtime_s"):
        assert prov[field] not in (None, ""), field
    assert (folder / "figure.png").stat().st_size > 1000
    assert (folder / "figure.pdf").exists()
    executed = nbformat.read(folder / f"{key.split('/')[1]}.ipynb", as_version=4)
    assert any(
        o.get("output_type") == "display_data" for c in executed.cells for o in c.get("outputs", [])
    ), "the figure must be shown in the page"


#: Figures whose numbers are measurements of this machine (times, memory): not repeatable.
TIMING_FIGURES = {"performance/scaling"}


@pytest.fixture(scope="module")
def second_smoke_results(smoke_results, tmp_path_factory):
    """Every notebook run a second time under smoke, into another folder."""
    return _run_smoke(tmp_path_factory.mktemp("results2"))


@pytest.mark.slow
@pytest.mark.parametrize("key", [k for k in FIGURES if k not in TIMING_FIGURES])
def test_smoke_run_twice_gives_identical_bytes(smoke_results, second_smoke_results, key):
    """Same notebook, profile, parameters and seed: the same numbers and figure, to the bit."""
    a, b = smoke_results / "smoke" / key, second_smoke_results / "smoke" / key
    code = [json.loads((f / "claim.json").read_text())["provenance"]["code_hash"] for f in (a, b)]
    if code[0] != code[1]:
        pytest.skip("the sources changed between the two runs (someone is editing them)")
    names = sorted(p.name for p in a.iterdir() if p.name != "claim.json" and p.suffix != ".ipynb")
    assert {"figure.pdf", "figure.png"} < set(names), f"{key}: {names}"
    assert any(n.endswith((".json", ".npz")) for n in names), f"{key} wrote no numbers"
    assert names == sorted(
        p.name for p in b.iterdir() if p.name != "claim.json" and p.suffix != ".ipynb"
    )
    for name in names:  # numbers, arrays, tables and the figure
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{key}: {name} differs"


@pytest.mark.slow
def test_run_skips_current_results(smoke_results, monkeypatch, capsys):
    monkeypatch.setenv("NTKREPRO_RESULTS", str(smoke_results))
    assert cli.main(["run", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert all(f"[skip] {key}" in out for key in FIGURES), out


@pytest.fixture(scope="module")
def smoke_book(smoke_results, tmp_path_factory):
    """The book built from the smoke results in a temporary root: (root, html folder)."""
    root = tmp_path_factory.mktemp("book") / "root"
    root.mkdir()
    for name in ("_config.yml", "book", "notebooks"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
    shutil.copytree(smoke_results, root / "results")
    npm = ROOT / "_build" / "npm"
    if npm.exists():  # reuse MathJax fetched by an earlier build
        shutil.copytree(npm, root / "_build" / "npm")
    return root, book.build("smoke", root)


@pytest.mark.slow
def test_book_builds_from_smoke_results(smoke_results, smoke_book, tmp_path):
    html = smoke_book[1]
    status = (html / "book" / "status.html").read_text()
    for key in FIGURES:
        assert key.split("/")[1] in status
        # Each figure's image is on the status page, byte for byte the checksummed result.
        image = html / "_images" / f"{key.replace('/', '-')}.png"
        assert image.read_bytes() == (smoke_results / "smoke" / key / "figure.png").read_bytes()
    assert book.check_links(html) == []
    # The status page renders in a browser: not blank, and its figures show.
    try:
        png = htmlcheck.screenshot(
            html / "book" / "status.html", tmp_path / "status.png", height=2400
        )
        dom = htmlcheck.rendered_dom(html / "book" / "status.html")
    except RuntimeError as err:
        pytest.skip(f"no headless Chromium for the screenshot ({err})")
    assert htmlcheck.screenshot_problems(png) == []
    for key in FIGURES:
        assert f'src="../_images/{key.replace("/", "-")}.png"' in dom


@pytest.mark.slow
def test_a_gate_that_fails_at_smoke_shows_as_invalid_at_this_scale(smoke_results, smoke_book):
    """At smoke the kernel-velocity network trains a few steps and cannot fit its data: its
    fit gate fails, so both checks, and the figure, are invalid at this scale (never "not
    reproduced"), and the status page says so with the gate's number."""
    key = "fort2020/kernel_velocity"
    claim = book.load_claim(smoke_results / "smoke" / key / "claim.json")
    (gate,) = claim["gates"]
    assert gate["verdict"] == claims.FAILED and claim["verdict"] == claims.INVALID
    assert all(c["failed_gates"] == [gate["id"]] for c in claim["claims"])
    assert all(c["verdict"] == claims.INVALID for c in claim["claims"])
    status = (smoke_book[1] / "book" / "status.html").read_text()
    measured = format(gate["measured"][gate["quantity"]], ".4g")
    assert "invalid at this scale" in status and measured in status


@pytest.mark.slow
def test_book_pages_show_the_method_not_the_machinery(smoke_results, smoke_book):
    """No page shows where the book was built or run (absolute paths), a parameter mapping's
    repr, or papermill's injected-parameters cell (hidden by staging)."""
    root, html = smoke_book
    leaks = {
        "the build root": {str(root), str(root.resolve())},
        "the results folder": {str(smoke_results), str(smoke_results.resolve())},
        "the project root": {str(ROOT)},
        "a mappingproxy repr": {"mappingproxy"},
        "papermill's injected cell": {"# Parameters"},
    }
    found = [
        f"{page.relative_to(html)}: {what} ({text!r})"
        for page in book.book_pages(html)
        for what, texts in leaks.items()
        for text in texts
        if text in page.read_text(encoding="utf-8", errors="replace")
    ]
    assert not found, "\n".join(found)


def test_papermill_bad_parameter_fails_before_compute(results_dir, tmp_path):
    key = "lee2020/kernels_vs_networks"  # its parameters are known here
    final = results_dir / "smoke" / key
    final.mkdir(parents=True)
    (final / "claim.json").write_text('{"earlier": true}')
    for params, message in (
        ({"profile": "gpu"}, "unknown profile 'gpu'"),
        ({"profile": "smoke", "nonsense": 1}, "unknown parameter(s) nonsense"),
        ({"profile": "smoke", "n_test": -5}, "n_test=-5 must be a positive integer"),
        ({"profile": "smoke", "dataset": "imagenet"}, "unknown"),
    ):
        with pytest.raises(papermill.PapermillExecutionError) as err:
            papermill.execute_notebook(
                str(config.notebook_path(key)),
                str(tmp_path / "out.ipynb"),
                parameters=params,
                cwd=str(ROOT),
                progress_bar=False,
                kernel_name="python3",
            )
        assert message in str(err.value), str(err.value)[-500:]
    assert json.loads((final / "claim.json").read_text()) == {"earlier": True}
    assert not (results_dir / "smoke" / f"{key}.partial").exists()


def test_cli_rejects_bad_input_without_running(results_dir, capsys):
    key = "lee2020/kernels_vs_networks"  # its parameters are known here
    assert cli.main(["run", "--profile", "smoke", "--only", key, "-p", "widths=64"]) == 2
    assert "a list" in capsys.readouterr().err
    assert cli.main(["run", "--profile", "smoke", "--only", "lee2020/nope"]) == 2
    assert "unknown figure" in capsys.readouterr().err
    assert not results_dir.exists(), "nothing may be written for bad input"


def test_ruff_lint_and_format_clean():
    ruff = Path(sys.executable).with_name("ruff")
    ruff = str(ruff) if ruff.exists() else shutil.which("ruff")
    assert ruff, "ruff is part of the dev extra"
    for args in (["check", "."], ["format", "--check", "."]):
        proc = subprocess.run([ruff, *args], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_only_accepts_repeated_and_multiple_figures():
    args = cli.parser().parse_args(["run", "--only", "a/b", "--only", "c/d", "e/f"])
    assert args.only == ["a/b", "c/d", "e/f"]


# ------------------------------------------------ the built smoke book (issue #20)


@pytest.mark.slow
def test_smoke_book_passes_linkchecker(smoke_book):
    """LinkChecker (PyPI), offline: every file and anchor linked from the pages exists."""
    try:
        problems = htmlcheck.linkchecker_problems(smoke_book[1])
    except RuntimeError as err:
        pytest.skip(str(err))
    assert problems == [], "\n".join(problems[:40])


@pytest.mark.slow
def test_smoke_book_archive_is_self_contained(smoke_book, tmp_path):
    """The archive of `make publish` unpacks to one folder with an index.html, and no page
    loads a script or style sheet from an http(s) URL."""
    import re
    import tarfile

    html = smoke_book[1]
    path = book.archive(html, tmp_path / "dist", book.archive_name(ROOT))
    assert path.name.startswith("ntkrepro-book-") and path.name.endswith(".tar.gz")
    out = tmp_path / "unpacked"
    with tarfile.open(path) as tar:
        tar.extractall(out, filter="data")
    (site,) = out.iterdir()
    assert site.name == path.name.removesuffix(".tar.gz") and (site / "index.html").is_file()
    assert book.remote_scripts(site) == [] and book.remote_stylesheets(site) == []
    for page in book.book_pages(site):
        text = page.read_text(encoding="utf-8", errors="replace")
        remote = re.findall(r"<(?:script|link)\b[^>]*(?:src|href)=[\"'](?:https?:)?//[^\"']+", text)
        remote = [r for r in remote if "<script" in r or "stylesheet" in r]
        assert remote == [], f"{page.relative_to(site)}: {remote}"
    assert book.check_links(site) == []
    # MathJax and DataTables are in the archive itself.
    assert (site / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert (site / "_static" / "datatables" / "dataTables.min.js").is_file()


@pytest.mark.slow
def test_smoke_book_figure_pages_link_their_numbers(smoke_results, smoke_book):
    """Every figure page offers its numbers: download links that resolve to the bytes of
    the result files; the status page's checks table is a sortable DataTable."""
    import re

    from ntkrepro.tooling import status as status_module

    html = smoke_book[1]
    for key in FIGURES:
        page = html / "notebooks" / f"{key}.html"
        text = page.read_text(encoding="utf-8")
        links = re.findall(r'href="([^"]*_downloads/[^"]+)"', text)
        names = {Path(link).name for link in links}
        folder = smoke_results / "smoke" / key
        wanted = {p.name for p in book.download_files(folder)}
        numbers = {n for n in wanted if n.endswith((".json", ".npz")) and n != "claim.json"}
        assert "claim.json" in wanted and numbers, key
        assert names == wanted, f"{key}: {names} != {wanted}"
        for link in links:
            target = (page.parent / link).resolve()
            assert target.read_bytes() == (folder / target.name).read_bytes(), link
        # The launch buttons open this notebook in the repository of pyproject.toml.
        repo = launch.repository_url(ROOT).removeprefix("https://github.com/")
        assert f"https://mybinder.org/v2/gh/{repo}/main?urlpath=tree/notebooks/{key}.ipynb" in text
        colab = f"https://colab.research.google.com/github/{repo}/blob/main/notebooks/{key}.ipynb"
        assert colab in text, key
    status = (html / "book" / "status.html").read_text(encoding="utf-8")
    assert f'class="{status_module.DATATABLE_CLASS}' in status
    assert "_static/datatables/dataTables.min.js" in status
    try:
        dom = htmlcheck.rendered_dom(html / "book" / "status.html")
    except RuntimeError as err:
        pytest.skip(f"no headless Chromium to check the table sorts ({err})")
    assert "dt-orderable-asc" in dom  # DataTables ran, offline, and made the headers sortable

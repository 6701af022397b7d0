"""Publishing, launching and installing the book (issue #20): the one repository URL, the
Colab cell of every notebook, Binder's files, the GitHub Actions workflow, the archive of
a built book, the sortable checks table, the download links of figure pages, ``--only``
with papers. The slow checks on the built smoke book are in test_notebooks.py (they reuse
its ``smoke_book`` fixture)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import textwrap
import tomllib
from pathlib import Path

import htmlcheck
import nbformat
import pytest
import test_book
import yaml
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook
from test_book import KEY, fake_claim, write_results

from ntkrepro import config
from ntkrepro.tooling import book, cli, launch, status

ROOT = Path(__file__).resolve().parent.parent
fake_root, no_npm = test_book.fake_root, test_book.no_npm  # the fixtures, shared
URL = launch.repository_url(ROOT)
FIGURES = config.figures()


# ---------------------------------------------------------------------------- one URL


def test_pyproject_names_the_repository_url() -> None:
    with open(ROOT / "pyproject.toml", "rb") as f:
        urls = tomllib.load(f)["project"]["urls"]
    assert URL == urls["Repository"].rstrip("/") and URL.startswith("https://")


def test_config_and_readme_name_no_other_repository() -> None:
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert cfg["repository"]["url"] == URL  # staging overwrites it anyway
    assert {"binderhub_url", "colab_url"} <= set(cfg["launch_buttons"])
    for path in (ROOT / "README.md", ROOT / "_config.yml"):
        repos = set(re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", path.read_text()))
        assert repos <= {URL}, f"{path.name} names {repos - {URL}}: use pyproject.toml's URL"


def test_repository_config_sets_the_url_and_keeps_the_rest() -> None:
    text = (ROOT / "_config.yml").read_text()
    fork = "https://github.com/someone/fork"
    staged = book.repository_config(text, fork)
    assert yaml.safe_load(staged)["repository"]["url"] == fork
    assert staged.replace(fork, URL) == text  # comments and layout kept
    assert book.repository_config(text, URL) == text
    assert yaml.safe_load(book.repository_config("title: x\n", fork))["repository"] == {"url": fork}


def test_stage_writes_the_url_of_pyproject_into_the_config(fake_root: Path, no_npm: Path) -> None:
    fork = "https://github.com/someone/fork"
    (fake_root / "pyproject.toml").write_text(f'[project.urls]\nRepository = "{fork}/"\n')
    staged = yaml.safe_load((book.stage("cpu", fake_root) / "_config.yml").read_text())
    assert staged["repository"]["url"] == fork


def test_repository_url_rejects_a_missing_url(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    with pytest.raises(ValueError, match="Repository"):
        launch.repository_url(tmp_path)


# ---------------------------------------------------------------------------- Colab


@pytest.mark.parametrize("key", FIGURES)
def test_first_code_cell_is_the_colab_cell(key: str) -> None:
    """Fails until `make notebooks-sync` has been run (and after a change of the URL)."""
    nb = json.loads(config.notebook_path(key).read_text())
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert launch.is_colab_cell(first), f"{key}: run `make notebooks-sync`"
    assert "remove-cell" in first["metadata"]["tags"]
    assert "".join(first["source"]) == launch.colab_cell(URL), f"{key}: run make notebooks-sync"
    assert sum(launch.is_colab_cell(c) for c in nb["cells"]) == 1


def _exec_cell(source: str) -> dict:
    """Run the Colab cell in a child Python where ``import ntkrepro`` fails and
    ``subprocess.run`` only records its commands; return the commands and sys.path."""
    script = textwrap.dedent(
        """
        import json, os, subprocess, sys
        sys.modules["ntkrepro"] = None  # import ntkrepro raises ImportError
        calls = []
        subprocess.run = lambda cmd, **kw: calls.append(cmd)
        try:
            exec(compile(sys.stdin.read(), "colab-cell", "exec"), {})
        except ImportError:
            pass  # the last import still fails here: nothing was installed
        print(json.dumps({"calls": calls, "path0": sys.path[0],
                          "root": os.environ.get("NTKREPRO_ROOT")}))
        """
    )
    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"ntkrepro-colab-home-{os.getpid()}"
    proc = subprocess.run(
        [sys.executable, "-c", script],
        input=source,
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(home)},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout) | {"home": str(home)}


def test_colab_cell_is_a_no_op_where_ntkrepro_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError(f"the Colab cell ran {args}: it must do nothing here")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "check_call", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    namespace: dict = {}
    exec(compile(launch.colab_cell(URL), "colab-cell", "exec"), namespace)
    public = {k for k in namespace if not k.startswith("_")}
    assert public == {"ntkrepro"}, "the cell binds no name that could look like a parameter"


def test_colab_cell_installs_from_the_repository_where_ntkrepro_is_missing() -> None:
    fork = "https://github.com/someone/fork"
    out = _exec_cell(launch.colab_cell(fork, ["a==1", "b==2"]))
    src = str(Path(out["home"]) / "ntkrepro")
    assert out["calls"][0] == ["git", "clone", "--depth", "1", fork, src]
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    assert out["calls"][1] == [*pip, "--no-deps", "a==1", "b==2"]
    assert out["calls"][2] == [*pip, "-e", src]
    assert out["path0"] == src and out["root"] == src


def test_colab_cell_installs_the_makefiles_nodeps() -> None:
    makefile = (ROOT / "Makefile").read_text()
    nodeps = re.search(r"^NODEPS := (.+)$", makefile, re.M).group(1).split()
    assert launch.nodeps_packages(ROOT) == nodeps
    assert all(json.dumps(p) in launch.colab_cell(URL) for p in nodeps)


def _notebook(tmp_path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Title"),
        nbformat.v4.new_code_cell('profile = "cpu"\nn = 3', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print(n)"),
    ]
    path = tmp_path / "notebooks" / "p" / "f.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)
    return path


def test_ensure_colab_cell_inserts_updates_and_is_idempotent(tmp_path: Path) -> None:
    path = _notebook(tmp_path)
    before = json.loads(path.read_text())
    assert launch.ensure_colab_cell(path, "https://github.com/a/b", ["x==1"])
    nb = json.loads(path.read_text())
    assert [c["cell_type"] for c in nb["cells"]] == ["markdown", "code", "code", "code"]
    assert launch.is_colab_cell(nb["cells"][1]) and nb["cells"][1]["outputs"] == []
    assert nb["cells"][1]["metadata"]["tags"] == launch.COLAB_TAGS
    assert nb["cells"][0] == before["cells"][0] and nb["cells"][2:] == before["cells"][1:]
    nbformat.validate(nbformat.reads(path.read_text(), as_version=4))
    text = path.read_text()
    assert not launch.ensure_colab_cell(path, "https://github.com/a/b", ["x==1"])
    assert path.read_text() == text
    assert launch.ensure_colab_cell(path, "https://github.com/c/d", ["x==1"])  # URL changed
    nb = json.loads(path.read_text())
    assert sum(map(launch.is_colab_cell, nb["cells"])) == 1
    assert "https://github.com/c/d" in "".join(nb["cells"][1]["source"])


def test_papermill_and_the_parameter_reader_ignore_the_colab_cell(tmp_path: Path) -> None:
    path = _notebook(tmp_path)
    launch.ensure_colab_cell(path, URL, ["x==1"])
    out = parameterize_notebook(load_notebook_node(str(path)), {"n": 5})
    tags = [c.metadata.get("tags", []) for c in out.cells if c.cell_type == "code"]
    assert tags[:3] == [launch.COLAB_TAGS, ["parameters"], ["injected-parameters"]]
    assert config.notebook_defaults("p/f", tmp_path) == {"profile": "cpu", "n": 3}
    code = launch.first_code_cells(json.loads(path.read_text()))
    assert "parameters" in code[0]["metadata"]["tags"]


def test_sync_notebooks_touches_every_notebook_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    shutil.copy2(ROOT / "pyproject.toml", root / "pyproject.toml")
    shutil.copy2(ROOT / "Makefile", root / "Makefile")
    launch.sync_notebooks(root)
    assert launch.sync_notebooks(root) == []  # the second run changes nothing
    for key in config.figures(root):
        nb = json.loads(config.notebook_path(key, root).read_text())
        first = next(c for c in nb["cells"] if c["cell_type"] == "code")
        assert launch.is_colab_cell(first), key


# ---------------------------------------------------------------------------- Binder


def test_binder_files_name_the_pins_of_constraints() -> None:
    binder = ROOT / "binder"
    assert (binder / "runtime.txt").read_text().strip() == "python-3.11"
    pins = launch.constraint_pins(ROOT / "constraints.txt")
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.+!-]+", p) for p in pins), pins
    assert launch.constraint_pins(binder / "requirements.txt") == pins, "run `make binder`"
    assert (binder / "requirements.txt").read_text() == launch.binder_requirements(ROOT)


def test_binder_postbuild_installs_nodeps_and_the_package() -> None:
    post = ROOT / "binder" / "postBuild"
    assert post.stat().st_mode & stat.S_IXUSR, "postBuild must be executable"
    assert subprocess.run(["bash", "-n", str(post)]).returncode == 0
    text = post.read_text()
    assert "--no-deps $nodeps" in text and "--no-deps -e ." in text
    # The sed line of postBuild reads the Makefile's NODEPS.
    line = next(ln for ln in text.splitlines() if ln.startswith("nodeps="))
    proc = subprocess.run(["bash", "-c", f"{line}; echo $nodeps"], cwd=ROOT, capture_output=True)
    assert proc.stdout.decode().split() == launch.nodeps_packages(ROOT)


# ---------------------------------------------------------------------------- workflow


WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def test_workflows_pass_the_github_workflow_schema() -> None:
    exe = Path(sys.executable).with_name("check-jsonschema")
    assert exe.exists(), "check-jsonschema is part of the dev extra"
    assert WORKFLOWS
    proc = subprocess.run(
        [str(exe), "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_check_jsonschema_catches_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - uses: a/b@v1\n"
                   "        wiht: {}\n")  # fmt: skip
    exe = Path(sys.executable).with_name("check-jsonschema")
    proc = subprocess.run(
        [str(exe), "--builtin-schema", "vendor.github-workflows", str(bad)], capture_output=True
    )
    assert proc.returncode == 1 and b"wiht" in proc.stdout


def test_book_workflow_tests_on_main_and_deploys_on_tag_or_by_hand() -> None:
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    on = wf[True]  # YAML 1.1 reads the key `on` as true
    assert on["push"]["branches"] == ["main"] and on["push"]["tags"]
    assert "workflow_dispatch" in on
    jobs = wf["jobs"]
    runs = lambda job: [s.get("run", "") for s in jobs[job]["steps"]]  # noqa: E731
    uses = lambda job: [s.get("uses", "").split("@")[0] for s in jobs[job]["steps"]]  # noqa: E731
    assert any("make test" in r for r in runs("test"))
    assert "if" not in jobs["test"]
    assert "workflow_dispatch" in jobs["book"]["if"] and "refs/tags/" in jobs["book"]["if"]
    assert any("make publish" in r and "PROFILE=cpu" in r for r in runs("book"))
    assert "actions/configure-pages" in uses("book")
    pages = next(s for s in jobs["book"]["steps"] if "upload-pages-artifact" in s.get("uses", ""))
    assert pages["with"]["path"] == "_build/cpu/_build/html"
    assert str(book.html_dir("cpu", Path("."))) == pages["with"]["path"]
    assert uses("deploy") == ["actions/deploy-pages"] and jobs["deploy"]["needs"] == "book"
    assert jobs["deploy"]["permissions"] == {"pages": "write", "id-token": "write"}
    assert jobs["deploy"]["environment"]["name"] == "github-pages"
    # Debian, as root: `make system` can install dataset-fashion-mnist and chromium.
    assert all("bookworm" in jobs[j]["container"] for j in ("test", "book"))
    makefile = (ROOT / "Makefile").read_text()
    assert "dataset-fashion-mnist" in makefile and re.search(r"^publish: book$", makefile, re.M)


# ---------------------------------------------------------------------------- archive


def test_archive_packs_a_site_under_one_folder(tmp_path: Path) -> None:
    site = tmp_path / "html"
    (site / "book").mkdir(parents=True)
    (site / "index.html").write_text('<html><script src="_static/x.js"></script></html>')
    (site / "book" / "a.html").write_text("<html></html>")
    path = book.archive(site, tmp_path / "out", "ntkrepro-book-abc")
    assert path == tmp_path / "out" / "ntkrepro-book-abc.tar.gz"
    with tarfile.open(path) as tar:
        names = tar.getnames()
        assert all(m.uid == 0 and m.uname == "" for m in tar.getmembers())
    assert "ntkrepro-book-abc/index.html" in names and "ntkrepro-book-abc/book/a.html" in names
    assert not list((tmp_path / "out").glob(".*"))  # no partial file left


def test_archive_refuses_a_site_that_loads_from_a_cdn(tmp_path: Path) -> None:
    site = tmp_path / "html"
    site.mkdir()
    cdn = '<link rel="stylesheet" href="https://cdn.datatables.net/x.css">'
    (site / "index.html").write_text(f"<html><head>{cdn}</head></html>")
    with pytest.raises(book.BuildError, match="cdn.datatables.net"):
        book.archive(site, tmp_path, "x")
    with pytest.raises(book.BuildError, match="build the book first"):
        book.archive(tmp_path / "nothing", tmp_path, "x")


def test_remote_stylesheets_finds_only_remote_ones(tmp_path: Path) -> None:
    site = tmp_path / "html"
    site.mkdir()
    (site / "a.html").write_text(
        '<link rel="stylesheet" href="//cdn.example/x.css"><link rel="stylesheet" href="y.css">'
        '<link rel="icon" href="https://example.org/i.png">'
    )
    assert book.remote_stylesheets(site) == ["a.html: //cdn.example/x.css"]


def test_archive_name_is_the_commit() -> None:
    name = book.archive_name(ROOT)
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    assert re.fullmatch(rf"ntkrepro-book-{sha}(-dirty)?", name), name


def test_publish_command_reports_a_missing_build(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("NTKREPRO_ROOT", str(tmp_path))
    assert cli.main(["publish", "--profile", "smoke"]) == 1
    assert "ntkrepro book --profile smoke" in capsys.readouterr().err


# ---------------------------------------------------------------------------- linkchecker


def test_linkchecker_finds_broken_files_and_anchors_offline(tmp_path: Path) -> None:
    site = tmp_path / "html"
    (site / "b").mkdir(parents=True)
    (site / "index.html").write_text(
        '<html><body><a href="b/p.html#sec">ok</a><a href="b/p.html#gone">anchor</a>'
        '<a href="missing.html">file</a><a href="https://example.invalid/">not fetched</a>'
        "</body></html>"
    )
    (site / "b" / "p.html").write_text('<html><body><p id="sec">s</p></body></html>')
    problems = htmlcheck.linkchecker_problems(site)
    assert len(problems) == 2, problems
    assert any("missing.html" in p for p in problems)
    assert any("#gone" in p and "not found" in p for p in problems)


# ---------------------------------------------------------------------------- status table


def _claim_with_checks() -> dict:
    claim = fake_claim()
    claim["claims"][0] |= {"quantity": "max_gap", "op": "<=", "threshold_parameter": "tol"}
    claim["claims"][1]["measured"] = {"mean_diff": None}  # NaN is recorded as null
    return claim


def test_status_opens_with_one_sortable_checks_table() -> None:
    text = status.render_status([_claim_with_checks()], "cpu")
    first_table = text.index("```{list-table}")
    assert text.index("## Checks") < first_table < text.index("## Summary")
    assert text.index("## Summary") < text.index("## Details")
    table = text[first_table : text.index("```\n", first_table + 3)]
    assert f":class: {status.DATATABLE_CLASS}" in table
    for header in status.CHECKS_HEADER:
        assert f"- {header}" in table
    rows = table.split("\n* - ")[2:]
    assert len(rows) == 2
    cells = [[c.strip() for c in r.split("\n  - ")] for r in rows]
    assert cells[0][2:] == [  # the value, its 95% interval and how it was made
        "0\\.01235 \\[0.008, 0.017\\]\n\n    t-interval over 5 seeds",
        status.md_text("max_n |acc_net(widest) - acc_NTK| <= 0.03"),
    ]
    assert cells[1][2].startswith("n/a \\[-0.009, -0.001\\]")  # NaN: recorded as null
    assert cells[1][3] == status.md_text("mean(acc_NNGP - acc_NTK) > 0")
    assert f"(../notebooks/{KEY}.ipynb) (a)" in cells[0][0]


def test_config_serves_datatables_from_the_book() -> None:
    sphinx = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]
    assert "sphinx_datatables" in sphinx["extra_extensions"]
    assert sphinx["extra_extensions"].index("sphinxcontrib.jquery") < sphinx[
        "extra_extensions"
    ].index("sphinx_datatables")
    names = set(book._DATATABLES_FILES.values())
    for key in ("datatables_js", "datatables_css"):
        value = sphinx["config"][key]
        assert not re.match(r"^(https?:)?//", value) and value.split("/")[-1] in names
    assert sphinx["config"]["datatables_class"] == status.DATATABLE_CLASS


# ---------------------------------------------------------------------------- downloads


def test_stage_offers_the_figures_numbers_beside_the_figure(fake_root: Path, no_npm: Path) -> None:
    folder = fake_root / "results" / "cpu" / KEY  # fake_root wrote its results
    (folder / "numbers.json").write_text('{"gap": 0.1}')
    (folder / "table.csv").write_text("a,b\n1,2\n")
    (folder / "table.md").write_text("| a |\n")  # not offered: the page shows the table
    write_results(fake_root)  # seals the extra files too
    src = book.stage("cpu", fake_root)
    data = src / "notebooks" / "lee2020" / book.DATA_DIR / "kernels_vs_networks"
    assert sorted(p.name for p in data.iterdir()) == ["claim.json", "numbers.json", "table.csv"]
    assert (data / "numbers.json").read_text() == '{"gap": 0.1}'
    nb = json.loads((src / "notebooks" / f"{KEY}.ipynb").read_text())
    image = max(i for i, c in enumerate(nb["cells"]) if "outputs" in c and c["outputs"])
    cell = nb["cells"][image + 1]  # right after the figure
    assert cell["cell_type"] == "markdown"
    for name in ("claim.json", "numbers.json", "table.csv"):
        assert (
            f"{{download}}`{name} <{book.DATA_DIR}/kernels_vs_networks/{name}>`" in cell["source"]
        )
    assert "table.md" not in cell["source"]
    assert (src / book.VENDOR_DIR / "datatables" / "dataTables.min.js").is_file()


# ---------------------------------------------------------------------------- --only


def test_only_accepts_a_paper_for_its_whole_chapter() -> None:
    chapter = [k for k in FIGURES if k.startswith("lee2020/")]
    assert len(chapter) > 1
    assert cli._select(["lee2020"]) == chapter
    other = next(k for k in FIGURES if not k.startswith("lee2020/"))
    assert cli._select([other, "lee2020", chapter[0]]) == sorted({other, *chapter})
    assert cli._select(None) == FIGURES


def test_only_refuses_unknown_names_listing_the_known_ones(results_dir, capsys) -> None:
    for command in ("run", "list"):
        assert cli.main([command, "--profile", "smoke", "--only", "lee2020", "lee2021"]) == 2
        err = capsys.readouterr().err
        assert "unknown figure(s) or paper(s) lee2021" in err
        assert "papers: " in err and "lee2020" in err and "lee2020/width" in err
    assert not results_dir.exists(), "nothing may be written for bad input"


def test_list_takes_only(results_dir, capsys) -> None:
    assert cli.main(["list", "--profile", "smoke", "--only", "lee2020"]) == 0
    shown = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert shown == [k for k in FIGURES if k.startswith("lee2020/")]


def test_run_of_a_chapter_validates_every_figure_first(results_dir, capsys) -> None:
    # A parameter that no lee2020 figure defines: refused before any kernel starts.
    assert cli.main(["run", "--profile", "smoke", "--only", "lee2020", "-p", "nonsense=1"]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert not results_dir.exists()

"""Tests of the book build (ntkrepro.tooling.book, .status): TOC parsing, claim.json
validation (claims.schema_problems), staging, status page, links.

Every test works on a fake project root in tmp_path made from the real ``_config.yml`` and
``book/`` (the real root is the parent of tests/, or $NTKREPRO_ROOT) plus fake results, so
the tests never depend on, or write to, the real results/ folder. The one full build is
marked slow.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import htmlcheck
import pytest
import yaml

from ntkrepro import claims, config, results
from ntkrepro.tooling import book, status

ROOT = Path(os.environ.get("NTKREPRO_ROOT", Path(__file__).resolve().parents[1]))
KEY = "lee2020/kernels_vs_networks"
TITLE = "Finite networks vs NNGP/NTK kernels"


# ---------------------------------------------------------------------------- fakes


def _png(width: int = 48, height: int = 32) -> bytes:
    """A small RGB gradient PNG, written by hand so that the tests need no plotting library."""
    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 5 % 256, y * 8 % 256, 160)) for x in range(width))
        for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def fake_notebook(title: str = TITLE) -> dict:
    """An executed notebook as papermill leaves it: a markdown cell and a code cell with an
    image output."""
    image = base64.b64encode(_png()).decode()
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python", "pygments_lexer": "ipython3"},
            "papermill": {"exception": False, "parameters": {"profile": "cpu"}},
        },
        "cells": [
            {
                "cell_type": "markdown",
                "id": "title",
                "metadata": {},
                "source": f"# {title}\n\nThe empirical NTK $\\Theta(x, x')$ of a finite network.",
            },
            {
                "cell_type": "code",
                "id": "plot",
                "metadata": {},
                "execution_count": 1,
                "source": "plot_figure()",
                "outputs": [
                    {
                        "output_type": "display_data",
                        "metadata": {},
                        "data": {"image/png": image, "text/plain": "<Figure>"},
                    }
                ],
            },
        ],
    }


def fake_claim(profile: str = "cpu") -> dict:
    """A valid claim.json with two claims, one of them not reproduced."""
    return {
        "paper": "lee2020",
        "figure": "kernels_vs_networks",
        "title": TITLE,
        "profile": profile,
        "verdict": "partly reproduced",
        "claims": [
            {
                "id": "a",
                "paper_claim": "The widest network matches the NTK | at every n",
                "check": "max_n |acc_net(widest) - acc_NTK| <= 0.03",
                "measured": {"max_gap": 0.0123456, "widths": [64, 128, 256]},
                "threshold": 0.03,
                "interval": [0.008, 0.017],
                "interval_method": "t-interval over 5 seeds",
                "n": 5,
                "verdict": "reproduced",
            },
            {
                "id": "b",
                "paper_claim": "NNGP beats NTK *often* (costs $0)",
                "check": "mean(acc_NNGP - acc_NTK) > 0",
                "measured": {"mean_diff": -0.004},
                "threshold": 0,
                "interval": [-0.009, -0.001],
                "interval_method": "paired bootstrap over 1000 test examples (2000 resamples)",
                "n": 1000,
                "verdict": "not reproduced",
            },
        ],
        "scale": "MNIST, n_train 128-1024, widths 64-1024, 1 seed",
        "deviations": ["CIFAR-10 -> MNIST (not installable offline)"],
        "provenance": {
            "started": "2026-11-23T18:00:00+00:00",
            "runtime_s": 95.2,
            "device": "cpu",
            "versions": {"jax": "0.10.2"},
            "git_commit": "abc123",
            "git_dirty": False,
            "parameters": {"profile": profile, "widths": [64, 128, 256]},
        },
    }


def write_results(
    root: Path, profile: str = "cpu", claim: dict | None = None, notebook: dict | None = None
) -> Path:
    """Write the fake notebook, figure and claim of KEY under root/results/<profile>/ as a
    finished run leaves them: current (parameters and code of root's notebook) and sealed
    (checksums); return the folder."""
    folder = root / "results" / profile / KEY
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernels_vs_networks.ipynb").write_text(json.dumps(notebook or fake_notebook()))
    (folder / "figure.png").write_bytes(_png())
    claim = fake_claim(profile) if claim is None else claim
    prov = claim["provenance"]
    prov["parameters"] = config.resolve(KEY, claim["profile"], {}, root)
    prov["code_files"] = results.code_files(KEY, root, modules=["ntkrepro"])
    prov["code_hash"] = results.code_hash(KEY, root, modules=["ntkrepro"])
    claim["checksums"] = {p.name: results.sha256_file(p) for p in results.result_files(folder)}
    results.write_claim(folder, claim)
    return folder


def _only_figure(root: Path, key: str) -> None:
    """Drop every figure page but ``key`` from root's book (TOC entries and links), so that
    the fake project needs results for that figure only, whatever figures the book has."""

    def prune(node: object) -> None:
        if isinstance(node, dict):
            sections = node.get("sections")
            if isinstance(sections, list):
                node["sections"] = [
                    s
                    for s in sections
                    if not str(s.get("file", "")).startswith("notebooks/")
                    or s["file"] == f"notebooks/{key}"
                ]
                if not node["sections"]:
                    del node["sections"]
            for value in node.values():
                prune(value)
        elif isinstance(node, list):
            for value in node:
                prune(value)

    toc_path = root / "book" / "_toc.yml"
    toc = yaml.safe_load(toc_path.read_text())
    prune(toc)
    toc_path.write_text(yaml.safe_dump(toc, sort_keys=False))
    link = re.compile(r"\[([^\]]*)\]\(\.\./notebooks/(?!" + re.escape(key) + r"\.ipynb)[^)]*\)")
    # The {doc} role form: {doc}`/notebooks/<paper>/<figure>` or {doc}`text </notebooks/...>`.
    role = re.compile(
        r"\{doc\}`(?:([^`<]*?)\s*<)?/notebooks/(?!" + re.escape(key) + r"\b)([^`>]*)>?`"
    )
    for page in (root / "book").glob("*.md"):
        text = link.sub(r"\1", page.read_text())
        page.write_text(role.sub(lambda m: m.group(1) or m.group(2), text))


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A project root with the real _config.yml and book/ and fake cpu results for KEY."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy2(ROOT / "_config.yml", root / "_config.yml")
    ignore = shutil.ignore_patterns("_generated", "status.md")
    shutil.copytree(ROOT / "book", root / "book", ignore=ignore)
    # book/compat.md is written by someone else; the TOC needs the page to exist.
    if not (root / "book" / "compat.md").exists():
        (root / "book" / "compat.md").write_text("# Compatibility notes\n")
    _only_figure(root, KEY)
    # The notebook's source: staging checks that the results match its parameters and code.
    (root / "notebooks" / "lee2020").mkdir(parents=True)
    shutil.copy2(config.notebook_path(KEY, ROOT), root / "notebooks" / f"{KEY}.ipynb")
    write_results(root)
    return root


@pytest.fixture
def no_npm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Replace the npm installs of MathJax and DataTables by stub folders (fast, offline)."""
    es5 = tmp_path / "mathjax-es5"
    (es5 / "output" / "chtml" / "fonts").mkdir(parents=True)
    (es5 / "tex-chtml.js").write_text("/* stub */")
    (es5 / "tex-svg.js").write_text("/* not copied */")
    monkeypatch.setattr(book, "ensure_mathjax", lambda root: es5)
    modules = tmp_path / "datatables-modules"
    for package, path in book._DATATABLES_FILES:
        (modules / package / path).parent.mkdir(parents=True, exist_ok=True)
        (modules / package / path).write_text("/* stub */")
    monkeypatch.setattr(book, "ensure_datatables", lambda root: modules)
    return es5


# ---------------------------------------------------------------------------- TOC


def test_real_toc_lists_the_lee2020_figure_page() -> None:
    assert KEY in book.figures_in_toc(ROOT / "book" / "_toc.yml")


def test_figures_in_toc_finds_nested_entries_in_order(tmp_path: Path) -> None:
    toc = tmp_path / "_toc.yml"
    toc.write_text(
        "format: jb-book\nroot: book/intro\nparts:\n"
        "  - caption: A\n    chapters:\n"
        "      - file: book/b\n        sections:\n"
        "          - file: notebooks/b/two.ipynb\n"
        "          - file: notebooks/a/one\n"
        "      - file: book/c\n"
        "  - caption: B\n    chapters:\n      - file: notebooks/a/one\n"
    )
    assert book.figures_in_toc(toc) == ["b/two", "a/one"]
    assert book.toc_pages(toc)[:2] == ["book/intro", "book/b"]


def test_figures_in_toc_rejects_a_notebook_entry_without_figure(tmp_path: Path) -> None:
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: notebooks/lee2020\n")
    with pytest.raises(ValueError, match="notebooks/lee2020"):
        book.figures_in_toc(toc)


# ---------------------------------------------------------------------------- load_claim


def test_load_claim_returns_a_valid_claim(tmp_path: Path) -> None:
    path = tmp_path / "claim.json"
    path.write_text(json.dumps(fake_claim()))
    assert book.load_claim(path) == fake_claim()


def test_load_claim_rejects_invalid_json_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "claim.json"
    path.write_text('{"paper": "lee2020",')
    with pytest.raises(ValueError, match="not valid JSON") as err:
        book.load_claim(path)
    assert str(path) in str(err.value)


def test_load_claim_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        book.load_claim(tmp_path / "claim.json")


def _without(data: dict, dotted: str) -> dict:
    """A deep copy of ``data`` without the key at ``dotted`` ("claims.0.check")."""
    data = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    del node[last]
    return data


@pytest.mark.parametrize(
    ("dotted", "message"),
    [
        ("verdict", "missing key 'verdict'"),
        ("claims.0.check", "claims[0]: missing key 'check'"),
        ("claims.1.threshold", "claims[1]: missing key 'threshold'"),
        ("provenance.runtime_s", "provenance: missing key 'runtime_s'"),
        ("deviations", "missing key 'deviations'"),
    ],
)
def test_load_claim_names_a_missing_key(tmp_path: Path, dotted: str, message: str) -> None:
    path = tmp_path / "claim.json"
    path.write_text(json.dumps(_without(fake_claim(), dotted)))
    with pytest.raises(ValueError) as err:
        book.load_claim(path)
    assert str(path) in str(err.value)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"verdict": "maybe"}, "verdict 'maybe' is not one of"),
        ({"claims": []}, "'claims' is empty"),
        ({"deviations": "none"}, "'deviations' must be array"),
        ({"provenance": {**fake_claim()["provenance"], "runtime_s": "fast"}}, "runtime_s"),
        ({"provenance": {**fake_claim()["provenance"], "runtime_s": True}}, "runtime_s"),
        ({"provenance": {**fake_claim()["provenance"], "started": "yesterday"}}, "ISO 8601"),
        ({"claims": [{**fake_claim()["claims"][0], "measured": {}}]}, "'measured' is empty"),
        ({"claims": [fake_claim()["claims"][0]] * 2}, "not unique"),
    ],
)
def test_load_claim_rejects_wrong_values(tmp_path: Path, change: dict, message: str) -> None:
    path = tmp_path / "claim.json"
    path.write_text(json.dumps({**fake_claim(), **change}))
    with pytest.raises(ValueError, match="malformed claim.json") as err:
        book.load_claim(path)
    assert message in str(err.value)


def test_load_claim_reports_every_problem_at_once(tmp_path: Path) -> None:
    path = tmp_path / "claim.json"
    data = _without(_without(fake_claim(), "title"), "provenance.device")
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError) as err:
        book.load_claim(path)
    assert "'title'" in str(err.value) and "'device'" in str(err.value)


def test_schema_is_valid_and_speaks_the_verdicts_of_claims() -> None:
    import jsonschema

    schema = json.loads((Path(claims.__file__).with_name("claim.schema.json")).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert tuple(schema["$defs"]["verdict"]["enum"]) == claims.FIGURE_VERDICTS
    assert tuple(schema["$defs"]["check"]["properties"]["verdict"]["enum"]) == (
        claims.CHECK_VERDICTS
    )


def test_schema_accepts_the_new_check_fields_and_peak_memory() -> None:
    data = fake_claim()
    data["claims"][0].update(quantity="max_gap", op="<=", threshold_parameter="tolerance")
    data["provenance"]["peak_rss_mib"] = 812.5
    assert claims.schema_problems(data) == []
    data["claims"][0]["op"] = "=="
    assert claims.schema_problems(data) == [
        "claims[0]: op '==' is not one of ['<=', '<', '>=', '>']"
    ]


# ---------------------------------------------------------------------------- status page


def test_render_status_shows_claims_numbers_verdicts_and_links() -> None:
    text = status.render_status([fake_claim()], "cpu")
    assert text.startswith("# Reproduction status")
    assert f"[{status.md_text(TITLE)}](../notebooks/{KEY}.ipynb)" in text
    assert "{bdg-warning}`partly reproduced`" in text  # figure verdict
    assert "{bdg-success}`reproduced`" in text  # claim a
    assert "{bdg-danger}`not reproduced`" in text  # claim b
    assert "`max_gap` = 0.01235" in text  # 4 significant digits
    assert "`max_n |acc_net(widest) - acc_NTK| <= 0.03`" in text  # the check, verbatim
    assert "2026-11-23" in text and "1.59 min" in text and "device cpu" in text
    assert "profile `cpu`" in text
    # Counted over figures and over claim checks (a check is never "partly reproduced").
    assert "| {bdg-success}`reproduced` | 0 | 1 |" in text
    assert "| {bdg-warning}`partly reproduced` | 1 | \\- |" in text
    assert "| {bdg-danger}`not reproduced` | 0 | 1 |" in text
    assert "| {bdg-dark}`invalid at this scale` | 0 | 0 |" in text
    # Each check's value with its 95% interval and how the interval was made.
    assert "0\\.01235 \\[0.008, 0.017\\]" in text and "t-interval over 5 seeds" in text
    assert "\\-0.004 \\[-0.009, -0.001\\]" in text
    assert "paired bootstrap over 1000 test examples (2000 resamples)" in text
    assert status.md_text("CIFAR-10 -> MNIST (not installable offline)") in text
    assert '"widths": [' in text  # parameters of the run


def test_render_status_says_what_each_outcome_means_once() -> None:
    text = status.render_status([fake_claim()], "cpu")
    for verdict in claims.VERDICTS:
        assert text.count(status.md_text(claims.MEANINGS[verdict])) == 1, verdict
    assert status.md_text(claims.MEANINGS[claims.METHOD_PASSED]) in text


def test_badges_cover_every_outcome_in_distinct_colours() -> None:
    outcomes = (*claims.FIGURE_VERDICTS, *claims.CHECK_VERDICTS, claims.PASSED, claims.FAILED)
    assert set(outcomes) <= set(status.BADGES)
    verdicts = [status.BADGES[v] for v in claims.VERDICTS]
    assert len(set(verdicts)) == len(verdicts)
    assert status.BADGES[claims.REPRODUCED] == "bdg-success"
    assert status.BADGES[claims.NOT_REPRODUCED] == "bdg-danger"
    assert status.BADGES[claims.PARTLY] == "bdg-warning"
    # Gates and method checks are not claims: outlined, never a filled "reproduced" badge.
    assert status.BADGES[claims.PASSED] != status.BADGES[claims.REPRODUCED]


def _gated_claim() -> dict:
    """fake_claim with one failed gate on check (a), a passed gate on all, a method check."""
    fit = claims.gate(
        "fit", "the network fits its training set (the paper: 100% train accuracy)",
        "min_train_acc", 0.912, ">=", 0.99, threshold_parameter="train_acc_min",
        applies_to=["a"],
    )  # fmt: skip
    finite = claims.gate("finite", "training did not diverge", "max_loss", 0.3, "<", 1e6)
    identity = claims.method_check(
        "m", "the linearized update equals a Gauss-Newton step", "max_rel_error", 3.2e-7,
        "<=", 1e-5, threshold_parameter="identity_tol",
    )  # fmt: skip
    data = fake_claim()
    data["gates"], data["method_checks"] = [fit, finite], [identity]
    data["claims"] = claims.apply_gates(data["claims"], data["gates"])
    data["verdict"] = claims.overall(data["claims"], data["method_checks"])
    assert claims.schema_problems(data) == []
    return data


def _outcome_row(text: str, outcome: str) -> list[str]:
    """The cells of the outcomes table's row for ``outcome``."""
    row = next(ln for ln in text.splitlines() if ln.startswith(f"| {status._badge(outcome)} |"))
    return [c.strip() for c in row.strip("|").split(" | ")]


def test_status_shows_a_failed_gate_as_invalid_with_its_number() -> None:
    data = _gated_claim()
    checks = {c["id"]: c for c in data["claims"]}
    assert checks["a"]["verdict"] == claims.INVALID  # its interval alone: reproduced
    data["claims"] = [checks["a"]]  # only the gated check: the figure is invalid
    data["verdict"] = claims.overall(data["claims"], data["method_checks"])
    assert data["verdict"] == claims.INVALID
    text = status.render_status([data], "cpu")
    assert f"Verdict: {{bdg-dark}}`{claims.INVALID}`." in text  # the figure's verdict
    assert _outcome_row(text, claims.INVALID)[1:3] == ["1", "1"]
    assert _outcome_row(text, claims.REPRODUCED)[1:3] == ["0", "0"]
    # The failed gate with the number it measured and the bound it missed.
    assert "gate fit failed: `min_train_acc` = 0.912 (needs \\>\\= 0.99)" in text
    assert "interval alone: reproduced" in text
    assert "{bdg-danger-line}`failed`" in text and "{bdg-success-line}`passed`" in text
    assert (
        status.md_text("the network fits its training set (the paper: 100% train accuracy)") in text
    )
    assert "applies to (a)" in text and "applies to all claim checks" in text


def test_status_counts_method_checks_apart_never_as_reproduced() -> None:
    gated = _gated_claim()  # claim checks: (a) invalid, (b) not reproduced; one method check
    method_only = copy.deepcopy(gated)
    method_only["figure"], method_only["title"] = "scaling", "How the kernels scale"
    method_only["claims"], method_only["gates"] = [], []
    method_only["verdict"] = claims.overall([], method_only["method_checks"])
    assert claims.schema_problems(method_only) == []
    text = status.render_status([gated, method_only], "cpu")
    assert "2 figure(s): 1 with claim checks (2 checks), 1 with method checks only." in text
    # Passed method checks are not reproduced claims, and their figures are not counted there.
    assert _outcome_row(text, claims.REPRODUCED)[1:3] == ["0", "0"]
    assert sum(int(_outcome_row(text, v)[1]) for v in claims.VERDICTS) == 1
    assert "| Method checks (in 2 figure(s)) | 2 | 0 |" in text
    assert "| Figures with method checks only | 1 | 0 |" in text
    assert "| Validity gates (in 1 figure(s)) | 1 | 1 |" in text
    assert "### Method checks" in text and "max\\_rel\\_error \\<\\= identity\\_tol" in text
    assert f"{{bdg-success-line}}`{claims.METHOD_PASSED}`" in text
    assert "reproduces no claim of a paper: its checks are method checks" in text
    # The checks table lists claim checks only; the method checks have their own table.
    table = text[text.index("## Checks") : text.index("### Method checks")]
    assert "(m)" not in table and "identity" not in table


def test_render_status_escapes_markdown_in_claim_text() -> None:
    text = status.render_status([fake_claim()], "cpu")
    # A raw "|" would split a table cell; "*" and "$" would become emphasis and math.
    assert "NTK \\| at every n" in text
    assert "\\*often\\* (costs \\$0)" in text


def test_render_status_without_figures_says_so() -> None:
    text = status.render_status([], "paper")
    assert "No figure has been reproduced yet" in text
    assert "`paper`" in text


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a|b", "a\\|b"),
        ("1. first", "1\\. first"),
        ("- item", "\\- item"),
        ("x_1 * y", "x\\_1 \\* y"),
        ("two\nlines", "two lines"),
    ],
)
def test_md_text_escapes(raw: str, escaped: str) -> None:
    assert status.md_text(raw) == escaped


def test_md_code_survives_backticks() -> None:
    assert status.md_code("a`b") == "``a`b``"


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.0123456, "0.01235"), (3, "3"), (True, "true"), ([1, 2, 3, 4, 5, 6, 7], "... (7 values)")],
)
def test_format_value(value: object, text: str) -> None:
    assert text in status.format_value(value)


def test_format_runtime() -> None:
    assert status.format_runtime(12.0) == "12 s"
    assert status.format_runtime(95.2) == "1.59 min"
    assert status.format_runtime(7200) == "2 h"


# ---------------------------------------------------------------------------- staging


def test_stage_fails_naming_the_missing_figure_and_the_command(fake_root: Path) -> None:
    shutil.rmtree(fake_root / "results")
    with pytest.raises(book.StagingError) as err:
        book.stage("cpu", fake_root)
    message = str(err.value)
    assert f"notebooks/{KEY}" in message
    assert f"ntkrepro run --profile cpu --only {KEY}" in message


def test_stage_fails_on_a_malformed_claim(fake_root: Path) -> None:
    folder = fake_root / "results" / "cpu" / KEY
    (folder / "claim.json").write_text(json.dumps(_without(fake_claim(), "claims.0.verdict")))
    with pytest.raises(book.StagingError) as err:
        book.stage("cpu", fake_root)
    assert str(folder / "claim.json") in str(err.value)
    assert "claims[0]: missing key 'verdict'" in str(err.value)
    assert f"ntkrepro run --profile cpu --only {KEY}" in str(err.value)


def test_stage_fails_on_a_claim_of_another_profile(fake_root: Path) -> None:
    write_results(fake_root, "cpu", claim=fake_claim("smoke"))
    with pytest.raises(book.StagingError, match="profile is 'smoke', expected 'cpu'"):
        book.stage("cpu", fake_root)


def test_stage_fails_on_a_notebook_that_raised(fake_root: Path) -> None:
    notebook = fake_root / "results" / "cpu" / KEY / "kernels_vs_networks.ipynb"
    nb = fake_notebook()
    nb["cells"][1]["outputs"].append({"output_type": "error", "ename": "ValueError"})
    notebook.write_text(json.dumps(nb))
    with pytest.raises(book.StagingError, match="error output"):
        book.stage("cpu", fake_root)


def test_stage_accepts_an_error_tagged_raises_exception(fake_root: Path, no_npm: Path) -> None:
    nb = fake_notebook()
    nb["cells"][1]["outputs"].append({"output_type": "error", "ename": "ValueError"})
    nb["cells"][1]["metadata"]["tags"] = ["raises-exception"]
    write_results(fake_root, notebook=nb)
    assert (book.stage("cpu", fake_root) / "notebooks" / f"{KEY}.ipynb").is_file()


@pytest.mark.parametrize("name", ["figure.png", "kernels_vs_networks.ipynb"])
def test_stage_fails_on_a_result_file_changed_after_the_run(fake_root: Path, name: str) -> None:
    path = fake_root / "results" / "cpu" / KEY / name
    if name.endswith(".png"):
        path.write_bytes(path.read_bytes()[:-10])  # truncated
    else:
        path.write_text(path.read_text().replace("finite network", "infinite network"))
    with pytest.raises(book.StagingError) as err:
        book.stage("cpu", fake_root)
    message = str(err.value)
    assert f"page notebooks/{KEY}: results are corrupt" in message and name in message
    assert f"ntkrepro run --profile cpu --only {KEY}" in message


def test_stage_fails_on_an_edited_claim(fake_root: Path) -> None:
    path = fake_root / "results" / "cpu" / KEY / "claim.json"
    path.write_text(path.read_text().replace("0.0123456", "0.0023456"))  # still valid JSON
    with pytest.raises(book.StagingError, match="changed after the run wrote it"):
        book.stage("cpu", fake_root)


def _edit_notebook_code(root: Path) -> None:
    """Change a code cell of the figure's source notebook (its results become stale)."""
    path = root / "notebooks" / f"{KEY}.ipynb"
    nb = json.loads(path.read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code" and c["source"])
    code["source"] = ["# edited\n", *code["source"]]
    path.write_text(json.dumps(nb))


def test_stage_fails_on_stale_results_naming_the_page(fake_root: Path) -> None:
    _edit_notebook_code(fake_root)
    with pytest.raises(book.StagingError) as err:
        book.stage("cpu", fake_root)
    message = str(err.value)
    assert f"page notebooks/{KEY}: results are stale: code changed" in message
    assert f"notebooks/{KEY}.ipynb" in message
    assert f"ntkrepro run --profile cpu --only {KEY}" in message


def test_stage_with_allow_stale_flags_them_on_the_status_page(
    fake_root: Path, no_npm: Path
) -> None:
    _edit_notebook_code(fake_root)
    status = (book.stage("cpu", fake_root, allow_stale=True) / "book" / "status.md").read_text()
    assert "{bdg-warning}`STALE`" in status and "code changed since the run" in status
    assert f"ntkrepro run --profile cpu --only {KEY}" in status


def test_stage_reads_results_from_another_folder(fake_root: Path, no_npm: Path) -> None:
    elsewhere = fake_root.parent / "elsewhere"
    shutil.move(fake_root / "results", elsewhere)
    with pytest.raises(book.StagingError):
        book.stage("cpu", fake_root)
    assert book.stage("cpu", fake_root, results=elsewhere).is_dir()


def test_status_page_shows_each_figure_image_profile_device_and_date(
    fake_root: Path, no_npm: Path
) -> None:
    src = book.stage("cpu", fake_root)
    status = (src / "book" / "status.md").read_text()
    image = f"{book.FIGURES_DIR}/{KEY.replace('/', '-')}.png"
    assert f"]({image})" in status and (src / "book" / image).read_bytes() == _png()
    assert "profile `cpu`" in status and "device cpu" in status and "date 2026-11-23" in status
    assert "STALE" not in status


def test_stage_fails_on_a_missing_chapter_page(fake_root: Path) -> None:
    (fake_root / "book" / "ortiz2021.md").unlink()
    with pytest.raises(book.StagingError, match="book/ortiz2021"):
        book.stage("cpu", fake_root)


def test_stage_rejects_a_profile_name_with_a_path(fake_root: Path) -> None:
    with pytest.raises(ValueError, match="invalid profile"):
        book.stage("../cpu", fake_root)


def test_stage_hides_papermills_injected_parameters(fake_root: Path, no_npm: Path) -> None:
    nb = fake_notebook()
    injected = {"cell_type": "code", "id": "inj", "execution_count": 1, "outputs": []}
    injected |= {"metadata": {"tags": ["injected-parameters"]}, "source": "# Parameters\np = 1\n"}
    nb["cells"].insert(1, injected)
    write_results(fake_root, notebook=nb)
    staged = json.loads((book.stage("cpu", fake_root) / "notebooks" / f"{KEY}.ipynb").read_text())
    tags = [c["metadata"].get("tags", []) for c in staged["cells"]]
    assert tags[1] == ["injected-parameters", "remove-cell"]
    assert all("remove-cell" not in t for i, t in enumerate(tags) if i != 1)


def test_stage_lays_out_the_book(fake_root: Path, no_npm: Path) -> None:
    stale = book.staging_dir("cpu", fake_root) / "book" / "stale.md"
    stale.parent.mkdir(parents=True)
    stale.write_text("# left over from an earlier staging\n")

    src = book.stage("cpu", fake_root)

    assert src == book.staging_dir("cpu", fake_root.resolve())
    assert (src / "_config.yml").read_text() == (fake_root / "_config.yml").read_text()
    assert (src / "book" / "_toc.yml").is_file()
    staged_nb = json.loads((src / "notebooks" / f"{KEY}.ipynb").read_text())
    assert staged_nb["cells"][0]["source"].startswith(f"# {TITLE}")
    assert "partly reproduced" in (src / "book" / "status.md").read_text()
    assert (src / book.VENDOR_DIR / "mathjax" / "tex-chtml.js").is_file()
    assert not (src / book.VENDOR_DIR / "mathjax" / "tex-svg.js").exists()
    # A top-level _static would make Jupyter Book load every MathJax file on every page.
    assert not (src / "_static").exists()
    assert not stale.exists()


def test_config_serves_mathjax_from_the_vendor_folder() -> None:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    sphinx = config["sphinx"]["config"]
    assert sphinx["mathjax_path"] == "mathjax/tex-chtml.js"
    assert sphinx["html_static_path"] == [book.VENDOR_DIR]
    assert config["execute"]["execute_notebooks"] == "off"
    assert "dollarmath" in config["parse"]["myst_enable_extensions"]


def test_build_command_treats_warnings_as_errors(tmp_path: Path) -> None:
    cmd = book.build_command("cpu", tmp_path)
    src = book.staging_dir("cpu", tmp_path.resolve())
    assert cmd[1:3] == ["build", str(src)]
    assert "-W" in cmd and "--keep-going" in cmd
    assert cmd[cmd.index("--toc") + 1] == str(src / "book" / "_toc.yml")
    assert cmd[cmd.index("--path-output") + 1] == str(tmp_path.resolve() / "_build" / "cpu")


# ---------------------------------------------------------------------------- HTML checks


def _write(path: Path, html: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!DOCTYPE html><html><body>{html}</body></html>")


def test_check_links_finds_broken_files_and_anchors(tmp_path: Path) -> None:
    site = tmp_path / "html"
    _write(
        site / "index.html",
        '<h1 id="top">Top</h1>'
        '<a href="#top">ok: own anchor</a>'
        '<a href="#nowhere">broken: own anchor</a>'
        '<a href="book/page.html#sec">ok: anchor</a>'
        '<a href="book/page.html#gone">broken: anchor</a>'
        '<a href="book/missing.html">broken: file</a>'
        '<a href="book/">ok: folder with index.html</a>'
        '<img src="_images/missing.png">'
        '<a href="../outside.html">broken: leaves the site</a>'
        '<a href="/book/page.html">broken: root-relative</a>'
        '<a href="https://example.org/x.html#y">external</a>'
        '<a href="mailto:a@b.c">mail</a><a href="#">top</a>',
    )
    _write(site / "book" / "page.html", '<section id="sec"><a name="old"></a></section>')
    _write(site / "book" / "index.html", '<a href="page.html#old">ok: a[name]</a>')
    (tmp_path / "outside.html").write_text("<html></html>")

    broken = book.check_links(site)

    assert len(broken) == 6, broken
    text = "\n".join(broken)
    for fragment in ("#nowhere", "#gone", "book/missing.html", "_images/missing.png"):
        assert fragment in text
    assert "outside" in text and "root-relative" in text
    assert all(line.startswith("index.html: ") for line in broken)


def test_check_links_accepts_a_clean_site(tmp_path: Path) -> None:
    site = tmp_path / "html"
    _write(site / "index.html", '<a href="a.html#x">a</a><img src="img/p.png">')
    _write(site / "a.html", '<p id="x"><a href="index.html">back</a></p>')
    (site / "img").mkdir()
    (site / "img" / "p.png").write_bytes(_png())
    # Theme template fragments under _static are not pages and are not checked.
    _write(site / "_static" / "webpack-macros.html", "<script src=\"{{ pathto('x.js') }}\">")
    assert book.check_links(site) == []


def test_remote_scripts_finds_a_cdn_mathjax(tmp_path: Path) -> None:
    site = tmp_path / "html"
    cdn = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"
    _write(site / "a.html", f'<script src="{cdn}"></script><script src="_static/x.js"></script>')
    assert book.remote_scripts(site) == [f"a.html: {cdn}"]


def test_screenshot_without_chromium_says_how_to_install(tmp_path: Path) -> None:
    page = tmp_path / "a.html"
    page.write_text("<html></html>")
    with pytest.raises(RuntimeError, match="apt-get install chromium"):
        htmlcheck.screenshot(page, tmp_path / "a.png", chromium=tmp_path / "no-chromium")


# ---------------------------------------------------------------------------- full build


@pytest.mark.slow
def test_full_build_of_a_fake_book(fake_root: Path) -> None:
    try:
        es5 = book.ensure_mathjax(ROOT)  # installs into the real _build/npm once
    except RuntimeError as err:
        pytest.skip(f"MathJax not available offline: {err}")
    npm = fake_root / "_build" / "npm" / "node_modules" / "mathjax"
    npm.parent.mkdir(parents=True)
    npm.symlink_to(es5.parent, target_is_directory=True)

    html = book.build("cpu", fake_root)

    assert html == book.html_dir("cpu", fake_root.resolve())
    assert (html / "index.html").is_file()
    status = (html / "book" / "status.html").read_text()
    assert "partly reproduced" in status and "not reproduced" in status
    assert "The widest network matches the NTK | at every n" in status
    assert f'href="../notebooks/{KEY}.html"' in status
    page = (html / "notebooks" / f"{KEY}.html").read_text()
    assert TITLE in page and "<img" in page
    intro = (html / "book" / "intro.html").read_text()
    assert "_static/mathjax/tex-chtml.js" in intro
    assert "cdn.jsdelivr" not in intro
    assert (html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert book.check_links(html) == []
    assert book.remote_scripts(html) == []
    try:
        dom = htmlcheck.rendered_dom(html / "book" / "intro.html")
    except RuntimeError as err:  # no Chromium here: the static checks above still hold
        pytest.skip(f"cannot check rendering: {err}")
    assert "<mjx-container" in dom  # MathJax typeset the formulas, offline
    assert "<mjx-merror" not in dom


def test_stage_includes_the_benchmark_tables_or_says_how_to_make_them(
    fake_root: Path, no_npm: Path
) -> None:
    write_results(fake_root)
    page = book.stage("cpu", fake_root) / "book" / "_generated" / "benchmarks.md"
    assert "run `make bench`" in page.read_text()
    bench = fake_root / "results" / "bench"
    bench.mkdir(parents=True)
    (bench / "summary.md").write_text("| case | ours (s) |\n|---|---|\n| mlp n=1000 | 0.2 |\n")
    page = book.stage("cpu", fake_root) / "book" / "_generated" / "benchmarks.md"
    assert page.read_text() == (bench / "summary.md").read_text()

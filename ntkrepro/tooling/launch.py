"""Launching the book's notebooks elsewhere: the repository URL, the Colab cell, Binder.

The repository URL lives only in ``[project.urls] Repository`` of pyproject.toml (a fork
changes that line). ``python -m ntkrepro.tooling.launch sync`` puts the Colab cell into
every notebook; ``... binder`` writes binder/requirements.txt from constraints.txt.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from ntkrepro import config

#: Tag of the Colab cell (besides ``remove-cell``): how :func:`ensure_colab_cell` finds it.
COLAB_TAG = "colab-setup"
COLAB_TAGS = [COLAB_TAG, "remove-cell"]
COLAB_HEADER = "# Colab, or any Python without ntkrepro: install it. Elsewhere: does nothing."
BINDER_HEADER = (
    "# Generated from constraints.txt by `make binder` (python -m ntkrepro.tooling.launch "
    "binder): do not edit.\n# Binder (repo2docker) installs this file, then runs "
    "binder/postBuild.\n"
)


def repository_url(root: Path | None = None) -> str:
    """``[project.urls] Repository`` of ``<root>/pyproject.toml``, without a trailing slash."""
    path = Path(root or config.repo_root()) / "pyproject.toml"
    with open(path, "rb") as f:
        urls = tomllib.load(f).get("project", {}).get("urls", {})
    url = str(urls.get("Repository", "")).rstrip("/")
    if not re.match(r"^https://[^\s/]+/[^\s]+$", url):
        raise ValueError(f"{path}: [project.urls] Repository must be an https:// URL, not {url!r}")
    return url


def nodeps_packages(root: Path | None = None) -> list[str]:
    """The Makefile's ``NODEPS`` (installed with ``pip install --no-deps``)."""
    path = Path(root or config.repo_root()) / "Makefile"
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"^NODEPS\s*:?=\s*(.+)$", line):
            return m.group(1).split()
    raise ValueError(f"{path} has no NODEPS line")


def colab_cell(url: str, nodeps: Sequence[str] | None = None) -> str:
    """Every figure notebook's first code cell: where ntkrepro does not import, install it."""
    nodeps = list(nodeps if nodeps is not None else nodeps_packages())
    pins = ", ".join(json.dumps(p) for p in nodeps)
    lines = [
        COLAB_HEADER,
        "try:",
        "    import ntkrepro",
        "except ImportError:",
        "    import os",
        "    import subprocess",
        "    import sys",
        "",
        '    _src = os.path.expanduser("~/ntkrepro")',
        "    if not os.path.isdir(_src):",
        f"        _url = {json.dumps(url)}",
        '        subprocess.run(["git", "clone", "--depth", "1", _url, _src], check=True)',
        '    _pip = [sys.executable, "-m", "pip", "install", "-q"]',
        f"    _nodeps = [{pins}]",
        '    subprocess.run([*_pip, "--no-deps", *_nodeps], check=True)',
        '    subprocess.run([*_pip, "-e", _src], check=True)',
        "    sys.path.insert(0, _src)",  # an editable install is seen by new processes only
        '    os.environ["NTKREPRO_ROOT"] = _src',
        "    import ntkrepro  # noqa: F401",
    ]
    return "\n".join(lines)


def is_colab_cell(cell: dict) -> bool:
    return cell.get("cell_type") == "code" and COLAB_TAG in cell.get("metadata", {}).get("tags", [])


def ensure_colab_cell(nb_path: Path, url: str, nodeps: Sequence[str] | None = None) -> bool:
    """Make the Colab cell of ``url`` the first code cell of ``nb_path``; return if it changed."""
    nb_path = Path(nb_path)
    text = nb_path.read_text(encoding="utf-8")
    nb = json.loads(text)
    cells = [c for c in nb["cells"] if not is_colab_cell(c)]
    old = next((c for c in nb["cells"] if is_colab_cell(c)), None)
    cell = {
        "cell_type": "code",
        "execution_count": None,
        "id": (old or {}).get("id", "colab-setup"),
        "metadata": {"tags": list(COLAB_TAGS)},
        "outputs": [],
        "source": colab_cell(url, nodeps).splitlines(keepends=True),  # as nbformat writes it
    }
    if nb.get("nbformat", 4) == 4 and nb.get("nbformat_minor", 0) < 5:
        del cell["id"]  # cell ids came with nbformat 4.5
    first_code = next((i for i, c in enumerate(cells) if c.get("cell_type") == "code"), len(cells))
    nb["cells"] = [*cells[:first_code], cell, *cells[first_code:]]
    new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if new != text:
        nb_path.write_text(new, encoding="utf-8")
    return new != text


def first_code_cells(nb: dict) -> list[dict]:
    """The code cells of a notebook after the Colab cell (what the notebook computes)."""
    return [c for c in nb["cells"] if c.get("cell_type") == "code" and not is_colab_cell(c)]


def sync_notebooks(root: Path | None = None) -> list[Path]:
    """Insert or update the Colab cell in every figure notebook; return those that changed."""
    root = Path(root or config.repo_root())
    url, nodeps = repository_url(root), nodeps_packages(root)
    paths = [config.notebook_path(key, root) for key in config.figures(root)]
    return [path for path in paths if ensure_colab_cell(path, url, nodeps)]


def constraint_pins(path: Path) -> list[str]:
    """The ``name==version`` lines of a constraints file, in order (no comments)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def binder_requirements(root: Path | None = None) -> str:
    """The text of ``binder/requirements.txt``: every pin of constraints.txt."""
    root = Path(root or config.repo_root())
    return BINDER_HEADER + "\n".join(constraint_pins(root / "constraints.txt")) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ntkrepro.tooling.launch")
    ap.add_argument("what", choices=["sync", "binder"])
    args = ap.parse_args(argv)
    root = config.repo_root()
    if args.what == "sync":
        changed = sync_notebooks(root)
        for path in changed:
            print(f"updated {path.relative_to(root)}")
        print(f"{len(changed)} notebook(s) changed; Colab cell URL {repository_url(root)}")
    else:
        target = root / "binder" / "requirements.txt"
        target.write_text(binder_requirements(root), encoding="utf-8")
        print(f"wrote {target.relative_to(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A real, non-editable install: the wheel carries the package data (profiles, the claim
schema) and the tooling, and runs a figure notebook from a copy of the project.

The wheel is built offline (``--no-build-isolation``: setuptools >= 77 of this environment,
from the dev extra) from a copy of the sources, and installed into a fresh venv that sees
this environment's dependencies through a ``.pth`` line, but not its editable ntkrepro:
the editable install is wired by ``__editable__*.pth`` files, and ``.pth`` files in a
folder added by a ``.pth`` line are not processed.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEY = "lee2020/kernels_vs_networks"


def _run(*cmd: str | Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw
    )
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the ntkrepro wheel installed; returns its bin/ folder."""
    setuptools = importlib.metadata.version("setuptools")
    if int(setuptools.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools} < 77 (pip install -e '.[dev]' brings it)")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # an in-tree build would write build/ into the checkout
    shutil.copytree(
        ROOT / "ntkrepro", src / "ntkrepro", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp / "dist", src)
    (wheel,) = (tmp / "dist").glob("ntkrepro-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("profiles.toml", "claim.schema.json", "tooling/cli.py", "tooling/book.py"):
        assert f"ntkrepro/{name}" in names, f"{wheel.name} lacks ntkrepro/{name}"
    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    site = _run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    deps = sysconfig.get_paths()["purelib"]  # this environment's, for the dependencies
    (Path(site.stdout.strip()) / "ntkrepro-test-deps.pth").write_text(deps + "\n")
    _run(py, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel)
    return venv / "bin"


def _env(project: Path, results: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k == "NTKREPRO_DATA" or "NTKREPRO_" not in k}
    return {**keep, "NTKREPRO_ROOT": str(project), "NTKREPRO_RESULTS": str(results)}


@pytest.mark.slow
def test_wheel_imports_from_the_venv_with_its_profiles_and_schema(installed, tmp_path):
    code = (
        "import ntkrepro, ntkrepro.config as c, ntkrepro.claims as k; "
        "print(ntkrepro.__file__); print(len(c.load_profiles())); print(k.schema_problems({}))"
    )
    out = _run(installed / "python", "-c", code, cwd=tmp_path).stdout.splitlines()
    assert Path(out[0]).is_relative_to(installed.parent), out[0]
    assert int(out[1]) > 0  # profiles.toml is there
    assert "missing key 'paper'" in out[2]  # claim.schema.json is there


@pytest.mark.slow
def test_wheel_lists_and_runs_a_smoke_notebook(installed, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "notebooks", project / "notebooks")
    env = _env(project, tmp_path / "results")
    listing = _run(installed / "ntkrepro", "list", "--profile", "smoke", env=env, cwd=tmp_path)
    assert KEY in listing.stdout and "missing" in listing.stdout
    cmd = [installed / "ntkrepro", "run", "--profile", "smoke", "--only", KEY]
    _run(*cmd, env=env, cwd=tmp_path, timeout=900)
    folder = tmp_path / "results" / "smoke" / KEY
    assert (folder / "claim.json").is_file() and (folder / "kernels_vs_networks.ipynb").is_file()
    listing = _run(installed / "ntkrepro", "list", "--profile", "smoke", env=env, cwd=tmp_path)
    assert any(line.startswith(KEY) and " current " in line for line in listing.stdout.splitlines())

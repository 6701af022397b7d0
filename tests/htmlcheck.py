"""Headless-Chromium checks of built book pages, used by the tests only: a screenshot, the
DOM after scripts ran (e.g. MathJax's mjx-container) and whether a screenshot shows a
rendered page."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

_CHROMIUM_FLAGS = (
    *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
    *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
    "--hide-scrollbars",
)


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
        f"Chromium not found (looked for {', '.join(candidates)}); "
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
    """Screenshot ``html_file`` into ``png`` (``wait_ms`` of virtual time let MathJax
    typeset first); return ``png``. Raises RuntimeError without Chromium."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    args = [f"--window-size={width},{height}", f"--virtual-time-budget={wait_ms}"]
    _run_chromium(
        [*args, f"--screenshot={png}", Path(html_file).resolve().as_uri()], chromium, timeout
    )
    if not png.is_file():
        raise RuntimeError(f"chromium did not write {png}")
    return png


def rendered_dom(
    html_file: Path, *, chromium: str | Path | None = None, wait_ms: int = 10000
) -> str:
    """The DOM of ``html_file`` after its scripts ran."""
    args = [f"--virtual-time-budget={wait_ms}", "--dump-dom", Path(html_file).resolve().as_uri()]
    return _run_chromium(args, chromium, timeout=120)


def screenshot_problems(png: Path, *, min_ink: float = 0.02, min_colors: int = 200) -> list[str]:
    """Why a screenshot does not show a rendered page (empty if it does).

    A page that failed to render is blank or nearly so; text alone gives a few hundred grey
    levels at most, so figures (antialiased colour plots) show as many distinct colours.
    ``min_ink``: the least fraction of non-white pixels; ``min_colors``: the least number
    of distinct non-grey colours.
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


def linkchecker_problems(html: Path, *, timeout: float = 600) -> list[str]:
    """LinkChecker's errors and warnings (broken files, missing anchors) for a built HTML
    folder, crawled from its index.html, offline (only links inside the folder are
    followed; http(s) links are not fetched), as "url (from parent): message".

    LinkChecker drops root's privileges to ``nobody``, who cannot read a 0700 folder such as
    pytest's tmp_path; it runs here in a child Python with that step skipped.

    Raises:
        RuntimeError: if LinkChecker is not installed (it is in the dev extra).
    """
    import csv
    import io
    import sys

    html = Path(html).resolve()
    code = (
        "import sys\n"
        "import linkcheck.command.linkchecker as lc\n"
        "lc.drop_privileges = lambda: None\n"
        "sys.argv = ['linkchecker', *sys.argv[1:]]\n"
        "sys.exit(lc.linkchecker())\n"
    )
    with tempfile.TemporaryDirectory(prefix="ntkrepro-linkchecker-") as tmp:
        rc = Path(tmp) / "linkcheckerrc"
        rc.write_text("[AnchorCheck]\n", encoding="utf-8")  # anchors are checked too
        args = ["--no-status", "--no-robots", "-f", str(rc), "-o", "csv"]
        args += ["--ignore-url", "^mailto:", str(html / "index.html")]
        env = {**os.environ, "HOME": tmp}  # no user configuration of LinkChecker
        proc = subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )
    if "No module named 'linkcheck" in proc.stderr:
        raise RuntimeError("LinkChecker is not installed: pip install -e '.[dev]'")
    rows = [ln for ln in proc.stdout.splitlines() if ln and not ln.startswith("#")]
    if not rows or proc.returncode not in (0, 1):
        raise RuntimeError(f"linkchecker failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    problems = []
    for row in csv.DictReader(io.StringIO("\n".join(rows)), delimiter=";"):
        if row["valid"] != "True" or row["warningstring"]:
            why = row["result"] if row["valid"] != "True" else row["warningstring"]
            problems.append(f"{row['urlname']} (from {row['parentname']}): {why}")
    return problems

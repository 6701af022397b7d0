"""The results folder of one figure run: writing, provenance and integrity.

:func:`start` turns a notebook's globals into a :class:`Run` (parameters from
:mod:`ntkrepro.config`). A run writes into ``<folder>.partial`` and :meth:`Run.finish`
swaps it into ``results/<profile>/<paper>/<figure>/`` with ``claim.json``: the checks,
the provenance and the SHA-256 of every other file, so that :func:`result_state` can tell
current results from stale, missing or corrupt ones.
"""

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ntkrepro.config import (
    CLAIM_FILE,
    PROFILES,
    ParameterError,
    Params,
    explicit_parameters,
    notebook_defaults,
    notebook_path,
    paper_deviations,
    repo_root,
    resolve,
    results_root,
    scale_line,
    seed_int,
    seed_key,
)
from ntkrepro.files import (
    atomic_write,
    json_bytes,
    jsonable,
    npz_bytes,
    sha256_bytes,
    sha256_file,
)
from ntkrepro.memory import device_name, peak_rss_mib


def _package_dir() -> Path:
    return Path(__file__).resolve().parent


def loaded_modules() -> list[str]:
    """The ntkrepro modules imported by this process (the code a run actually used)."""
    return sorted(
        name
        for name, module in list(sys.modules.items())
        if (name == "ntkrepro" or name.startswith("ntkrepro."))
        and Path(getattr(module, "__file__", None) or "/").resolve().parent == _package_dir()
    )


def _module_file(module: str) -> Path:
    """``ntkrepro/<name>.py`` of module ``ntkrepro.<name>`` (``__init__.py`` for the package)."""
    name = module.split(".", 1)[1] if "." in module else "__init__"
    return _package_dir() / f"{name}.py"


def code_files(
    key: str, root: Path | None = None, modules: Sequence[str] | None = None
) -> dict[str, str]:
    """SHA-256 of each source a figure's numbers depend on.

    ``notebooks/<key>.ipynb`` counts by its code cells only (outputs and markdown do not
    change numbers); ``ntkrepro/<name>.py`` by its bytes, for the ``modules`` given
    (default: every module of the package). The profile file does not count: its effect
    is in the parameters, which are compared separately.
    """
    nb = json.loads(notebook_path(key, root).read_text())
    cells = "".join(
        "".join(c["source"]) + "\n\x00" for c in nb["cells"] if c["cell_type"] == "code"
    )
    files = {f"notebooks/{key}.ipynb": sha256_bytes(cells.encode())}
    paths = (
        sorted(_package_dir().glob("*.py"))
        if modules is None
        else [_module_file(m) for m in modules]
    )
    for path in paths:
        data = path.read_bytes() if path.is_file() else b"<missing>"
        files[f"ntkrepro/{path.name}"] = sha256_bytes(data)
    return dict(sorted(files.items()))


def code_hash(key: str, root: Path | None = None, modules: Sequence[str] | None = None) -> str:
    """One SHA-256 over :func:`code_files`: the code version of a figure's results."""
    return sha256_bytes(json.dumps(code_files(key, root, modules), sort_keys=True).encode())


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo_root()), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_model() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance() -> dict[str, Any]:
    """Versions, git state, device and host of this process (recorded with every result).

    Nothing here changes between two runs on the same machine and checkout, so result
    files that carry it stay byte-identical (the run's date and runtime are in
    ``claim.json`` only, see :meth:`Run.record`).
    """
    import jax

    from ntkrepro import compat

    status = _git("status", "--porcelain", "--untracked-files=no")
    device = jax.devices()[0]
    return {
        "versions": compat.versions(),
        "ntkrepro": sys.modules["ntkrepro"].__version__,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "device": device_name(device),
        "device_count": jax.device_count(),
        "host": {"system": platform.system(), "machine": platform.machine(), "cpu": cpu_model()},
    }


# ---------------------------------------------------------------------------- files


def result_files(folder: Path) -> list[Path]:
    """The files of a results folder that ``claim.json`` checksums: all but itself and
    the hidden temporaries of :func:`atomic_write`."""
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.is_file() and p.name != CLAIM_FILE and not p.name.startswith(".")
    )


def write_claim(folder: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``claim.json`` with ``claim_sha256``: the SHA-256 of the file's own bytes as
    they are without that key, so that an edit of the claim itself is detected too."""
    body = {k: v for k, v in record.items() if k != "claim_sha256"}
    body["claim_sha256"] = sha256_bytes(json_bytes(body))
    atomic_write(Path(folder) / CLAIM_FILE, json_bytes(body))
    return body


def read_claim(folder: Path) -> dict[str, Any]:
    """Read ``claim.json`` and check its own checksum.

    Raises:
      ValueError: the file is unreadable, not JSON, lacks ``claim_sha256`` (written by
        an older ntkrepro) or was changed after it was written.
    """
    path = Path(folder) / CLAIM_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path} is unreadable or not JSON (truncated?): {err}") from err
    if not isinstance(record, dict) or "claim_sha256" not in record:
        raise ValueError(f"{path} has no claim_sha256 (written by an older ntkrepro)")
    expected = record.pop("claim_sha256")
    if sha256_bytes(json_bytes(record)) != expected:
        raise ValueError(f"{path} was changed after the run wrote it (checksum mismatch)")
    record["claim_sha256"] = expected
    return record


def integrity_problems(folder: Path, record: Mapping[str, Any]) -> list[str]:
    """Result files that are missing or whose SHA-256 differs from ``record["checksums"]``."""
    checksums = record.get("checksums")
    if not isinstance(checksums, dict):
        return [f"{Path(folder) / CLAIM_FILE} has no checksums (written by an older ntkrepro)"]
    problems = []
    for name, digest in sorted(checksums.items()):
        path = Path(folder) / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif sha256_file(path) != digest:
            problems.append(f"{path} was truncated or changed after the run (checksum mismatch)")
    return problems


def seal_notebook(folder: Path, notebook: Path) -> None:
    """Add the executed notebook (written after the run finished) to ``claim.json``'s
    checksums: from then on an edit of the page is detected like one of a result file."""
    record = read_claim(folder)
    record["checksums"] = {**record["checksums"], notebook.name: sha256_file(notebook)}
    write_claim(folder, record)


# ---------------------------------------------------------------------------- state

STATES = ("current", "stale", "missing", "corrupt")


def _parameter_changes(recorded: Any, current: Mapping[str, Any]) -> list[str]:
    """``name (run: old, now: new)`` for each parameter that differs."""
    if not isinstance(recorded, dict):
        return ["no parameters recorded"]
    now = json.loads(json.dumps(dict(current)))
    names = sorted(set(recorded) | set(now))
    return [
        f"{n} (run: {recorded.get(n, '-')!r}, now: {now.get(n, '-')!r})"
        for n in names
        if recorded.get(n) != now.get(n)
    ]


def _code_changes(key: str, prov: Mapping[str, Any], root: Path | None) -> list[str]:
    """Sources changed since the run: by file where the run recorded them, else by hash."""
    recorded = prov.get("code_files")
    if not isinstance(recorded, dict):
        return [] if prov.get("code_hash") == code_hash(key, root) else ["code_hash"]
    modules = [
        "ntkrepro" if f == "ntkrepro/__init__.py" else "ntkrepro." + f[9:-3]
        for f in recorded
        if f.startswith("ntkrepro/")
    ]
    now = code_files(key, root, modules)
    return [f for f in sorted(set(recorded) | set(now)) if recorded.get(f) != now.get(f)]


def result_state(
    key: str,
    profile: str,
    explicit: Mapping[str, Any] | None = None,
    *,
    root: Path | None = None,
    results: Path | None = None,
) -> tuple[str, str]:
    """State of the results of figure ``key`` under ``profile``, and why.

    ``missing``: no finished run (no ``claim.json``, or no executed notebook from
    ``ntkrepro run``). ``corrupt``: ``claim.json`` or a result file was truncated or
    edited (checksums). ``stale``: the parameters (``explicit`` over the profile over
    the notebook defaults) or the code (notebook code cells, the ntkrepro modules the
    run imported) differ from the run's. ``current``: none of these.
    """
    folder = (results or results_root()) / profile / key
    if not (folder / CLAIM_FILE).is_file():
        return "missing", f"{folder / CLAIM_FILE} does not exist"
    try:
        record = read_claim(folder)
    except ValueError as err:
        return "corrupt", str(err)
    if problems := integrity_problems(folder, record):
        return "corrupt", "; ".join(problems)
    notebook = f"{key.split('/')[1]}.ipynb"
    if notebook not in record["checksums"]:
        return "missing", f"no executed notebook {folder / notebook} (run by `ntkrepro run`)"
    prov = record.get("provenance")
    if not isinstance(prov, dict):
        return "corrupt", f"{folder / CLAIM_FILE} has no provenance"
    try:
        params = resolve(key, profile, explicit or {}, root)
    except (ParameterError, OSError, ValueError) as err:
        return "stale", f"the figure's parameters no longer resolve: {err}"
    if changes := _parameter_changes(prov.get("parameters"), params):
        return "stale", "parameters changed: " + ", ".join(changes)
    if changes := _code_changes(key, prov, root):
        return "stale", "code changed since the run: " + ", ".join(changes)
    return "current", ""


# ---------------------------------------------------------------------------- a run


class RunLockedError(ParameterError):
    """Another live run holds this figure's results folder (same checkout, any host)."""


@dataclass
class Run:
    """One execution of a figure notebook: resolved parameters and its results folder.

    Files are written into ``dir`` (``<final_dir>.partial``); :meth:`finish` swaps it
    into ``final_dir`` (``results/<profile>/<paper>/<figure>``) only once the claim
    record is written, so an interrupted or failed run leaves earlier results intact.
    """

    key: str
    params: Params
    final_dir: Path
    checks: list[dict[str, Any]] = field(default_factory=list)
    gates: list[dict[str, Any]] = field(default_factory=list)
    method_checks: list[dict[str, Any]] = field(default_factory=list)
    lock: object = field(default=None, repr=False)
    started: str = field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat())
    t0: float = field(default_factory=time.perf_counter)

    @property
    def dir(self) -> Path:
        return self.final_dir.with_name(self.final_dir.name + ".partial")

    @property
    def paper(self) -> str:
        return self.key.split("/")[0]

    @property
    def figure(self) -> str:
        return self.key.split("/")[1]

    @property
    def profile(self) -> str:
        return self.params["profile"]

    def key_for(self, name: str, replicate: int = 0):
        """``jax.random`` key for a named draw, from the root ``seed`` parameter.

        ``replicate`` r > 0 names the draw of the r-th repetition of the experiment
        (``"<name>/replicate<r>"``); replicate 0 is the plain name, so a run with one
        seed draws what it drew before seeds were repeated.
        """
        return seed_key(
            self.params["seed"], name if not replicate else f"{name}/replicate{replicate}"
        )

    def seed_for(self, name: str, replicate: int = 0) -> int:
        """Integer seed (numpy, data loaders) of replicate ``replicate``'s draw ``name``:
        the root ``seed`` itself for replicate 0 (what the loaders received before seeds
        were repeated), else one derived from it by name."""
        if not replicate:
            return self.params["seed"]
        return seed_int(self.params["seed"], f"{name}/replicate{replicate}")

    @property
    def replicates(self) -> range:
        """The repetitions of the stochastic part: ``range(n_seeds)`` (one without it)."""
        n = self.params.get("n_seeds", 1)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ParameterError(f"n_seeds={n!r} must be a positive integer")
        return range(n)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def provenance_record(self) -> dict[str, Any]:
        """What produced this run's numbers; identical for identical reruns (no clock).

        Every result file carries it: notebook, profile, parameters, root seed, code
        version (per file and as one hash), versions, git state, device and host.
        """
        modules = loaded_modules()
        return {
            "notebook": f"notebooks/{self.key}.ipynb",
            "profile": self.profile,
            "parameters": dict(self.params),
            "root_seed": self.params.get("seed"),
            "code_hash": code_hash(self.key, modules=modules),
            "code_files": code_files(self.key, modules=modules),
            **provenance(),
        }

    def record(self) -> dict[str, Any]:
        """:meth:`provenance_record` plus the machine facts of this run that vary between
        reruns: start time, runtime and peak memory (only ``claim.json`` carries them)."""
        return {
            **self.provenance_record(),
            "started": self.started,
            "runtime_s": round(self.elapsed(), 2),
            "peak_rss_mib": round(peak_rss_mib(), 1),
        }

    def save_json(self, name: str, data: Mapping[str, Any]) -> None:
        """Write ``<name>.json``: ``{"provenance": ..., "data": data}``."""
        body = {"provenance": self.provenance_record(), "data": jsonable(data)}
        atomic_write(self.dir / f"{name}.json", json_bytes(body))

    def save_arrays(self, name: str, **arrays) -> None:
        """Write ``<name>.npz`` (no pickle) with a ``provenance`` JSON entry."""
        import numpy as np

        prov = json.dumps(self.provenance_record(), sort_keys=True).encode()
        data = npz_bytes({"provenance": np.frombuffer(prov, np.uint8), **arrays})
        atomic_write(self.dir / f"{name}.npz", data)

    def save_text(self, filename: str, text: str) -> None:
        """Write ``<filename>`` (e.g. ``table.csv``) as UTF-8 text: tables for other tools.
        Numbers that a claim uses belong in :meth:`save_json` / :meth:`save_arrays`."""
        if Path(filename).name != filename or filename in (CLAIM_FILE, "") or filename[0] == ".":
            raise ValueError(f"{filename!r}: give a plain file name such as 'table.csv'")
        atomic_write(self.dir / filename, text.encode("utf-8"))

    def save_table(
        self, name: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], digits: int = 3
    ) -> None:
        """Write records as ``<name>.csv`` and ``<name>.md`` (same columns and rounding:
        floats with ``digits`` decimals, None empty) and show the markdown table."""
        markdown, csv_text = table_text(rows, columns, digits)
        self.save_text(f"{name}.csv", csv_text)
        self.save_text(f"{name}.md", markdown + "\n")
        _display_markdown(markdown)

    def save_figure(self, fig, name: str = "figure") -> None:
        """Write the figure as PDF and PNG into the results folder."""
        from ntkrepro.plotting import save

        save(fig, self.dir, name)

    def _threshold(self, what: str, check_id: str, threshold: str) -> Any:
        if threshold not in self.params:
            raise ParameterError(
                f"{what} {check_id!r}: threshold {threshold!r} is not a parameter of {self.key}; "
                "add it to the parameters cell"
            )
        taken = [c["id"] for c in (*self.checks, *self.gates, *self.method_checks)]
        if check_id in taken:
            raise ValueError(f"{what} {check_id!r} is recorded twice")
        return self.params[threshold]

    def check(
        self,
        claim_id: str,
        paper_claim: str,
        estimate,
        op: str,
        threshold: str,
        *,
        name: str,
        measured: Mapping[str, Any] | None = None,
    ) -> None:
        """Record the claim check ``estimate op p[threshold]``; the verdict follows from the
        estimate's 95% interval. The threshold is given by the name of its parameter, so it
        provably comes from the parameters cell.

        Args:
          claim_id, paper_claim: the check's id ("a") and the paper's claim in words.
          estimate: an :class:`ntkrepro.intervals.Estimate` (``over_seeds``, ``bootstrap``);
            ``name``: what it measures (e.g. ``"max_gap"``).
          op: ``<=``, ``<``, ``>=`` or ``>``.
          threshold: a parameter's name, e.g. ``"tolerance"``.
          measured: further numbers recorded beside the estimate.
        """
        from ntkrepro import claims

        t = self._threshold("check", claim_id, threshold)
        self.checks.append(
            claims.compare(
                claim_id, paper_claim, name, estimate, op, t,
                threshold_parameter=threshold, measured=measured,
            )
        )  # fmt: skip

    def gate(
        self,
        gate_id: str,
        condition: str,
        value: float,
        op: str,
        threshold: str,
        *,
        name: str,
        applies_to: Sequence[str] | None = None,
        measured: Mapping[str, Any] | None = None,
    ) -> None:
        """Record the validity gate ``value op p[threshold]``: the condition under which the
        claim checks ``applies_to`` (default: all) test the paper's claim. A failed gate
        makes them *invalid at this scale* when the run finishes."""
        from ntkrepro import claims

        t = self._threshold("gate", gate_id, threshold)
        self.gates.append(
            claims.gate(
                gate_id, condition, name, value, op, t,
                threshold_parameter=threshold, applies_to=applies_to, measured=measured,
            )
        )  # fmt: skip

    def method_check(
        self,
        check_id: str,
        verifies: str,
        value: float,
        op: str,
        threshold: str,
        *,
        name: str,
        measured: Mapping[str, Any] | None = None,
    ) -> None:
        """Record the method check ``value op p[threshold]``: it verifies a tool or an
        identity (``verifies``, in words), passes or fails, and is never a claim."""
        from ntkrepro import claims

        t = self._threshold("method check", check_id, threshold)
        self.method_checks.append(
            claims.method_check(
                check_id, verifies, name, value, op, t,
                threshold_parameter=threshold, measured=measured,
            )
        )  # fmt: skip

    def finish(
        self,
        checks: Sequence[Mapping[str, Any]] | None = None,
        *,
        deviations: Sequence[str] = (),
        title: str | None = None,
        scale: str | None = None,
    ) -> None:
        """Write ``claim.json`` and show the checks; then publish the results folder.

        ``claim.json`` holds the claim checks (default: those recorded by :meth:`check`)
        with the gates applied to them, the gates, the method checks, the verdict, the
        title (default: the notebook's H1), the scale (default: the parameters that the
        figure's ``paper`` profile names), the deviations from the paper (the parameters
        that differ from its ``paper`` profile, then the ``deviations`` given here: those
        no parameter expresses), the provenance and the SHA-256 of every other result
        file. Written last, so a ``claim.json`` exists only for a run that got to the end;
        the folder replaces the previous one in one rename.
        """
        from ntkrepro import claims

        checks = claims.apply_gates(self.checks if checks is None else checks, self.gates)
        record = {
            "paper": self.paper,
            "figure": self.figure,
            "title": title or notebook_title(self.key),
            "profile": self.profile,
            "verdict": claims.overall(checks, self.method_checks),
            "claims": checks,
            "gates": self.gates,
            "method_checks": self.method_checks,
            "scale": scale if scale is not None else scale_line(self.key, self.params),
            "deviations": [*paper_deviations(self.key, self.params), *deviations],
            "provenance": self.record(),
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        record["checksums"] = {p.name: sha256_file(p) for p in result_files(self.dir)}
        write_claim(self.dir, json.loads(json.dumps(record, default=jsonable)))
        _display_markdown(
            claims.as_markdown(checks, record["scale"], self.gates, self.method_checks)
        )
        _publish(self.dir, self.final_dir)
        _unlock(self.final_dir.with_name(f".{self.final_dir.name}.lock"), self.lock)


def table_text(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], digits: int = 3
) -> tuple[str, str]:
    """Records as a markdown table and as CSV text (same columns, same order); floats with
    ``digits`` decimals, ``None`` as an empty cell."""
    import csv
    import io

    def cell(v) -> str:
        if v is None:
            return ""
        if isinstance(v, float) or (hasattr(v, "dtype") and v.dtype.kind == "f"):
            return f"{float(v):.{digits}f}"
        return str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(row) + " |" for row in cells]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(cells)
    return "\n".join(md), buf.getvalue()


def notebook_title(key: str) -> str:
    """The text of the figure notebook's first H1 heading (the page title)."""
    nb = json.loads(notebook_path(key).read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    raise ParameterError(f"notebooks/{key}.ipynb has no '# title' heading")


def _publish(partial: Path, final: Path) -> None:
    """Swap a finished results folder into place; the old one is removed only after."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(partial, final)
    if old.exists():
        shutil.rmtree(old)


def _lock(final: Path, key: str) -> object:
    """Hold an exclusive lock on the figure's results for this run (until :meth:`Run.finish`
    or the process ends), so that two jobs sharing a checkout cannot interleave. Returns
    the token that releases it; a second start in the same process takes the lock over."""
    import fcntl
    import socket

    path = final.with_name(f".{final.name}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path in _HELD:
        _unlock(path, _HELD[path][1])  # this process starts the figure again
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunLockedError(
            f"another run of {key} is in progress ({holder}); wait for it to finish, or stop "
            f"it and run again (lock {path})"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}".encode(), 0)
    token = object()
    _HELD[path] = (fd, token)
    return token


#: Locks this process holds: lock file -> (descriptor, token of the run holding it).
_HELD: dict[Path, tuple[int, object]] = {}


def _unlock(path: Path, token: object) -> None:
    """Release the lock on ``path`` if the run with ``token`` still holds it."""
    if _HELD.get(path, (None, None))[1] is token:
        os.close(_HELD.pop(path)[0])  # closing the descriptor releases the lock


def _recover(final: Path) -> None:
    """Restore the previous results if a run died between the two renames of
    :func:`_publish` (an ``.old`` folder with no current one)."""
    old = final.with_name(final.name + ".old")
    if old.is_dir() and not final.exists():
        os.replace(old, final)


def _display_markdown(text: str) -> None:
    """Rendered in a notebook; printed as text in a plain Python script."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:
        get_ipython = None
    if get_ipython is None or get_ipython() is None:
        print(text)
        return
    display(Markdown(text))


def _parameter_table(key: str, params: Mapping[str, Any]) -> str:
    """Markdown: the parameters of this run that differ from the notebook's (cpu) defaults."""
    defaults = notebook_defaults(key)
    changed = [n for n in params if n != "profile" and params[n] != defaults.get(n)]
    head = f"Profile **{params['profile']}**"
    if not changed:
        return head + ": every parameter as in the parameters cell above."
    rows = [f"| `{n}` | `{params[n]!r}` | `{defaults.get(n)!r}` |" for n in changed]
    return "\n".join(
        [
            head + ", with these parameters changed from the cell above:",
            "",
            "| parameter | this run | default |",
            "|---|---|---|",
            *rows,
        ]
    )


def start(key: str, namespace: Mapping[str, Any]) -> Run:
    """Resolve and validate the parameters of figure ``key`` from a notebook's globals,
    and show the ones that differ from the parameters cell.

    Args:
      key: ``"<paper>/<figure>"``, the notebook's path under ``notebooks/``.
      namespace: the notebook's ``globals()`` after the parameters cell.
    Returns:
      A :class:`Run` whose ``params`` are read-only (``run.params.n_train``); results
      go to ``results/<profile>/<paper>/<figure>/`` when the run finishes.
    """
    defaults = notebook_defaults(key)
    explicit = explicit_parameters(namespace, defaults)
    profile = explicit.get("profile", namespace.get("profile", defaults.get("profile", "cpu")))
    if not isinstance(profile, str):
        raise ParameterError(f"profile={profile!r} must be a string: one of {PROFILES}")
    params = Params(resolve(key, profile, explicit))
    run = Run(key=key, params=params, final_dir=results_root() / profile / key)
    run.lock = _lock(run.final_dir, key)
    _recover(run.final_dir)
    if run.dir.exists():
        shutil.rmtree(run.dir)  # leftovers of an interrupted run
    _display_markdown(_parameter_table(key, params))
    return run

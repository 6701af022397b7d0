"""The results folder of one figure run: writing, provenance and integrity.

:func:`start` turns a notebook's globals into a :class:`Run` (parameters from
:mod:`ntkrepro.config`). A run writes into ``<folder>.partial`` and :meth:`Run.finish`
swaps it into ``results/<profile>/<paper>/<figure>/`` with ``claim.json``: the checks,
the provenance and the SHA-256 of every other file, so that :func:`result_state` can tell
current results from stale, missing or corrupt ones.
"""

import datetime as _dt
import hashlib
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
from types import MappingProxyType
from typing import Any

from ntkrepro.config import (
    CLAIM_FILE,
    PROFILES,
    ParameterError,
    explicit_parameters,
    notebook_defaults,
    notebook_path,
    repo_root,
    resolve,
    results_root,
    seed_key,
)
from ntkrepro.memory import device_name


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    files = {f"notebooks/{key}.ipynb": _sha256(cells.encode())}
    paths = (
        sorted(_package_dir().glob("*.py"))
        if modules is None
        else [_module_file(m) for m in modules]
    )
    for path in paths:
        data = path.read_bytes() if path.is_file() else b"<missing>"
        files[f"ntkrepro/{path.name}"] = _sha256(data)
    return dict(sorted(files.items()))


def code_hash(key: str, root: Path | None = None, modules: Sequence[str] | None = None) -> str:
    """One SHA-256 over :func:`code_files`: the code version of a figure's results."""
    return _sha256(json.dumps(code_files(key, root, modules), sort_keys=True).encode())


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


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def result_files(folder: Path) -> list[Path]:
    """The files of a results folder that ``claim.json`` checksums: all but itself and
    the hidden temporaries of :func:`atomic_write`."""
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.is_file() and p.name != CLAIM_FILE and not p.name.startswith(".")
    )


def _json_bytes(data: Any) -> bytes:
    """The one serialization of every JSON result (sorted keys: byte-stable)."""
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


def npz_bytes(arrays: Mapping[str, Any]) -> bytes:
    """An ``.npz`` (``np.load`` reads it, no pickle) whose bytes depend only on the arrays.

    ``np.savez`` stamps every member with the current time; here every member gets the
    fixed zip date 1980-01-01, so the same arrays give the same bytes.
    """
    import io
    import zipfile

    import numpy as np

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
    return buf.getvalue()


def write_claim(folder: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``claim.json`` with ``claim_sha256``: the SHA-256 of the file's own bytes as
    they are without that key, so that an edit of the claim itself is detected too."""
    body = {k: v for k, v in record.items() if k != "claim_sha256"}
    body["claim_sha256"] = _sha256(_json_bytes(body))
    atomic_write(Path(folder) / CLAIM_FILE, _json_bytes(body))
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
    if _sha256(_json_bytes(record)) != expected:
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


class ClaimRecord(dict):
    """The record :meth:`Run.finish` wrote to ``claim.json`` (a plain dict); shown in a
    notebook as one line instead of the whole record."""

    def _repr_pretty_(self, printer, cycle: bool) -> None:
        printer.text(
            f"claim.json: {self.get('verdict')} ({self.get('paper')}/{self.get('figure')}, "
            f"profile {self.get('profile')})"
        )


@dataclass
class Run:
    """One execution of a figure notebook: resolved parameters and its results folder.

    Files are written into ``dir`` (``<final_dir>.partial``); :meth:`finish` swaps it
    into ``final_dir`` (``results/<profile>/<paper>/<figure>``) only once the claim
    record is written, so an interrupted or failed run leaves earlier results intact.
    """

    key: str
    params: Mapping[str, Any]
    final_dir: Path
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

    def key_for(self, name: str):
        """``jax.random`` key for a named draw, from the root ``seed`` parameter."""
        return seed_key(self.params["seed"], name)

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
        """:meth:`provenance_record` plus when the run started and how long it took
        (only ``claim.json`` carries these two)."""
        return {
            **self.provenance_record(),
            "started": self.started,
            "runtime_s": round(self.elapsed(), 2),
        }

    def save_json(self, name: str, data: Mapping[str, Any]) -> Path:
        """Write ``<dir>/<name>.json``: ``{"provenance": ..., "data": data}``."""
        from ntkrepro.claims import _jsonable

        body = {"provenance": self.provenance_record(), "data": _jsonable(data)}
        path = self.dir / f"{name}.json"
        atomic_write(path, _json_bytes(body))
        return path

    def save_arrays(self, name: str, **arrays) -> Path:
        """Write ``<dir>/<name>.npz`` (no pickle) with a ``provenance`` JSON entry."""
        import numpy as np

        prov = json.dumps(self.provenance_record(), sort_keys=True).encode()
        path = self.dir / f"{name}.npz"
        atomic_write(path, npz_bytes({"provenance": np.frombuffer(prov, np.uint8), **arrays}))
        return path

    def save_text(self, filename: str, text: str) -> Path:
        """Write ``<dir>/<filename>`` (e.g. ``table.csv``, ``table.md``) as UTF-8 text.

        For tables meant for other tools; numbers that the claim uses belong in
        :meth:`save_json` or :meth:`save_arrays`, which carry the provenance.
        """
        if Path(filename).name != filename or filename in (CLAIM_FILE, "") or filename[0] == ".":
            raise ValueError(f"{filename!r}: give a plain file name such as 'table.csv'")
        path = self.dir / filename
        atomic_write(path, text.encode("utf-8"))
        return path

    def save_figure(self, fig, name: str = "figure") -> list[Path]:
        """Write the figure as PDF and PNG into the results folder."""
        from ntkrepro.plotting import save

        return save(fig, self.dir, name)

    def finish(
        self,
        checks: list[dict[str, Any]],
        *,
        title: str,
        scale: str,
        deviations: list[str],
    ) -> dict[str, Any]:
        """Write ``claim.json`` (checks, verdict, scale, deviations, provenance, and the
        SHA-256 of every other result file) and show the checks.

        Written last, so a ``claim.json`` exists only for a run that got to the end; then
        the results folder replaces the previous one in one rename.
        """
        from ntkrepro import claims

        record = {
            "paper": self.paper,
            "figure": self.figure,
            "title": title,
            "profile": self.profile,
            "verdict": claims.overall(checks),
            "claims": checks,
            "scale": scale,
            "deviations": list(deviations),
            "provenance": self.record(),
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        record["checksums"] = {p.name: sha256_file(p) for p in result_files(self.dir)}
        record = write_claim(self.dir, json.loads(json.dumps(record, default=_plain)))
        _display_markdown(claims.as_markdown(checks, scale))
        _publish(self.dir, self.final_dir)
        return ClaimRecord(record)


def _plain(value: Any) -> Any:
    """JSON form of numpy scalars/arrays that a claim check may carry."""
    from ntkrepro.claims import _jsonable

    return _jsonable(value)


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


def _display_markdown(text: str) -> None:
    try:
        from IPython.display import Markdown, display
    except ImportError:
        print(text)
        return
    display(Markdown(text))


def start(key: str, namespace: Mapping[str, Any]) -> Run:
    """Resolve and validate the parameters of figure ``key`` from a notebook's globals.

    Args:
      key: ``"<paper>/<figure>"``, the notebook's path under ``notebooks/``.
      namespace: the notebook's ``globals()`` after the parameters cell.
    Returns:
      A :class:`Run` whose ``params`` are read-only; results go to
      ``results/<profile>/<paper>/<figure>/`` when the run finishes.
    """
    defaults = notebook_defaults(key)
    explicit = explicit_parameters(namespace, defaults)
    profile = explicit.get("profile", namespace.get("profile", defaults.get("profile", "cpu")))
    if not isinstance(profile, str):
        raise ParameterError(f"profile={profile!r} must be a string: one of {PROFILES}")
    params = resolve(key, profile, explicit)
    run = Run(
        key=key,
        params=MappingProxyType(params),
        final_dir=results_root() / profile / key,
    )
    if run.dir.exists():
        shutil.rmtree(run.dir)  # leftovers of an interrupted run
    return run

"""Notebook parameters, profiles and seeds of one figure.

A figure notebook's first code cell (tagged ``parameters``) holds every knob with its
``cpu`` default. :func:`resolve` finds which parameters the caller set explicitly
(papermill's injected cell), applies the profile's overrides (``ntkrepro/profiles.toml``)
to the others and validates names, types and ranges before any compute;
:func:`seed_key` derives random keys by name. :func:`ntkrepro.results.start` uses them.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import tomllib
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ntkrepro.errors import ParameterError

PROFILES = ("smoke", "cpu", "paper")
PROFILE_FILE = Path(__file__).with_name("profiles.toml")
#: Files of a results folder that are not results: the claim record itself (it holds the
#: checksums of the others) and temporary files of :func:`atomic_write` (dot files).
CLAIM_FILE = "claim.json"
_PLAIN = (bool, int, float, str, list, tuple, dict, type(None))


def repo_root() -> Path:
    """The project folder: ``$NTKREPRO_ROOT``, else the checkout this package lives in."""
    if env := os.environ.get("NTKREPRO_ROOT"):
        return Path(env).resolve()
    return Path(__file__).resolve().parent.parent


def results_root() -> Path:
    """Where results go: ``$NTKREPRO_RESULTS``, else ``<repo>/results``."""
    if env := os.environ.get("NTKREPRO_RESULTS"):
        return Path(env).resolve()
    return repo_root() / "results"


def notebook_path(key: str, root: Path | None = None) -> Path:
    """``<root>/notebooks/<paper>/<figure>.ipynb`` for ``key = "paper/figure"``."""
    return (root or repo_root()) / "notebooks" / f"{key}.ipynb"


def figures(root: Path | None = None) -> list[str]:
    """Every figure key ``paper/figure`` with a notebook under ``notebooks/``."""
    base = (root or repo_root()) / "notebooks"
    return sorted(
        str(p.relative_to(base).with_suffix(""))
        for p in base.glob("*/*.ipynb")
        if not p.name.endswith(".out.ipynb") and ".ipynb_checkpoints" not in p.parts
    )


def profile_file() -> Path:
    """The profile file: ``$NTKREPRO_PROFILES``, else ``ntkrepro/profiles.toml``.

    The override lets tests (and forks) use a project of their own figures.
    """
    if env := os.environ.get("NTKREPRO_PROFILES"):
        return Path(env).resolve()
    return PROFILE_FILE


def load_profiles(path: Path | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """``{figure key: {profile: overrides}}`` from the one profile file."""
    with open(path or profile_file(), "rb") as f:
        return tomllib.load(f)


def _assignments(source: str) -> dict[str, Any]:
    """Literal ``name = value`` assignments of a cell, in order."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                out[target.id] = ast.literal_eval(node.value)
    return out


def notebook_defaults(key: str, root: Path | None = None) -> dict[str, Any]:
    """The parameters cell of a figure notebook, as ``{name: default}``."""
    path = notebook_path(key, root)
    if not path.exists():
        raise ParameterError(f"no notebook for figure '{key}' at {path}")
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return _assignments("".join(cell["source"]))
    raise ParameterError(f"{path} has no code cell tagged 'parameters'")


def _injected_names(namespace: Mapping[str, Any]) -> set[str] | None:
    """Names that papermill injected (its cell starts with '# Parameters').

    Returns None outside IPython, where the history is not available.
    """
    history = namespace.get("In")
    if not isinstance(history, list):
        return None
    names: set[str] = set()
    for source in history:
        if isinstance(source, str) and source.lstrip().startswith("# Parameters"):
            try:
                names |= set(_assignments(source))
            except (SyntaxError, ValueError):
                continue
    return names


def explicit_parameters(
    namespace: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """Parameters the caller set: changed from their default, or injected by papermill."""
    explicit = {k: namespace[k] for k in defaults if k in namespace and namespace[k] != defaults[k]}
    injected = _injected_names(namespace)
    if injected is None:
        # Outside IPython any plain public global may be a parameter (caught if unknown).
        injected = {
            k
            for k, v in namespace.items()
            if not k.startswith("_") and k not in ("exit", "quit") and isinstance(v, _PLAIN)
        }
    explicit.update({k: namespace[k] for k in injected if k in namespace})
    return explicit


def _type_ok(value: Any, default: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, int | float)
    if isinstance(default, list | tuple):
        if not isinstance(value, list | tuple):
            return False
        if not default:
            return True
        return all(_type_ok(v, default[0]) for v in value)
    return isinstance(value, type(default))


def _range_problem(name: str, value: Any, bounds: Sequence[float] | None) -> str | None:
    """Integers (sizes, steps, counts) must be >= 1, seeds >= 0, floats finite, and each
    number inside the figure's declared ``bounds`` ``[lo, hi]`` for that name."""
    values = value if isinstance(value, list | tuple) else [value]
    if isinstance(value, list | tuple) and not value:
        return f"{name} is empty"
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            return f"{name}={value!r} is not finite"
        is_seed = name.startswith("seed")
        if isinstance(v, int) and v < (0 if is_seed else 1):
            kind = "non-negative" if is_seed else "positive"
            return f"{name}={value!r} must be a {kind} integer"
        if bounds is not None and not bounds[0] <= v <= bounds[1]:
            return f"{name}={value!r} must lie in [{bounds[0]:g}, {bounds[1]:g}]"
    return None


def _data_problem(key: str, params: Mapping[str, Any], defaults: Mapping[str, Any]) -> str | None:
    """An unknown data set, or ``n_train``/``n_test`` beyond what the data set has.

    Checked only where the notebook's default ``dataset`` is one of :data:`ntkrepro.datasets.
    DATASETS`, so a figure on synthetic data may use the name ``dataset`` freely.
    ``data.load_task`` checks again, more precisely (class subsets), when loading.
    """
    from ntkrepro.datasets import DATASETS

    name = params.get("dataset")
    if not isinstance(name, str) or defaults.get("dataset") not in DATASETS:
        return None
    if name not in DATASETS:
        return (
            f"unknown data set dataset={name!r} for {key}; use one of {', '.join(DATASETS)} "
            f"(e.g. -p dataset={defaults['dataset']})"
        )
    info = DATASETS[name]
    for label, available in (("n_train", info.n_train), ("n_test", info.n_test)):
        value = params.get(label)
        values = value if isinstance(value, list | tuple) else [value]
        ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        if ints and max(ints) > available:
            split = label.removeprefix("n_")
            return (
                f"{label}={value!r} but {name} has only {available} {split} examples; "
                f"use {label} <= {available} (figure {key})"
            )
    return None


def resolve(
    key: str, profile: str, explicit: Mapping[str, Any], root: Path | None = None
) -> dict[str, Any]:
    """Parameters of a run: notebook defaults, then profile overrides, then explicit values.

    ``root`` is the project folder holding ``notebooks/`` (default :func:`repo_root`).

    Raises:
      ParameterError: unknown profile or parameter, wrong type or out-of-range value,
        unknown data set or more examples than it has; the message names the problem and
        the fix.
    """
    if profile not in PROFILES:
        raise ParameterError(
            f"unknown profile {profile!r} for {key}; use one of {', '.join(PROFILES)} "
            f"(e.g. papermill ... -p profile cpu)"
        )
    defaults = notebook_defaults(key, root)
    table = load_profiles()
    if key not in table:
        raise ParameterError(f'{key} has no entry in {profile_file()}; add ["{key}".smoke] etc.')
    unknown = sorted(set(explicit) - set(defaults))
    if unknown:
        raise ParameterError(
            f"unknown parameter(s) {', '.join(unknown)} for {key}; "
            f"known: {', '.join(sorted(defaults))}"
        )
    params = dict(defaults)
    params.update(table[key].get(profile, {}))
    params.update(explicit)
    params["profile"] = profile
    bounds = table[key].get("bounds", {})
    for name, value in params.items():
        if not _type_ok(value, defaults[name]):
            hint = ""
            if isinstance(defaults[name], list):
                hint = (
                    f" (a list: papermill -y '{name}: {list(defaults[name])}' "
                    f"or ntkrepro run -p '{name}={list(defaults[name])}')"
                )
            raise ParameterError(
                f"{name}={value!r} has type {type(value).__name__}; "
                f"{key} expects {type(defaults[name]).__name__} like {defaults[name]!r}{hint}"
            )
        if problem := _range_problem(name, value, bounds.get(name)):
            raise ParameterError(f"{problem} (figure {key})")
    if problem := _data_problem(key, params, defaults):
        raise ParameterError(problem)
    return params


class Params(Mapping):
    """A run's resolved parameters, read-only: ``p.n_train`` or ``p["n_train"]``."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", dict(values))

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            known = ", ".join(sorted(self._values))
            raise AttributeError(f"no parameter {name!r}; known: {known}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"parameters are read-only (set {name} in the parameters cell)")

    def __repr__(self) -> str:
        return f"Params(profile={self._values.get('profile')!r}, {len(self)} parameters)"


def _paper_table(key: str) -> dict[str, Any]:
    """The figure's ``paper`` overrides, less the parameters that only block computations."""
    table = load_profiles().get(key, {})
    blocking = set(table.get("blocking", {}).get("parameters", []))
    return {k: v for k, v in table.get("paper", {}).items() if k not in blocking}


def paper_deviations(key: str, params: Mapping[str, Any]) -> list[str]:
    """``"dataset mnist (paper: cifar10)"`` for each parameter that the figure's ``paper``
    profile sets and this run sets differently, in parameters-cell order."""
    paper = _paper_table(key)
    return [
        f"{name} {_show(params[name])} (paper: {_show(paper[name])})"
        for name in params
        if name in paper and params[name] != paper[name]
    ]


def scale_line(key: str, params: Mapping[str, Any]) -> str:
    """The run's scale: the parameters that the figure's ``paper`` profile names, with
    this run's values (``"dataset mnist, n_train 1000, widths [64, 256]"``)."""
    paper = _paper_table(key)
    return ", ".join(f"{name} {_show(params[name])}" for name in params if name in paper)


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def seed_key(root_seed: int, name: str):
    """A ``jax.random`` key for ``name``: the root key folded with a stable hash of the name.

    Keys depend on names, not on call order, so adding a draw elsewhere does not change
    the draws of an existing name.
    """
    import jax

    return jax.random.fold_in(jax.random.PRNGKey(root_seed), zlib.crc32(name.encode()))


def seed_int(root_seed: int, name: str) -> int:
    """A numpy-friendly integer seed derived from ``root_seed`` and ``name``."""
    digest = hashlib.sha256(f"{root_seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little")

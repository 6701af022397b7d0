"""Timing, peak memory, power-law fits and plain reference implementations for the
benchmarks (``benchmarks/``) and the scaling page (``notebooks/performance/scaling``).

Times are wall-clock seconds of warm calls (compilation excluded: one untimed call first),
as the median of repeats. Peak memory is the growth of the process's resident set during
one call: freed heap memory is returned to the OS (``malloc_trim``), Linux's high-water
mark (``VmHWM``) is reset to the current ``VmRSS`` (``/proc/self/clear_refs``) and read
after the call, so it counts every allocation, XLA's and numpy's, on the CPU backend
(on a GPU, device memory is not counted). Where that is unavailable (not Linux) it is
``None``.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MEMORY_METHOD = (
    "Linux resident-set high-water mark (VmHWM) reset to VmRSS before the call (after "
    "gc and glibc malloc_trim), "
    "read after it: growth of host RSS during one warm call (CPU backend: includes XLA buffers)"
)


# ---------------------------------------------------------------------------- timing


def _block(out: Any) -> Any:
    """Wait for every JAX array in ``out`` (JAX dispatches asynchronously)."""
    return jax.block_until_ready(out)


def time_call(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Wall-clock seconds of ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones.

    Returns:
      ``{"median_s", "min_s", "times_s" (list), "repeats"}``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    for _ in range(warmup):
        _block(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _block(fn())
        times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "repeats": repeats,
    }


def time_side_by_side(
    fns: dict[str, Callable[[], Any]], repeats: int = 3, warmup: int = 1
) -> dict[str, dict[str, Any]]:
    """:func:`time_call` of several functions with their calls interleaved (a, b, a, b...),
    so that a busy machine slows each about equally and their ratio stays meaningful.

    Returns ``{name: {"median_s", "min_s", "times_s", "repeats"}}``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    for fn in fns.values():
        for _ in range(warmup):
            _block(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            _block(fn())
            times[name].append(time.perf_counter() - t0)
    return {
        name: {
            "median_s": statistics.median(t),
            "min_s": min(t),
            "times_s": t,
            "repeats": repeats,
        }
        for name, t in times.items()
    }


# ---------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), so that a later
    allocation cannot hide in memory an earlier computation freed but the process kept."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    """Reset the high-water mark of this process to its current RSS (Linux >= 4.0)."""
    gc.collect()
    _trim_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mib(fn: Callable[[], Any]) -> tuple[Any, float | None]:
    """Run ``fn()`` once; return its result and the peak growth of resident memory, MiB.

    The growth is ``VmHWM`` after the call minus ``VmRSS`` before it (see the module
    docstring); ``None`` where ``/proc`` cannot reset the high-water mark.
    """
    ok = _reset_peak()
    before = _status_kib("VmRSS")
    out = _block(fn())
    peak = _status_kib("VmHWM")
    if not ok or before is None or peak is None:
        return out, None
    return out, max(0, peak - before) / 1024


# ---------------------------------------------------------------------------- fits


def fit_power_law(ns: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of ``y = c * n**a`` on log-log axes; returns ``(a, c)``.

    Needs at least two distinct positive ``n`` and positive ``y``.
    """
    n = np.asarray(ns, np.float64)
    y = np.asarray(ys, np.float64)
    if n.shape != y.shape or n.size < 2 or len(np.unique(n)) < 2:
        raise ValueError(f"need >= 2 distinct sizes with one value each, got {ns!r}, {ys!r}")
    if np.any(n <= 0) or np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise ValueError(f"sizes and values must be positive and finite, got {ns!r}, {ys!r}")
    a, log_c = np.polyfit(np.log(n), np.log(y), 1)
    return float(a), float(np.exp(log_c))


# ---------------------------------------------------------------------------- references


def entk_reference(apply_fn: Callable, params, x1, x2=None) -> jax.Array:
    """Empirical NTK the plain way: per-example Jacobians of all examples at once
    (``jax.vmap`` of ``jax.jacrev``), then one contraction; mean over outputs.

    The straightforward version a user writes, jit-compiled, unbatched: memory holds the
    Jacobians of all ``n1 + n2`` examples (``(n, k, n_params)`` floats). Shapes:
    ``(n1, ...)``, ``(n2, ...)`` → ``(n1, n2)``, equal to
    ``kernels.empirical_ntk(..., trace_axes=(-1,))``.
    """
    return _entk_reference_jit(apply_fn, params, x1, x1 if x2 is None else x2)


# Written out here rather than shared with kernels.empirical_ntk, which keeps Jacobians
# the same way: a reference must not share code with what it checks.
@partial(jax.jit, static_argnums=0)
def reference_jacobians(apply_fn: Callable, params, x) -> jax.Array:
    """Per-example Jacobians ``(n, k, n_params)`` of ``x`` ``(n, ...)``, all at once."""

    def one(p, xi):
        return apply_fn(p, xi[None])[0]  # (k,)

    jac = jax.vmap(jax.jacrev(one), (None, 0))(params, x)  # leaves (n, k, *shape)
    leaves = jax.tree_util.tree_leaves(jac)
    return jnp.concatenate([leaf.reshape(leaf.shape[0], leaf.shape[1], -1) for leaf in leaves], -1)


@jax.jit
def reference_contraction(j1: jax.Array, j2: jax.Array) -> jax.Array:
    """``(n1, k, P), (n2, k, P) -> (n1, n2)``: one einsum, mean over outputs."""
    return jnp.einsum("ikp,jkp->ij", j1, j2) / j1.shape[1]


def _entk_reference_jit(apply_fn, params, x1, x2):
    j1 = reference_jacobians(apply_fn, params, jnp.asarray(x1))
    j2 = j1 if x2 is x1 else reference_jacobians(apply_fn, params, jnp.asarray(x2))
    return reference_contraction(j1, j2)


def relu_fcn_kernels(
    x1: np.ndarray,
    x2: np.ndarray | None,
    depth: int,
    W_std: float = 2**0.5,
    b_std: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """NNGP and NTK of ``models.fcn(width, depth, act="relu", W_std, b_std)`` (NTK
    parameterization, infinite width) by the ReLU arc-cosine recursion, in float64 numpy.

    Per layer, with input covariances ``q1 = K(x, x)``, ``q2 = K(x', x')``, ``c = K(x, x')``
    and ``θ = arccos(c / sqrt(q1 q2))``: ``E[φ φ'] = sqrt(q1 q2) (sin θ + (π - θ) cos θ)
    / (2π)``, ``E[φ̇ φ̇'] = (π - θ) / (2π)``; ``K ← σ_w² E[φ φ'] + σ_b²``,
    ``Θ ← K + σ_w² E[φ̇ φ̇'] Θ``. The first layer sees ``σ_w² x·x'/d + σ_b²``.

    Shapes: ``(n1, d)``, ``(n2, d)`` → two ``(n1, n2)`` arrays.
    """
    x1 = np.asarray(x1, np.float64).reshape(len(x1), -1)
    x2 = x1 if x2 is None else np.asarray(x2, np.float64).reshape(len(x2), -1)
    w2, b2 = W_std**2, b_std**2
    d = x1.shape[1]
    k12 = w2 * (x1 @ x2.T) / d + b2
    q1 = w2 * np.einsum("ij,ij->i", x1, x1) / d + b2
    q2 = w2 * np.einsum("ij,ij->i", x2, x2) / d + b2
    ntk = k12.copy()
    for _ in range(depth):
        norms = np.sqrt(np.outer(q1, q2))
        cos = np.clip(k12 / norms, -1.0, 1.0)
        theta = np.arccos(cos)
        e_phi = norms * (np.sin(theta) + (np.pi - theta) * cos) / (2 * np.pi)
        e_dphi = (np.pi - theta) / (2 * np.pi)
        k12 = w2 * e_phi + b2
        ntk = k12 + w2 * e_dphi * ntk
        q1 = w2 * q1 / 2 + b2  # E[relu(u)^2] = q/2 on the diagonal
        q2 = w2 * q2 / 2 + b2
    return k12, ntk


# ---------------------------------------------------------------------------- records


def machine() -> dict[str, Any]:
    """Where a benchmark ran: host, CPU model and count, load averages at the time
    (a contended machine inflates absolute times; ratios measured side by side less so),
    JAX device, and package versions."""
    from ntkrepro import compat, memory, results

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": results.cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15": list(load) if load else None,
        "device": memory.device_name(jax.devices()[0]),
        "versions": compat.versions(),
        "memory_method": MEMORY_METHOD,
    }

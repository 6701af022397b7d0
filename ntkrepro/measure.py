"""Timing, peak memory and the machine record, for ``benchmarks/`` and the scaling page.

Times are wall-clock seconds of warm calls (``warmup`` untimed calls first, so compilation
is excluded), summarized by the median of repeats. Peak memory is the growth of the
process's resident set during one call: freed heap memory is returned to the OS
(``malloc_trim``), Linux's high-water mark (``VmHWM``) is reset to ``VmRSS``
(``/proc/self/clear_refs``) and read after the call, so it counts every allocation, XLA's
and numpy's, on the CPU backend (on a GPU, device memory is not counted); ``None`` where
that is unavailable (not Linux).
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

MEMORY_METHOD = (
    "Linux resident-set high-water mark (VmHWM) reset to VmRSS before the call (after gc "
    "and glibc malloc_trim), read after it: growth of host RSS during one warm call "
    "(CPU backend: includes XLA buffers)"
)


def time_side_by_side(
    fns: dict[str, Callable[[], Any]], repeats: int = 3, warmup: int = 1
) -> dict[str, dict[str, Any]]:
    """Time several functions with their calls interleaved (a, b, a, b, ...), so that a busy
    machine slows each about equally and their ratio stays meaningful.

    Returns ``{name: {"median_s", "min_s", "times_s", "repeats"}}``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0")
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())  # JAX dispatches asynchronously
            times[name].append(time.perf_counter() - t0)
    return {
        name: {"median_s": statistics.median(t), "min_s": min(t), "times_s": t, "repeats": repeats}
        for name, t in times.items()
    }


def time_call(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Wall-clock seconds of ``fn()``: ``{"median_s", "min_s", "times_s", "repeats"}``."""
    return time_side_by_side({"fn": fn}, repeats, warmup)["fn"]


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Free what can be freed, then reset the high-water mark to the current RSS."""
    gc.collect()
    try:  # freed heap memory a later allocation could otherwise hide in
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mib(fn: Callable[[], Any]) -> tuple[Any, float | None]:
    """Run ``fn()`` once; return its result and the peak growth of resident memory in MiB
    (``VmHWM`` after minus ``VmRSS`` before), ``None`` where it cannot be measured."""
    ok = _reset_peak()
    before = _status_kib("VmRSS")
    out = jax.block_until_ready(fn())
    peak = _status_kib("VmHWM")
    if not ok or before is None or peak is None:
        return out, None
    return out, max(0, peak - before) / 1024


def machine() -> dict[str, Any]:
    """Where a measurement ran: host, CPU model and count, load averages at the time (a
    contended machine inflates absolute times; ratios measured side by side less so), JAX
    device, package versions and the memory method."""
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

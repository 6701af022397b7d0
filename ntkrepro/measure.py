"""Timing, peak memory and the machine record, for ``benchmarks/`` and the scaling page.

Times are of warm calls (compilation excluded); peak memory: :data:`MEMORY_METHOD`.
"""

from __future__ import annotations

import contextlib
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
    """Time ``fns`` like :func:`time_call`, interleaved so that load slows each about alike."""
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
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _reset_peak() -> bool:
    """Free what can be freed, then reset the high-water mark to the current RSS."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # freed memory could hide a peak
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_memory_mib(fn: Callable[[], Any]) -> tuple[Any, float | None]:
    """Run ``fn()`` once; return its result and peak resident-memory growth in MiB (or None)."""
    ok = _reset_peak()
    before = _status_kib("VmRSS")
    out = jax.block_until_ready(fn())
    peak = _status_kib("VmHWM")
    if not ok or before is None or peak is None:
        return out, None
    return out, max(0, peak - before) / 1024


def machine() -> dict[str, Any]:
    """Where a measurement ran: host, CPU, load (it inflates times), device, versions."""
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

"""Memory pre-checks: refuse a computation before it starts when its estimated memory
exceeds what the machine (or ``$NTKREPRO_MAX_MEMORY_GB``) allows."""

import os
from collections.abc import Mapping
from pathlib import Path

from ntkrepro.errors import MemoryBudgetError


def device_name(device) -> str:
    """``cpu``, or the platform and model of an accelerator (``gpu: NVIDIA H100 ...``)."""
    kind = getattr(device, "device_kind", "") or ""
    return (
        device.platform if kind.lower() in ("", device.platform) else f"{device.platform}: {kind}"
    )


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB (``ru_maxrss``): a machine
    fact for provenance, never a result (it varies from run to run)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB else


def _meminfo_available() -> int | None:
    """``MemAvailable`` of /proc/meminfo in bytes (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory(where: str = "host") -> tuple[int | None, str]:
    """Bytes a computation may use, and where the number comes from.

    ``where="host"``: the RAM the OS reports as available; ``"device"``: the first JAX
    device's free memory, its limit less what is in use (the host's on CPU).
    ``$NTKREPRO_MAX_MEMORY_GB`` caps both (a budget on a shared machine, and the tests).
    None: unknown (nothing is refused).
    """
    limit: int | None = None
    source = "unknown"
    if where == "device":
        import jax

        device = jax.devices()[0]
        stats = device.memory_stats() if device.platform != "cpu" else None
        if stats and stats.get("bytes_limit"):
            limit = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
            source = f"free memory of {device_name(device)}"
    if limit is None:
        limit, source = _meminfo_available(), "available RAM (/proc/meminfo)"
    if env := os.environ.get("NTKREPRO_MAX_MEMORY_GB"):
        cap = int(float(env) * 1e9)
        if limit is None or cap < limit:
            limit, source = cap, f"NTKREPRO_MAX_MEMORY_GB={env}"
    return limit, source


def require_memory(
    what: str, parts: Mapping[str, int], *, where: str = "host", fix: str = ""
) -> int:
    """Refuse, before computing, ``what`` whose estimated memory exceeds what is available.

    Args:
      what: the computation, e.g. ``"empirical NTK of 5000 x 5000 examples"``.
      parts: estimated bytes by part (they are summed), e.g. ``{"kernel": ..., "blocks": ...}``.
      where: ``"host"`` or ``"device"`` (see :func:`available_memory`).
      fix: what to change, e.g. ``"reduce n_train or width"`` (a generic hint otherwise).
    Returns:
      The total estimate in bytes.
    Raises:
      MemoryBudgetError: with the estimate and the limit in GB.
    """
    total = int(sum(parts.values()))
    limit, source = available_memory(where)
    if limit is not None and total > limit:
        detail = ", ".join(f"{k} {v / 1e9:.3g} GB" for k, v in parts.items())
        raise MemoryBudgetError(
            f"{what} needs an estimated {total / 1e9:.3g} GB ({detail}) but only "
            f"{limit / 1e9:.3g} GB are available ({source}). "
            f"{fix or 'Reduce the number of examples, the width or depth, or batch_size'}, "
            "or run on a machine with more memory (NTKREPRO_MAX_MEMORY_GB sets the budget)."
        )
    return total

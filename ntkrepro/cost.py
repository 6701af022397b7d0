"""What a JAX computation will cost before it runs: XLA's count of its floating-point
operations and bytes accessed (``Lowered.cost_analysis``, from tracing and lowering, no
compilation), turned into seconds by a roofline model with the device's measured rates.

The estimate ranks ways of computing the same thing (see ``kernels.empirical_ntk``); its
absolute error is typically within 2-3x on a CPU: caches make XLA's bytes an upper bound.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ntkrepro.memo import memoized


class Rates(NamedTuple):
    """Measured throughput of one device: ``flops_per_s`` (float32 matrix product) and
    ``bytes_per_s`` (an elementwise pass over an array larger than the caches)."""

    flops_per_s: float
    bytes_per_s: float
    device: str


class Cost(NamedTuple):
    """XLA's count for one computation: ``flops`` and ``bytes`` accessed."""

    flops: float
    bytes: float

    def seconds(self, rates: Rates) -> float:
        """Roofline time: the arithmetic and the memory traffic, one after the other."""
        return self.flops / rates.flops_per_s + self.bytes / rates.bytes_per_s


def _best_of(fn, *args, repeats: int = 3) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


@memoized(8)
def device_rates(device: str | None = None) -> Rates:
    """:class:`Rates` of the default device (``device``: only a cache key), measured once per
    process: a 1024³ float32 matrix product and a pass over 64 MiB (~0.1 s on a CPU)."""
    dev = jax.devices()[0]
    a = jnp.ones((1024, 1024), jnp.float32)
    matmul = _best_of(jax.jit(lambda a: a @ a), a)
    x = jnp.ones((16 * 2**20,), jnp.float32)
    stream = _best_of(jax.jit(lambda x: x * 1.5 + 1.0), x)
    return Rates(2 * 1024**3 / matmul, 2 * x.nbytes / stream, device or dev.device_kind)


def _counts(analysis) -> dict | None:
    if isinstance(analysis, list | tuple):  # older JAX: one dict per computation
        analysis = analysis[0] if analysis else None
    return analysis if analysis and "flops" in analysis else None


def of(lowered) -> Cost:
    """The :class:`Cost` of a ``jax.jit(f).lower(...)`` result. Where the lowered computation
    has no count (PJRT plugins such as CUDA's), the compiled one's is taken: the compilation is
    cached, so the call that follows reuses it. ValueError where neither has one."""
    analysis = _counts(lowered.cost_analysis())
    if analysis is None:
        analysis = _counts(lowered.compile().cost_analysis())
    if analysis is None:
        raise ValueError("XLA gives no operation count for this computation on this device")
    return Cost(float(analysis["flops"]), float(analysis.get("bytes accessed", 0.0)))

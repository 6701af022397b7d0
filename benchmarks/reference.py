"""Plain reference implementations that the benchmarks time ntkrepro against, and that
tests/test_bench.py checks ntkrepro with.

They are written out here, apart from the package: a reference must not share code with
what it checks.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np


def entk_reference(apply_fn: Callable, params, x1, x2=None) -> jax.Array:
    """Empirical NTK the plain way: per-example Jacobians of all examples at once
    (``jax.vmap`` of ``jax.jacrev``), then one contraction; mean over outputs.

    The straightforward version a user writes, jit-compiled, unbatched: memory holds the
    Jacobians of all ``n1 + n2`` examples (``(n, k, n_params)`` floats). Shapes:
    ``(n1, ...)``, ``(n2, ...)`` -> ``(n1, n2)``, equal to
    ``kernels.empirical_ntk(..., trace_axes=(-1,))``.
    """
    j1 = reference_jacobians(apply_fn, params, jnp.asarray(x1))
    j2 = j1 if x2 is None else reference_jacobians(apply_fn, params, jnp.asarray(x2))
    return reference_contraction(j1, j2)


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

    Shapes: ``(n1, d)``, ``(n2, d)`` -> two ``(n1, n2)`` arrays.
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

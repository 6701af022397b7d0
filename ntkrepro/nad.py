"""Neural anisotropy directions (Ortiz-Jiménez et al. 2021): right singular vectors of ``M =
∂²f/∂θ∂x`` ``(P, D)``, found as eigenvectors of ``G = Mᵀ M`` built with one VJP and one JVP
per input direction (memory ``O(chunk * P + D²)``, never ``O(P * D)``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ntkrepro.data import log_indices


def input_gradient_fn(apply_fn: Callable, x0: jax.Array) -> Callable:
    """``g(θ) = ∇_x f(θ, x0)`` ``(D,)``, ``f`` the first output of ``apply_fn(params, x0)``."""

    def g(params):
        grad = jax.grad(lambda x: apply_fn(params, x)[0, 0])(x0)
        return grad.reshape(-1)

    return g


def mixed_derivative_gram(
    apply_fn: Callable,
    params,
    input_shape: Sequence[int],
    *,
    x0: np.ndarray | None = None,
    chunk: int = 64,
) -> np.ndarray:
    """``G = Mᵀ M`` ``(D, D)`` float64 at ``x0`` (``input_shape``, no batch axis; default 0)."""
    shape = tuple(int(s) for s in input_shape)
    d = int(np.prod(shape))
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1")
    x = jnp.zeros((1, *shape), jnp.float32) if x0 is None else jnp.asarray(x0)[None]
    if x.shape != (1, *shape):
        raise ValueError(f"x0 has shape {x.shape[1:]}, expected input_shape {shape}")
    g = input_gradient_fn(apply_fn, x)

    # Parameters are arguments, not closure constants (XLA would constant-fold them).
    @jax.jit
    def columns(theta, basis):  # basis (c, D) -> rows of G (c, D): G e = J_g (J_gᵀ e)
        _, vjp = jax.vjp(g, theta)

        def one(e):
            (cotangent,) = vjp(e)
            return jax.jvp(g, (theta,), (cotangent,))[1]

        return jax.vmap(one)(basis)

    eye = np.eye(d, dtype=np.float32)
    rows = []
    for start in range(0, d, chunk):
        block = eye[start : start + chunk]
        pad = chunk - len(block)  # one compiled shape for every chunk
        out = np.asarray(columns(params, jnp.asarray(np.pad(block, ((0, pad), (0, 0))))))
        rows.append(out[: len(block)])
    gram = np.concatenate(rows).astype(np.float64)
    return 0.5 * (gram + gram.T)  # symmetric up to float32 round-off


def nads(
    apply_fn: Callable,
    params,
    input_shape: Sequence[int],
    *,
    x0: np.ndarray | None = None,
    chunk: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """NADs: decreasing eigenvalues ``(D,)``, unit directions ``(D, *input_shape)`` (any sign)."""
    gram = mixed_derivative_gram(apply_fn, params, input_shape, x0=x0, chunk=chunk)
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1]
    values = np.clip(values[order], 0.0, None)
    return values, vectors[:, order].T.reshape(-1, *tuple(input_shape))


def separable_dataset(
    direction: np.ndarray, n: int, *, epsilon: float, sigma: float, key: jax.Array
) -> tuple[np.ndarray, np.ndarray]:
    """``x = (ε/2) y u + (I - u uᵀ) w``, ``y = ±1`` ``(n, 1)``, ``w ~ N(0, σ² I)``; float32."""
    if n < 1 or not epsilon > 0 or not sigma >= 0:
        raise ValueError(f"need n >= 1, epsilon > 0, sigma >= 0; got {n}, {epsilon}, {sigma}")
    u = np.asarray(direction, np.float64)
    norm = np.linalg.norm(u)
    if not norm > 0:
        raise ValueError("direction must be non-zero")
    u = (u / norm).reshape(-1)
    noise_key, label_key = jax.random.split(key)
    w = sigma * np.asarray(jax.random.normal(noise_key, (n, u.size)), np.float64)
    w -= np.outer(w @ u, u)
    y = np.where(np.asarray(jax.random.bernoulli(label_key, 0.5, (n,))), 1.0, -1.0)
    x = 0.5 * epsilon * y[:, None] * u[None] + w
    shape = np.shape(direction)
    return x.reshape(n, *shape).astype(np.float32), y.astype(np.float32)[:, None]


def nad_indices(d: int, count: int) -> list[int]:
    """``count`` distinct, roughly log-spaced NAD indices in ``[0, d - 1]``, 0 included."""
    if count < 2 or d < 2:
        raise ValueError(f"need count >= 2 and d >= 2, got count={count}, d={d}")
    return [k - 1 for k in log_indices(1, d, count)]

"""Neural anisotropy directions (NADs) and the linearly separable NAD benchmark.

Ortiz-Jiménez et al. (2021) read the NADs of a network off its NTK at initialization:
for inputs near ``x0``, the first-order change of the empirical NTK with the input is
governed by the mixed derivative ``M = ∂²f/∂θ∂x`` at ``x0`` (a ``(P, D)`` matrix for
``P`` parameters and ``D`` input pixels), and the NADs are its right singular vectors,
ordered by decreasing singular value. The authors evaluate ``M`` at ``x0 = 0``.

Here ``M`` is never formed. Write ``g(θ) = ∇_x f(θ, x0)`` (a map from parameters to
``R^D``) with Jacobian ``J_g = Mᵀ`` of shape ``(D, P)``. Then

    ``G = Mᵀ M = J_g J_gᵀ``   (``D x D``),

the empirical NTK of ``g`` with its ``D`` outputs kept, and the NADs are the
eigenvectors of ``G`` with eigenvalues ``σ_k²``. ``G`` is built column by column with
one vector-Jacobian and one Jacobian-vector product of ``g`` per input direction, so the
memory is ``O(chunk * P + D²)`` instead of ``O(P * D)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def input_gradient_fn(apply_fn: Callable, x0: jax.Array) -> Callable:
    """``g(θ) = ∇_x f(θ, x)`` at ``x = x0``, flattened to shape ``(D,)``.

    ``apply_fn(params, x)`` must return ``(1, k)`` for one input ``x`` of shape
    ``(1, *input_shape)``; ``f`` is its first output (the single logit).
    """

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
    """``G = Mᵀ M`` for the mixed derivative ``M = ∂²f/∂θ∂x`` at ``x0``; shape ``(D, D)``.

    Args:
      apply_fn: ``(params, x) -> (n, k)``; the first output is differentiated.
      params: the parameters θ (e.g. at initialization).
      input_shape: shape of one input without the batch axis, e.g. ``(32, 32, 1)``;
        ``D = prod(input_shape)``.
      x0: the input at which ``M`` is taken, shape ``input_shape``; default zeros (the
        authors' choice).
      chunk: number of columns of ``G`` computed per compiled call.

    Returns:
      float64 symmetric positive semi-definite ``(D, D)`` matrix.
    """
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
    """Neural anisotropy directions of ``apply_fn`` at ``params``.

    Returns:
      ``(eigenvalues, directions)``: ``eigenvalues`` ``(D,)`` in decreasing order, the
      squared singular values of ``M = ∂²f/∂θ∂x`` at ``x0``; ``directions``
      ``(D, *input_shape)`` unit-norm NADs, ``directions[k]`` the k-th right singular
      vector of ``M`` (the sign of each is arbitrary).
    """
    gram = mixed_derivative_gram(apply_fn, params, input_shape, x0=x0, chunk=chunk)
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1]
    values = np.clip(values[order], 0.0, None)
    return values, vectors[:, order].T.reshape(-1, *tuple(input_shape))


def separable_dataset(
    direction: np.ndarray,
    n: int,
    *,
    epsilon: float,
    sigma: float,
    key: jax.Array,
) -> tuple[np.ndarray, np.ndarray]:
    """Linearly separable data along ``direction`` (the NAD benchmark).

    ``x = (ε/2) y u + (I - u uᵀ) w`` with ``u`` the unit-normalized direction, labels
    ``y`` in {-1, +1} with probability 1/2 each and Gaussian noise ``w ~ N(0, σ² I)``:
    the projection of every ``x`` on ``u`` is exactly ``ε y / 2`` (a margin of ``ε/2``),
    the noise lives in the orthogonal complement.

    Args:
      direction: ``(*input_shape)``; normalized here.
      n: number of samples.
      epsilon: distance between the two classes along ``u``; > 0.
      sigma: noise standard deviation per input coordinate; >= 0.
      key: ``jax.random`` key.

    Returns:
      ``x`` ``(n, *input_shape)`` float32 and ``y`` ``(n, 1)`` float32 in {-1, +1}.
    """
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
    grid = np.unique(np.round(np.geomspace(1, d, count)).astype(int) - 1)
    return [int(k) for k in grid]

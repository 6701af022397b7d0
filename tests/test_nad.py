"""Tests of ntkrepro.nad (neural anisotropy directions, NAD benchmark data) and
ntkrepro.tangent (the offset-free linear model at an anchor)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkrepro import models, nad, train


def _small_mlp():
    init_fn, apply_fn, _ = models.fcn(8, 2, 1, act="gelu", W_std=1.3, b_std=0.3)
    _, params = init_fn(jax.random.PRNGKey(3), (1, 5))
    return apply_fn, params


def test_gram_equals_dense_mixed_derivative():
    """G = Mᵀ M with M = ∂²f/∂θ∂x formed densely by nested autodiff, at a non-zero x0."""
    apply_fn, params = _small_mlp()
    x0 = np.linspace(-1.0, 1.0, 5).astype(np.float32)
    g = nad.input_gradient_fn(apply_fn, jnp.asarray(x0)[None])
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    m = np.asarray(jax.jacfwd(lambda v: g(unravel(v)))(flat), np.float64)  # (D, P) = Mᵀ
    gram = nad.mixed_derivative_gram(apply_fn, params, (5,), x0=x0, chunk=2)
    np.testing.assert_allclose(gram, m @ m.T, rtol=1e-4, atol=1e-6)


def test_nads_are_right_singular_vectors_of_mixed_derivative():
    apply_fn, params = _small_mlp()
    g = nad.input_gradient_fn(apply_fn, jnp.zeros((1, 5)))
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    m = np.asarray(jax.jacfwd(lambda v: g(unravel(v)))(flat), np.float64).T  # (P, D)
    _, s, vt = np.linalg.svd(m, full_matrices=False)
    values, directions = nad.nads(apply_fn, params, (5,))
    np.testing.assert_allclose(values, s**2, rtol=1e-4, atol=1e-8)
    assert np.all(np.diff(values) <= 0)
    top = np.abs(np.sum(directions * vt, axis=1))  # |cos| of matching singular vectors
    distinct = np.r_[True, np.abs(np.diff(s)) > 1e-3 * s[0]]
    distinct &= np.r_[np.abs(np.diff(s)) > 1e-3 * s[0], True]
    np.testing.assert_allclose(top[distinct], 1.0, atol=1e-3)


def test_circular_convolution_has_fourier_nads_in_closed_form():
    """f(x) = <a, h ⊛ x> (circular). ∇_x f = C_hᵀ a, so M = [∂/∂a; ∂/∂h] and
    G = C_hᵀ C_h + C_aᵀ C_a: circulant, diagonal in the Fourier basis with eigenvalues
    |ĥ_ω|² + |â_ω|², and each NAD is a (real) combination of the frequencies ±ω."""
    d = 16
    rng = np.random.default_rng(0)
    params = {"h": jnp.asarray(rng.normal(size=d)), "a": jnp.asarray(rng.normal(size=d))}

    def apply_fn(p, x):  # x (n, d) -> (n, 1)
        conv = jnp.real(jnp.fft.ifft(jnp.fft.fft(p["h"])[None] * jnp.fft.fft(x, axis=1)))
        return (conv @ p["a"])[:, None]

    values, directions = nad.nads(apply_fn, params, (d,), chunk=5)
    power = np.abs(np.fft.fft(np.asarray(params["h"]))) ** 2
    power += np.abs(np.fft.fft(np.asarray(params["a"]))) ** 2
    np.testing.assert_allclose(values, np.sort(power)[::-1], rtol=1e-4)
    for k in range(d):
        spectrum = np.abs(np.fft.fft(directions[k])) ** 2
        # all energy on frequencies whose closed-form eigenvalue equals this NAD's
        on = np.isclose(power, values[k], rtol=1e-4)
        assert spectrum[on].sum() / spectrum.sum() > 0.999


def test_separable_dataset_margin_and_orthogonal_noise():
    u = np.zeros((4, 4, 1))
    u[1, 2, 0] = 3.0  # not unit-norm on purpose
    x, y = nad.separable_dataset(u, 2000, epsilon=1.0, sigma=2.0, key=jax.random.PRNGKey(0))
    assert x.shape == (2000, 4, 4, 1) and y.shape == (2000, 1)
    proj = x.reshape(2000, -1) @ (u.reshape(-1) / 3.0)
    np.testing.assert_allclose(proj, 0.5 * y[:, 0], atol=1e-5)
    assert set(np.unique(y)) == {-1.0, 1.0} and abs(y.mean()) < 0.1
    rest = np.delete(x.reshape(2000, -1), 6, axis=1)  # index of (1, 2, 0)
    assert abs(rest.std() - 2.0) < 0.05
    with pytest.raises(ValueError, match="epsilon"):
        nad.separable_dataset(u, 10, epsilon=0.0, sigma=1.0, key=jax.random.PRNGKey(0))


def test_nad_indices():
    ks = nad.nad_indices(1024, 8)
    assert ks[0] == 0 and ks[-1] == 1023 and ks == sorted(set(ks))
    with pytest.raises(ValueError):
        nad.nad_indices(10, 1)


def test_tangent_model_is_offset_free_first_order_model():
    apply_fn, params = _small_mlp()
    x = jax.random.normal(jax.random.PRNGKey(1), (7, 5))
    f = train.linearize(apply_fn, params, offset=False)
    np.testing.assert_allclose(f(params, x), 0.0, atol=1e-7)
    step = jax.tree_util.tree_map(lambda p: 1e-3 * jnp.ones_like(p), params)
    moved = jax.tree_util.tree_map(lambda p, s: p + s, params, step)
    expected = apply_fn(moved, x) - apply_fn(params, x)  # first order for a small step
    np.testing.assert_allclose(f(moved, x), expected, rtol=1e-2, atol=1e-5)
    # linear in θ: doubling the step doubles the output
    twice = jax.tree_util.tree_map(lambda p, s: p + 2 * s, params, step)
    np.testing.assert_allclose(f(twice, x), 2 * f(moved, x), rtol=1e-5, atol=1e-7)


def test_bad_arguments_are_named():
    apply_fn, params = _small_mlp()
    with pytest.raises(ValueError, match="input_shape"):
        nad.mixed_derivative_gram(apply_fn, params, (5,), x0=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="chunk"):
        nad.mixed_derivative_gram(apply_fn, params, (5,), chunk=0)

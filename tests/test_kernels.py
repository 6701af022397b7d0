"""Kernel computations (ntkrepro.kernels) against direct references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import neural_tangents as nt
import numpy as np
import pytest

from ntkrepro import kernels, metrics, models, predict


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 5)).astype(np.float32)  # 23: not a multiple of any batch
    xt = rng.normal(size=(7, 5)).astype(np.float32)
    y = rng.normal(size=(23, 3))
    return x, xt, y


def test_batched_analytic_equals_unbatched(problem):
    x, xt, _ = problem
    _, _, kernel_fn = models.fcn(64, 2, 3)
    direct = kernel_fn(xt, x, ("nngp", "ntk"))
    batched = kernels.analytic(kernel_fn, xt, x, batch_size=4)
    np.testing.assert_allclose(batched["ntk"], direct.ntk, rtol=1e-5)
    np.testing.assert_allclose(batched["nngp"], direct.nngp, rtol=1e-5)
    one_block = kernels.analytic(kernel_fn, xt, x, batch_size=len(x))  # no nt.batch, no padding
    np.testing.assert_allclose(one_block["ntk"], direct.ntk, rtol=1e-5)
    same = kernels.analytic(kernel_fn, x, get="ntk", batch_size=5)
    # On the diagonal the ReLU recursion evaluates arccos(cos θ ≈ 1), ill-conditioned in
    # float32: blocks that see a point twice differ from the unblocked x2=None path by
    # ~1e-4 relative; off the diagonal the agreement is to float32 rounding.
    full = np.asarray(kernel_fn(x, None, "ntk"))
    off = ~np.eye(len(x), dtype=bool)
    np.testing.assert_allclose(same[off], full[off], rtol=1e-5)
    np.testing.assert_allclose(np.diag(same), np.diag(full), rtol=5e-4)


@pytest.mark.parametrize("impl", ["jacobian_contraction", "ntk_vector_products"])
def test_batched_empirical_ntk_equals_jacobian_reference(problem, impl):
    x, xt, _ = problem
    init_fn, apply_fn, _ = models.fcn(32, 1, 3)
    _, params = init_fn(jax.random.PRNGKey(1), x.shape)
    got = kernels.empirical_ntk(apply_fn, params, xt, x, batch_size=4, implementation=impl)

    def jac(inputs):
        j = jax.jacobian(apply_fn)(params, inputs)  # leaves: (n, k, *param_shape)
        return jnp.concatenate(
            [leaf.reshape(leaf.shape[0], leaf.shape[1], -1) for leaf in jax.tree.leaves(j)], -1
        )

    ref = jnp.einsum("ikp,jkp->ij", jac(xt), jac(x)) / 3  # mean over the 3 outputs
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-5)
    with pytest.raises(ValueError, match="unknown eNTK implementation"):
        kernels.empirical_ntk(apply_fn, params, x, implementation="fast")


def test_gradient_flow_matches_explicit_gradient_descent(problem):
    x, xt, y = problem
    _, _, kernel_fn = models.fcn(64, 1, 3)
    k = np.asarray(kernel_fn(x, None, "ntk"), np.float64)
    ks = np.asarray(kernel_fn(xt, x, "ntk"), np.float64)
    lr = 0.01 * predict.max_learning_rate(k, 3)
    steps = 3000
    # Gradient descent in function space with the module's MSE convention.
    f, ft = np.zeros_like(y), np.zeros((7, 3))
    for _ in range(steps):
        resid = (f - y) / y.size
        f, ft = f - lr * k @ resid, ft - lr * ks @ resid
    f_train, f_test = predict.gradient_flow(k, ks, y, [lr * steps])
    np.testing.assert_allclose(f_train[0], f, rtol=0, atol=2e-3 * np.abs(y).max())
    np.testing.assert_allclose(f_test[0], ft, rtol=0, atol=2e-3 * np.abs(y).max())


def test_gradient_flow_agrees_with_neural_tangents_predict(problem):
    x, xt, y = problem
    _, _, kernel_fn = models.fcn(64, 1, 3)
    k = np.asarray(kernel_fn(x, None, "ntk"), np.float64)
    ks = np.asarray(kernel_fn(xt, x, "ntk"), np.float64)
    nt_predict = nt.predict.gradient_descent_mse(k, y, learning_rate=1.0, diag_reg=0.0)
    t = 50.0
    _, ours = predict.gradient_flow(k, ks, y, [t, np.inf])
    theirs = nt_predict(t, np.zeros_like(y), np.zeros((7, 3)), ks)[1]
    np.testing.assert_allclose(ours[0], theirs, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours[1], predict.kernel_regression(k, ks, y), rtol=1e-5, atol=1e-7)


def test_max_learning_rate_is_the_stability_edge(problem):
    x, _, y = problem
    _, _, kernel_fn = models.fcn(64, 1, 3)
    k = np.asarray(kernel_fn(x, None, "ntk"), np.float64)

    def final_residual(fraction):
        lr = fraction * predict.max_learning_rate(k, 3)
        f = np.zeros_like(y)
        for _ in range(400):
            f = f - lr * k @ (f - y) / y.size
        return np.abs(f - y).max()

    assert final_residual(0.98) < np.abs(y).max()
    assert final_residual(1.05) > 1e3


def test_diag_regularization_and_kernel_regression():
    k = np.array([[2.0, 1.0], [1.0, 2.0]])
    np.testing.assert_allclose(predict.diag_regularize(k, 0.5), k + np.eye(2))
    y = np.array([[1.0], [-1.0]])
    np.testing.assert_allclose(predict.kernel_regression(k, k, y), y, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k_dtype", [np.float64, np.float32])
def test_kernel_regression_is_the_plain_cholesky_solve_bit_for_bit(dtype, k_dtype):
    """One in-place copy instead of four computes the same numbers as the textbook
    formula (dense ``diag_regularize``, cast, ``cho_factor``, ``cho_solve``)."""
    import scipy.linalg

    rng = np.random.default_rng(2)
    a = rng.normal(size=(60, 70))
    k, ks = (a @ a.T / 70).astype(k_dtype), rng.normal(size=(9, 60)).astype(k_dtype)
    y = rng.normal(size=(60, 3)).astype(np.float32)
    for reg in (0.0, 1e-3):
        reg_k = predict.diag_regularize(np.asarray(k, np.float64), reg).astype(dtype)
        alpha = scipy.linalg.cho_solve(scipy.linalg.cho_factor(reg_k, lower=True), y.astype(dtype))
        want = ks.astype(dtype) @ alpha
        got = predict.kernel_regression(k, ks, y, reg, dtype=dtype)
        assert got.dtype == want.dtype and np.array_equal(got, want)
    with pytest.raises(ValueError, match="infs or NaNs"):
        predict.kernel_regression(k, ks, np.full_like(y, np.nan))


def test_distance_alignment_accuracy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 6))
    k = a @ a.T
    assert metrics.kernel_distance(k, 3 * k) == pytest.approx(0.0, abs=1e-12)
    assert metrics.kernel_distance(k, np.eye(6)) > 0.05
    assert metrics.relative_change(1.5 * k, k) == pytest.approx(0.5)
    y = np.sign(rng.normal(size=6))
    assert metrics.alignment(np.outer(y, y), y) == pytest.approx(1.0)
    assert metrics.alignment(np.eye(6), y) < 0.9
    lam, v = kernels.eigh_desc(k)
    assert np.all(np.diff(lam) <= 0) and np.allclose(k @ v[:, 0], lam[0] * v[:, 0])
    assert metrics.accuracy(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1])) == 0.5
    assert metrics.accuracy(np.array([0.3, -0.2, 0.1]), np.array([1, -1, -1])) == 2 / 3
    stack = np.array([[[0.1, 0.9], [0.8, 0.2]], [[0.9, 0.1], [0.8, 0.2]], [[np.nan, 1], [0, 1]]])
    np.testing.assert_array_equal(metrics.accuracy(stack, np.array([1, 1])), [0.5, 0.0, np.nan])
    kt, k0 = np.stack([1.5 * k, k]), np.stack([k, k])
    np.testing.assert_allclose(metrics.relative_change(kt, k0), [0.5, 0.0])


def test_top_eigh_matches_the_full_eigendecomposition():
    rng = np.random.default_rng(3)
    # A kernel with a decaying spectrum, in float32 as the eNTKs are.
    q = np.linalg.qr(rng.normal(size=(400, 400)))[0]
    spectrum = 100.0 * 0.9 ** np.arange(400)
    k = ((q * spectrum) @ q.T).astype(np.float32)
    lam, v = kernels.eigh_desc(k)
    # Lanczos (count <= n / 10): the same top eigenpairs, to float32 precision.
    lam_t, v_t = kernels.top_eigh(k, 20)
    assert v_t.shape == (400, 20) and np.all(np.diff(lam_t) <= 0)
    np.testing.assert_allclose(lam_t, lam[:20], rtol=1e-5)
    np.testing.assert_allclose(np.abs(np.sum(v_t * v[:, :20], axis=0)), 1.0, atol=1e-4)
    again = kernels.top_eigh(k, 20)  # a fixed start: the same bits on a rerun
    np.testing.assert_array_equal(again[0], lam_t)
    np.testing.assert_array_equal(again[1], v_t)
    # The boundary count = n / 10 is still Lanczos.
    lam_b = kernels.top_eigh(k, 40)[0]
    np.testing.assert_allclose(lam_b, lam[:40], rtol=1e-5)
    # The full path (count > n / 10) is eigh_desc itself, cut.
    lam_f, v_f = kernels.top_eigh(k, 41)
    np.testing.assert_array_equal(lam_f, lam[:41])
    np.testing.assert_array_equal(v_f, v[:, :41])
    with pytest.raises(ValueError, match="count"):
        kernels.top_eigh(k, 0)
    with pytest.raises(ValueError, match="square"):
        kernels.top_eigh(k[:10], 2)


@pytest.mark.parametrize("readout", ["vec", "gap"])
def test_cnn_readouts_give_networks_and_kernels(readout):
    x = np.random.default_rng(2).normal(size=(3, 6, 6, 2)).astype(np.float32)
    init_fn, apply_fn, kernel_fn = models.cnn(4, 2, 5, readout=readout)
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    assert apply_fn(params, x).shape == (3, 5)
    k = kernel_fn(x, None, "ntk")
    assert k.shape == (3, 3) and np.all(np.linalg.eigvalsh(np.asarray(k, np.float64)) > 0)
    with pytest.raises(ValueError, match="readout"):
        models.cnn(4, 2, readout="max")


def test_ortiz2021_models_by_name():
    x = np.zeros((2, 28, 28, 1), np.float32)
    init_fn, apply_fn, _ = models.ortiz2021("lenet")
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    assert apply_fn(params, x).shape == (2, 1)
    init_fn, _, _ = models.ortiz2021("mlp", width=7, depth=3)
    _, params = init_fn(jax.random.PRNGKey(0), (2, 5))
    assert models.count_params(params) == (5 * 7 + 7) + 2 * (7 * 7 + 7) + (7 + 1)
    with pytest.raises(ValueError, match="architecture"):
        models.ortiz2021("resnet18")


def test_analytic_reuses_one_function_per_kernel_and_names():
    _, _, kernel_fn = models.fcn(16, 2, 1)
    x = np.random.RandomState(0).randn(10, 4)
    first = kernels.analytic(kernel_fn, x, get="ntk", batch_size=5)
    hits = kernels._analytic_fn.cache_info().hits
    again = kernels.analytic(kernel_fn, x[:6], get="ntk", batch_size=5)
    assert kernels._analytic_fn.cache_info().hits == hits + 1
    np.testing.assert_allclose(again, first[:6, :6], rtol=1e-5)


@pytest.mark.parametrize("traced", [True, False], ids=["trace_axes=(-1,)", "trace_axes=()"])
@pytest.mark.parametrize("model", ["fcn", "cnn"])
def test_kept_jacobians_equal_the_block_pair_path(problem, model, traced, monkeypatch):
    """Jacobian contraction with all Jacobians kept (each computed once, upper triangle
    mirrored) gives nt.batch's kernel, symmetric or not, with uneven last blocks."""
    x, xt, _ = problem
    if model == "cnn":
        init_fn, apply_fn, _ = models.cnn(4, 1, 3, readout="gap")
        x, xt = x[:, :4].reshape(23, 2, 2, 1), xt[:, :4].reshape(7, 2, 2, 1)
    else:
        init_fn, apply_fn, _ = models.fcn(32, 1, 3)
    _, params = init_fn(jax.random.PRNGKey(1), x.shape)
    axes = (-1,) if traced else ()
    assert kernels.keeps_jacobians(apply_fn, params, x, None, axes)
    pairs = [(x, None), (xt, x)]
    jc = dict(batch_size=5, trace_axes=axes, implementation="jacobian_contraction")
    kept = [kernels.empirical_ntk(apply_fn, params, a, b, **jc) for a, b in pairs]
    monkeypatch.setattr(kernels, "KEEP_JACOBIANS_BYTES", 0)
    assert not kernels.keeps_jacobians(apply_fn, params, x, None, axes)
    for (a, b), got in zip(pairs, kept, strict=True):
        blocked = kernels.empirical_ntk(apply_fn, params, a, b, **jc)
        assert got.shape == blocked.shape == (len(a), len(x)) + (() if traced else (3, 3))
        np.testing.assert_allclose(got, blocked, rtol=1e-5, atol=1e-6)
    square = kept[0]
    mirrored = square.T if traced else square.transpose(1, 0, 3, 2)
    np.testing.assert_allclose(square, mirrored, rtol=1e-6, atol=1e-7)


def test_keeping_jacobians_needs_flat_outputs_and_a_budget(problem, monkeypatch):
    x, _, _ = problem
    init_fn, apply_fn, _ = models.fcn(32, 1, 3)
    _, params = init_fn(jax.random.PRNGKey(1), x.shape)
    n_bytes = len(x) * 3 * models.count_params(params) * 4  # float32 Jacobians of x
    monkeypatch.setattr(kernels, "KEEP_JACOBIANS_BYTES", n_bytes)
    assert kernels.keeps_jacobians(apply_fn, params, x)
    assert not kernels.keeps_jacobians(apply_fn, params, x, x)  # twice the Jacobians
    assert not kernels.keeps_jacobians(apply_fn, params, x, trace_axes=(0,))


def _auto_models():
    """A wide MLP (structured derivatives are far cheaper) and a CNN of a few hundred
    parameters (the kept Jacobians are), on 60 inputs."""
    rng = np.random.default_rng(2)
    wide = models.fcn(512, 2, 1)
    x_wide = rng.normal(size=(60, 64)).astype(np.float32)
    small = models.cnn(4, 1, 1, readout="gap")
    x_small = rng.normal(size=(60, 6, 6, 1)).astype(np.float32)
    out = {}
    for name, (init_fn, apply_fn, _), x in (("wide", wide, x_wide), ("small", small, x_small)):
        out[name] = (apply_fn, init_fn(jax.random.PRNGKey(0), x.shape)[1], x)
    return out


def test_auto_chooses_from_the_whole_computation(monkeypatch):
    m = _auto_models()
    apply_fn, params, x = m["wide"]
    choice = kernels.choose_implementation(apply_fn, params, x, batch_size=16)
    assert choice.implementation == "structured_derivatives"
    assert choice.batch_size == len(x)  # the whole kernel in one block, not 16 x 16 blocks
    assert choice.estimates["structured_derivatives"] < choice.estimates["jacobian_contraction"]
    # Estimated once per model and shapes: a second choice reuses the cached estimate.
    misses = kernels._estimates.cache_info().misses
    assert kernels.choose_implementation(apply_fn, params, x, batch_size=16) == choice
    assert kernels._estimates.cache_info().misses == misses
    kernels.choose_implementation(apply_fn, params, x[:30], batch_size=16)  # other shapes
    assert kernels._estimates.cache_info().misses == misses + 1
    # Where one block would not fit in memory, the blocks of batch_size are kept.
    monkeypatch.setenv("NTKREPRO_MAX_MEMORY_GB", "1e-6")
    assert kernels.choose_implementation(apply_fn, params, x, batch_size=16).batch_size == 16
    monkeypatch.delenv("NTKREPRO_MAX_MEMORY_GB")
    apply_fn, params, x = m["small"]
    assert kernels.choose_implementation(apply_fn, params, x).implementation == (
        "jacobian_contraction"
    )


@pytest.mark.parametrize("name", ["wide", "small"])
def test_auto_gives_the_kernel_of_every_implementation(name):
    apply_fn, params, x = _auto_models()[name]
    auto = kernels.empirical_ntk(apply_fn, params, x[:40], x, batch_size=16)
    for impl in ("jacobian_contraction", "structured_derivatives"):
        other = kernels.empirical_ntk(
            apply_fn, params, x[:40], x, batch_size=16, implementation=impl
        )
        np.testing.assert_allclose(auto, other, rtol=2e-4, atol=1e-5 * np.abs(other).max())

"""ntkrepro.meanfield: mean-field maps against closed forms and quadrature; NTKs over many
initializations against per-network computations and neural-tangents."""

from __future__ import annotations

import jax
import neural_tangents as nt
import numpy as np
import optax
import pytest
import scipy.integrate
import scipy.stats

from ntkrepro import kernels, meanfield, metrics, models, predict, train


def _gauss2(fn, q, c, order=60):
    """E[fn(u, v)] for centred Gaussians with variances q and correlation c (2D quadrature)."""
    z, w = np.polynomial.hermite_e.hermegauss(order)
    z1, z2 = np.meshgrid(z, z, indexing="ij")
    ww = np.outer(w, w) / (2 * np.pi)
    u = np.sqrt(q) * z1
    v = np.sqrt(q) * (c * z1 + np.sqrt(1 - c**2) * z2)
    return float(np.sum(ww * fn(u, v)))


def test_relu_edge_of_chaos_is_sigma_w2_two():
    assert meanfield.chi1(2.0, 0.0, "relu") == pytest.approx(1.0)
    assert meanfield.chi1(2.0, 0.0, "relu", numeric=True) == pytest.approx(1.0, rel=1e-9)
    assert meanfield.edge_of_chaos(0.0, "relu") == pytest.approx(2.0)
    # χ₁ of ReLU does not depend on σ_b² (its derivative is a step): the χ₁ = 1 line is vertical
    assert meanfield.chi1(1.0, 0.3, "relu", numeric=True) == pytest.approx(0.5, rel=1e-9)
    assert meanfield.fixed_point(1.0, 0.3, "relu") == pytest.approx(0.6)
    assert meanfield.fixed_point(2.5, 0.3, "relu") == np.inf


def test_erf_chi1_closed_form_matches_quadrature_of_its_derivative_kernel():
    for w, b in [(0.5, 0.0), (1.0, 0.05), (1.3, 0.05), (2.0, 0.5), (4.0, 1.0)]:
        closed = meanfield.chi1(w, b, "erf")
        numeric = meanfield.chi1(w, b, "erf", numeric=True)
        assert closed == pytest.approx(numeric, rel=1e-6), (w, b)
        q = meanfield.fixed_point(w, b, "erf")
        # χ₁ = σ_w² E[erf'(u)²] with E[erf'(u) erf'(v)] = (4/π) / sqrt((1+2q)² - 4 c² q²) at c=1
        assert closed == pytest.approx(w * 4 / np.pi / np.sqrt(1 + 4 * q), rel=1e-12)


def test_erf_edge_of_chaos_without_bias_is_pi_over_four():
    # With σ_b² = 0 the stable fixed point is q* = 0 up to the edge,
    # where χ₁ = σ_w² erf'(0)² = 4σ_w²/π
    assert meanfield.edge_of_chaos(0.0, "erf") == pytest.approx(np.pi / 4, rel=1e-6)
    assert meanfield.fixed_point(0.5, 0.0, "erf") == 0.0
    assert meanfield.fixed_point(2.0, 0.0, "erf") > 0.1


def test_tanh_edge_of_chaos_without_bias_is_one_by_quadrature():
    # q* = 0 below the edge, so χ₁ = σ_w² tanh'(0)² = σ_w²; the edge is σ_w² = 1
    assert meanfield.chi1(0.5, 0.0, "tanh", numeric=True) == pytest.approx(0.5, rel=1e-6)
    assert meanfield.chi1(0.98, 0.0, "tanh", numeric=True) < 1.0
    assert meanfield.chi1(1.02, 0.0, "tanh", numeric=True) > 1.0


def test_variance_map_closed_forms_match_quadrature():
    for act in ("relu", "erf", "sigmoid"):
        phi = meanfield.NUMERIC[act][0]
        for q in (0.1, 1.0, 5.0):
            numeric = 1.7 * meanfield.gauss_expectation(lambda u, f=phi: f(u) ** 2, q) + 0.2
            assert meanfield.variance_map(q, 1.7, 0.2, act) == pytest.approx(numeric, rel=1e-6)


def _relu_cross(q, c):
    """E[relu(u) relu(v)] by adaptive quadrature over z1 > 0 of the exact inner expectation
    over z2: E[relu(a + b z)] = a Φ(a/b) + b φ(a/b) (no Gauss-Hermite on a kink)."""
    s = np.sqrt(1 - c**2)

    def inner(z1):
        a, b = np.sqrt(q) * c * z1, np.sqrt(q) * s
        return a * scipy.stats.norm.cdf(a / b) + b * scipy.stats.norm.pdf(a / b)

    f = lambda z1: np.sqrt(q) * z1 * inner(z1) * scipy.stats.norm.pdf(z1)  # noqa: E731
    return scipy.integrate.quad(f, 0, np.inf, epsabs=1e-13, epsrel=1e-11)[0]


def test_correlation_map_closed_forms_match_quadrature():
    for act in ("relu", "erf", "sigmoid"):
        phi = meanfield.NUMERIC[act][0]
        for q, c in [(0.7, 0.2), (1.5, -0.4), (3.0, 0.9)]:
            if act == "relu":
                cross = _relu_cross(q, c)
            else:
                cross = _gauss2(lambda u, v, f=phi: f(u) * f(v), q, c)
            expected = (1.3 * cross + 0.1) / meanfield.variance_map(q, 1.3, 0.1, act)
            tol = 1e-7 if act == "relu" else 1e-6  # 2D Gauss-Hermite of order 60 for erf
            assert meanfield.correlation_map(c, q, 1.3, 0.1, act) == pytest.approx(
                expected, rel=tol
            ), (act, q, c)


@pytest.mark.parametrize(
    "act,w,b",
    [("relu", 1.2, 0.1), ("erf", 0.8, 0.05), ("erf", 3.0, 0.3), ("sigmoid", 40.0, 0.0)],
)
def test_chi1_is_the_slope_of_the_correlation_map_at_one(act, w, b):
    q = meanfield.fixed_point(w, b, act)
    assert meanfield.correlation_map(1.0, q, w, b, act) == pytest.approx(1.0, abs=1e-9)
    h = 1e-6
    slope = (1.0 - meanfield.correlation_map(1.0 - h, q, w, b, act)) / h
    assert slope == pytest.approx(meanfield.chi1(w, b, act), rel=2e-3)


def test_phase_points_hit_their_chi_and_are_ordered():
    for act in ("relu", "sigmoid", "erf"):
        pts, chis = meanfield.phase_points(act), meanfield.phase_chis(act)
        assert list(pts) == list(meanfield.PHASES) == list(chis)
        for phase, (w, b) in pts.items():
            assert b == meanfield.BIAS_VAR
            assert meanfield.chi1(w, b, act) == pytest.approx(chis[phase], rel=1e-8)
        ws = [pts[p][0] for p in meanfield.PHASES]
        assert ws == sorted(ws) and len(set(ws)) == 3
    # the authors' ReLU values (ntk_beyond_limit, ntk_train_dynamics.py: var_w_s, var_b = 0)
    relu = meanfield.phase_points("relu")
    assert [relu[p] for p in meanfield.PHASES] == [(1.0, 0.0), (2.0, 0.0), (2.2, 0.0)]


def test_sigmoid_is_the_stax_sigmoid_like_and_close_to_the_logistic():
    from neural_tangents import stax

    x = np.linspace(-6, 6, 101)
    _, apply_fn, _ = stax.Sigmoid_like()
    ours = meanfield.NUMERIC["sigmoid"][0](x)
    np.testing.assert_allclose(np.asarray(apply_fn((), x)), ours, atol=1e-6)
    assert np.max(np.abs(ours - meanfield.NUMERIC["logistic"][0](x))) < 0.02
    # its χ₁ = 1 line: closed form equals quadrature of the same function; the logistic
    # function's own edge (quadrature) is within 2% of it at σ_b² = 0
    edge = meanfield.edge_of_chaos(0.0, "sigmoid")
    assert meanfield.weight_var_for_chi(1.0, 0.0, "sigmoid", numeric=True) == pytest.approx(
        edge, rel=1e-6
    )
    logistic = meanfield.weight_var_for_chi(1.0, 0.0, "logistic", numeric=True)
    assert logistic == pytest.approx(edge, rel=0.02) and logistic != pytest.approx(edge, rel=1e-3)


def test_correlation_fixed_point_and_depth_scale():
    # ReLU without bias: c* = 1 in every phase (homogeneous; approached polynomially)
    for w in (1.0, 2.0, 2.2):
        assert meanfield.correlation_fixed_point(w, 0.0, "relu") == pytest.approx(1.0, abs=1e-6)
    # sigmoid: c* = 1 in the ordered phase, a fixed point below 1 beyond the edge
    pts = meanfield.phase_points("sigmoid")
    assert meanfield.correlation_fixed_point(*pts["ordered"], "sigmoid") == pytest.approx(1.0)
    c_star = meanfield.correlation_fixed_point(*pts["chaotic"], "sigmoid")
    assert 0.5 < c_star < 0.95
    w, b = pts["chaotic"]
    q = meanfield.fixed_point(w, b, "sigmoid")
    assert meanfield.correlation_map(c_star, q, w, b, "sigmoid") == pytest.approx(c_star)
    # ξ = -1/ln χ₁ in the ordered phase, infinite at and beyond the edge
    assert meanfield.depth_scale(1.0, 0.0, "relu") == pytest.approx(1 / np.log(2))
    assert meanfield.depth_scale(*pts["ordered"], "sigmoid") == pytest.approx(1 / np.log(2))
    assert meanfield.depth_scale(2.0, 0.0, "relu") == np.inf
    with pytest.raises(ValueError, match="q"):
        meanfield.correlation_fixed_point(2.2, 0.1, "relu")


def test_bad_activation_is_refused():
    with pytest.raises(ValueError, match="relu"):
        meanfield.chi1(1.0, 0.0, "gelu")
    with pytest.raises(ValueError, match="chi"):
        meanfield.weight_var_for_chi(0.0, 0.1, "erf")


def test_dispersion_known_values_and_bad_shape():
    base = np.array([[2.0, 1.0], [1.0, 2.0]])
    same = np.stack([base] * 5)
    assert metrics.dispersion(same)["cv_frobenius"] == pytest.approx(0.0)
    scaled = np.stack([base * 0.5, base * 1.5])  # mean = base, deviations ±0.5 base
    d = metrics.dispersion(scaled)
    assert d["cv_frobenius"] == pytest.approx(0.5)
    assert d["cv_diag"] == pytest.approx(np.std([1.0, 3.0], ddof=1) / 2.0)
    with pytest.raises(ValueError, match="S >= 2"):
        metrics.dispersion(base)


def _net(width=32, depth=2, act="relu", w=2.0, b=0.1, out=1):
    return models.fcn(width, depth, out, act=act, W_std=w**0.5, b_std=b**0.5)


def test_vmapped_ntks_equal_per_network_ntks():
    init_fn, apply_fn, _ = _net()
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 7))
    params = models.init_many(init_fn, jax.random.PRNGKey(2), 4, x.shape)
    many = kernels.ntk_many(apply_fn, params, x, chunk=3)
    assert many.shape == (4, 5, 5)
    for s in (0, 3):
        one = jax.tree_util.tree_map(lambda a, s=s: a[s], params)
        np.testing.assert_allclose(
            many[s], kernels.empirical_ntk(apply_fn, one, x), rtol=1e-4, atol=1e-5
        )
    assert not np.allclose(many[0], many[1])  # different initializations


def test_mean_ntk_over_inits_approaches_the_analytic_ntk():
    init_fn, apply_fn, kernel_fn = _net(width=256, depth=1, act="erf", w=1.5, b=0.1)
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 6))
    params = models.init_many(init_fn, jax.random.PRNGKey(4), 64, x.shape)
    mean = kernels.ntk_many(apply_fn, params, x).mean(0)
    exact = kernels.analytic(kernel_fn, x, get="ntk")
    assert np.linalg.norm(mean - exact) / np.linalg.norm(exact) < 0.03


def test_dispersion_shrinks_with_width():
    x = jax.random.normal(jax.random.PRNGKey(5), (4, 6))
    cvs = []
    for width in (16, 256):
        init_fn, apply_fn, _ = _net(width=width, depth=2)
        params = models.init_many(init_fn, jax.random.PRNGKey(6), 48, x.shape)
        cvs.append(metrics.dispersion(kernels.ntk_many(apply_fn, params, x))["cv_frobenius"])
    assert cvs[1] < cvs[0] / 2  # theory: ∝ width^{-1/2}, i.e. a factor 4 here


def test_top_eigenvalue_by_power_iteration_matches_the_full_ntk():
    init_fn, apply_fn, _ = _net(out=3)
    x = jax.random.normal(jax.random.PRNGKey(7), (6, 5))
    params = models.init_many(init_fn, jax.random.PRNGKey(8), 2, x.shape)
    lam = kernels.top_ntk_eigenvalue(apply_fn, params, x, iters=200)
    for s in range(2):
        one = jax.tree_util.tree_map(lambda a, s=s: a[s], params)
        full = kernels.empirical_ntk(apply_fn, one, x, trace_axes=())  # (n, n, k, k)
        mat = np.transpose(full, (0, 2, 1, 3)).reshape(18, 18)
        assert lam[s] == pytest.approx(np.linalg.eigvalsh(mat)[-1], rel=1e-3)


def test_train_many_matches_single_network_training():
    init_fn, apply_fn, _ = _net(out=2)
    x = jax.random.normal(jax.random.PRNGKey(9), (8, 5))
    y = jax.random.normal(jax.random.PRNGKey(10), (8, 2))
    params = models.init_many(init_fn, jax.random.PRNGKey(11), 3, x.shape)
    rates = np.array([0.1, 0.3, 0.5])
    final, losses = train.train_many(apply_fn, params, x, y, rates, steps=30, chunk_steps=7)
    assert losses.shape == (3, 30)
    assert np.all(losses[:, -1] < losses[:, 0])
    one = jax.tree_util.tree_map(lambda a: a[1], params)
    ref = train.train(apply_fn, one, x, y, optimizer=optax.sgd(0.3), steps=30, progress=False)
    np.testing.assert_allclose(losses[1], ref.loss, rtol=1e-4)
    out = models.apply_many(apply_fn, final, x)
    np.testing.assert_allclose(out[1], np.asarray(apply_fn(ref.params, x)), rtol=1e-4, atol=1e-5)


def test_relative_changes():
    k0 = np.stack([np.eye(3), 2 * np.eye(3)])
    kt = np.stack([1.5 * np.eye(3), 2 * np.eye(3)])
    np.testing.assert_allclose(metrics.relative_change(kt, k0), [0.5, 0.0])


def test_ensemble_prediction_matches_neural_tangents():
    _, _, kernel_fn = _net(act="erf", w=1.5, b=0.1)
    key1, key2, key3 = jax.random.split(jax.random.PRNGKey(12), 3)
    xt = jax.random.normal(key1, (10, 4))
    xs = jax.random.normal(key2, (3, 4))
    y = jax.random.normal(key3, (10, 2))
    blocks = {}
    for name in ("nngp", "ntk"):
        blocks[name] = {
            "tt": kernels.analytic(kernel_fn, xt, get=name),
            "st": kernels.analytic(kernel_fn, xs, xt, get=name),
            "ss": kernels.analytic(kernel_fn, xs, get=name),
        }
    nt_predict = nt.predict.gradient_descent_mse_ensemble(kernel_fn, xt, y)
    for t in (0.0, 5.0, 50.0):
        mean, cov = predict.ensemble_prediction(blocks["nngp"], blocks["ntk"], np.asarray(y), t)
        ref = nt_predict(t, xs, get="ntk", compute_cov=True)
        np.testing.assert_allclose(mean, np.asarray(ref.mean), rtol=2e-3, atol=2e-4)
        np.testing.assert_allclose(cov, np.asarray(ref.covariance), rtol=2e-3, atol=2e-4)
    mean0, cov0 = predict.ensemble_prediction(blocks["nngp"], blocks["ntk"], np.asarray(y), 0.0)
    np.testing.assert_allclose(mean0, 0.0, atol=1e-12)
    np.testing.assert_allclose(cov0, blocks["nngp"]["ss"], rtol=1e-6)


def test_log_moment_ratio_known_values():
    # two equally likely values 1 and 3: E[v²] = 5, E[v]² = 4
    v = np.array([[1.0, 2.0], [3.0, 2.0]])
    assert metrics.log_moment_ratio(v) == pytest.approx(np.log(5 / 4) / 2)
    # a log-normal with σ² = 0.3: log(E[v²]/E[v]²) = σ²
    rng = np.random.default_rng(0)
    ln = np.exp(rng.normal(0.0, 0.3**0.5, size=(200_000, 3)))
    assert metrics.log_moment_ratio(ln) == pytest.approx(0.3, rel=0.03)
    with pytest.raises(ValueError, match="S >= 2"):
        metrics.log_moment_ratio(np.ones((1, 3)))

"""ntkrepro.predict.ensemble_change: the covariance over initializations of f_t - f_0 of an
infinitely wide network, against the per-member linearized flow and a Monte-Carlo ensemble."""

from __future__ import annotations

import numpy as np
import pytest

from ntkrepro import predict


def _blocks(n: int, m: int, seed: int):
    """NNGP and NTK blocks of random positive-definite kernels on n train + m test points."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        z = rng.normal(size=(n + m, n + m + 3))
        k = z @ z.T / z.shape[1] + 0.5  # a constant mode, as deep kernels have
        out.append({"tt": k[:n, :n], "st": k[n:, :n], "ss": k[n:, n:]})
    return out


def test_change_is_the_linear_flow_of_the_initial_train_outputs():
    n, m, k, t = 6, 4, 2, 7.0
    nngp, ntk = _blocks(n, m, 0)
    y = np.random.default_rng(1).normal(size=(n, k))
    mean, cov = predict.ensemble_change(nngp, ntk, y, t)
    # gradient_flow_from is linear in f_0: f_t - f_0 = A (y - f0_train), read off column by column
    zeros = np.zeros((1, m, k))
    at_y = predict.gradient_flow_from(ntk["tt"], ntk["st"], y, np.zeros((1, n, k)), zeros, t)[0]
    np.testing.assert_allclose(mean, at_y, rtol=1e-10, atol=1e-12)
    unit = np.repeat(np.eye(n)[:, :, None], k, axis=2)  # member i starts at e_i, y = 0
    cols = predict.gradient_flow_from(
        ntk["tt"], ntk["st"], np.zeros((n, k)), unit, np.zeros((n, m, k)), t
    )
    a = -cols[:, :, 0].T  # (m, n)
    np.testing.assert_allclose(cov, a @ nngp["tt"] @ a.T, rtol=1e-10, atol=1e-12)


def test_change_covariance_matches_a_monte_carlo_ensemble():
    n, m, t, draws = 5, 3, 4.0, 40_000
    nngp, ntk = _blocks(n, m, 2)
    y = np.random.default_rng(3).normal(size=(n, 1))
    full = np.block([[nngp["tt"], nngp["st"].T], [nngp["st"], nngp["ss"]]])
    f0 = np.random.default_rng(4).multivariate_normal(np.zeros(n + m), full, size=draws)
    f0_train, f0_test = f0[:, :n, None], f0[:, n:, None]
    ft = predict.gradient_flow_from(ntk["tt"], ntk["st"], y, f0_train, f0_test, t)
    change = (ft - f0_test)[:, :, 0]
    mean, cov = predict.ensemble_change(nngp, ntk, y, t)
    np.testing.assert_allclose(change.mean(0), mean[:, 0], atol=0.02 * np.sqrt(np.diag(cov)).max())
    np.testing.assert_allclose(np.cov(change.T), cov, rtol=0.05, atol=0.02 * np.abs(cov).max())
    # and the full prediction of f_t is consistent with the same ensemble
    _, cov_t = predict.ensemble_prediction(nngp, ntk, y, t)
    np.testing.assert_allclose(np.cov(ft[:, :, 0].T), cov_t, rtol=0.05, atol=0.02 * cov_t.max())


def test_change_vanishes_at_time_zero_and_removes_the_train_outputs_at_infinity():
    n, m = 6, 3
    nngp, ntk = _blocks(n, m, 5)
    y = np.ones((n, 2))
    mean, cov = predict.ensemble_change(nngp, ntk, y, 0.0)
    assert np.abs(mean).max() == 0.0 and np.abs(cov).max() == 0.0
    # test points equal to train points: f_inf - f_0 = y - f_0(X), covariance K_tt
    same = {"tt": ntk["tt"], "st": ntk["tt"], "ss": ntk["tt"]}
    mean, cov = predict.ensemble_change(nngp, same, y, np.inf)
    np.testing.assert_allclose(mean, y, rtol=1e-8)
    np.testing.assert_allclose(cov, nngp["tt"], rtol=1e-8)
    with pytest.raises(KeyError):
        predict.ensemble_change({"st": nngp["st"]}, ntk, y, 1.0)

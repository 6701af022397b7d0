"""Unit tests of the helpers added for the lee2020 chapter (synthetic data only)."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import ntkrepro  # noqa: F401  (applies the neural-tangents compatibility patches)
from ntkrepro import data, kernels, memory, metrics, models, predict, train


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 6)).astype(np.float32)
    xt = rng.normal(size=(9, 6)).astype(np.float32)
    y = rng.normal(size=(24, 3)).astype(np.float32)
    init_fn, apply_fn, kernel_fn = models.fcn(64, 1, 3)
    k_tt = kernels.analytic(kernel_fn, x)
    k_st = kernels.analytic(kernel_fn, xt, x)
    return x, xt, y, init_fn, apply_fn, kernel_fn, k_tt, k_st


def test_downsample_averages_blocks_and_rejects_bad_factors():
    x = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    out = data.pool(x, 2)
    assert out.shape == (2, 2, 2, 1)
    assert out[0, 0, 0, 0] == pytest.approx(np.mean([0, 1, 4, 5]))
    with pytest.raises(ValueError, match="divisor"):
        data.pool(x, 3)
    with pytest.raises(ValueError, match="NHWC"):
        data.pool(x[..., 0], 2)


def test_ridge_sweep_matches_kernel_regression(small):
    *_, k_tt, k_st = small
    y = small[2]
    regs = [1e-3, 0.1, 10.0]
    sweep = predict.ridge_sweep(k_tt["nngp"], k_st["nngp"], y, regs)
    assert sweep.shape == (3, 9, 3)
    for eps, f in zip(regs, sweep, strict=True):
        expected = predict.kernel_regression(k_tt["nngp"], k_st["nngp"], y, eps)
        np.testing.assert_allclose(f, expected, rtol=1e-6, atol=1e-8)
    # Stronger regularization shrinks the predictions toward zero.
    norms = np.linalg.norm(sweep.reshape(3, -1), axis=1)
    assert norms[0] > norms[1] > norms[2]
    with pytest.raises(ValueError, match=">= 0"):
        predict.ridge_sweep(k_tt["nngp"], k_st["nngp"], y, [-1.0])


def test_ntk_gp_posterior_mean_is_gradient_flow(small):
    x, xt, y, _, _, kernel_fn, k_tt, k_st = small
    _, f = predict.gradient_flow(k_tt["ntk"], k_st["ntk"], y, [5.0])
    mean, var = predict.ntk_gp_posterior(kernel_fn, x, y, xt, 5.0)
    np.testing.assert_allclose(mean, f[0], rtol=1e-4, atol=1e-5)
    assert var.shape == (9,) and np.all(var > 0)
    # At t = 0 the variance is the prior NNGP variance of the test points.
    _, var0 = predict.ntk_gp_posterior(kernel_fn, x, y, xt, 0.0)
    prior = np.diagonal(kernels.analytic(kernel_fn, xt, get="nngp"))
    np.testing.assert_allclose(var0, prior, rtol=1e-4)


@pytest.mark.parametrize("vectorize", [True, False])
def test_train_ensemble_members_follow_their_own_gradient_descent(small, vectorize):
    x, xt, y, init_fn, apply_fn, *_ = small
    keys = [jax.random.PRNGKey(1), jax.random.PRNGKey(2)]
    lr, wd = 0.5, 1e-2
    ens = train.train_ensemble(
        init_fn,
        apply_fn,
        keys,
        x,
        y,
        xt,
        lr=lr,
        steps=15,
        weight_decay=wd,
        centered=True,
        vectorize=vectorize,
        snapshot_steps=[5],
    )
    assert set(ens.snapshots) == {5} and ens.snapshots[5].shape == (2, 9, 3)
    assert ens.f_test.shape == (2, 9, 3) and ens.f0_train.shape == (2, 24, 3)
    for i, key in enumerate(keys):
        _, params0 = init_fn(key, x.shape)
        f0 = apply_fn(params0, x)
        opt = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr))
        alone = train.train(apply_fn, params0, x, y + f0, optimizer=opt, steps=15, progress=False)
        expected = np.asarray(apply_fn(alone.params, xt) - apply_fn(params0, xt))
        np.testing.assert_allclose(ens.f_test[i], expected, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(ens.mean, ens.f_test.mean(0))


def test_train_ensemble_records_divergence_instead_of_raising(small):
    x, xt, y, init_fn, apply_fn, *_ = small
    ens = train.train_ensemble(
        init_fn, apply_fn, [jax.random.PRNGKey(0)], x, y, xt, lr=1e4, steps=50
    )
    assert ens.diverged and ens.diverged_at < 50
    with pytest.raises(ValueError, match="key"):
        train.train_ensemble(init_fn, apply_fn, [], x, y, xt, lr=1.0, steps=1)


def test_kernel_prediction_from_zero_start_is_the_mean_and_tracks_a_wide_network(small):
    x, xt, y, _, _, _, k_tt, k_st = small
    zero_tr, zero_te = np.zeros((1, 24, 3)), np.zeros((1, 9, 3))
    f = predict.gradient_flow_from(k_tt["ntk"], k_st["ntk"], y, zero_tr, zero_te, 3.0)
    _, mean = predict.gradient_flow(k_tt["ntk"], k_st["ntk"], y, [3.0])
    np.testing.assert_allclose(f[0], mean[0])
    # A wide network trained by GD stays close to its own linearized prediction.
    init_fn, apply_fn, kernel_fn = models.fcn(2048, 1, 3)
    kt = kernels.analytic(kernel_fn, x, get="ntk")
    ks = kernels.analytic(kernel_fn, xt, x, get="ntk")
    lr = 0.5 * predict.max_learning_rate(kt, 3)
    ens = train.train_ensemble(
        init_fn, apply_fn, [jax.random.PRNGKey(3)], x, y, xt, lr=lr, steps=40
    )
    own = predict.gradient_flow_from(kt, ks, y, ens.f0_train, ens.f0_test, lr * 40)
    far = predict.gradient_flow_from(kt, ks, y, zero_tr, zero_te, lr * 40)
    assert metrics.rms(ens.f_test, own) < 0.2 * metrics.rms(ens.f_test, far)


def test_predictive_variance_and_peak_memory():
    f = np.stack([np.zeros((4, 2)), np.ones((4, 2))])
    assert metrics.predictive_variance(f) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="members >= 2"):
        metrics.predictive_variance(f[:1])
    assert memory.peak_rss_mib() > 10  # experiments.peak_memory_mib moved to the leaf memory

"""ntkrepro.meanfield, training over many initializations: the learning-rate rule, the
loss and accuracy reached, and where a prediction first fails."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ntkrepro import kernels, metrics, models, predict, train


def _net(width=32, depth=2, act="erf", w=1.5, b=0.1, out=3):
    return models.fcn(width, depth, out, act=act, W_std=w**0.5, b_std=b**0.5)


def test_stable_rates_are_a_fraction_of_the_rate_from_the_full_ntk():
    init_fn, apply_fn, _ = _net()
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 5))
    params = models.init_many(init_fn, jax.random.PRNGKey(1), 2, x.shape)
    rates = predict.stable_rates(apply_fn, params, x, 3, fraction=0.5, iters=200)
    for s in range(2):
        one = jax.tree_util.tree_map(lambda a, s=s: a[s], params)
        full = kernels.empirical_ntk(apply_fn, one, x, trace_axes=())  # (n, n, k, k)
        lam = np.linalg.eigvalsh(np.transpose(full, (0, 2, 1, 3)).reshape(18, 18))[-1]
        assert rates[s] == pytest.approx(0.5 * 2 * 18 / lam, rel=1e-3)
    # the output-averaged NTK of this net is close to k-fold degenerate: the same rate
    ntk = kernels.empirical_ntk(apply_fn, jax.tree_util.tree_map(lambda a: a[0], params), x)
    assert rates[0] == pytest.approx(0.5 * predict.max_learning_rate(ntk, 3), rel=0.3)


def test_stable_rates_train_and_twice_the_stable_rate_blows_up_first():
    init_fn, apply_fn, _ = _net(out=1, act="relu", w=2.0)
    x = jax.random.normal(jax.random.PRNGKey(2), (8, 5))
    y = jax.random.normal(jax.random.PRNGKey(3), (8, 1))
    params = models.init_many(init_fn, jax.random.PRNGKey(4), 3, x.shape)
    rates = predict.stable_rates(apply_fn, params, x, 1, fraction=0.5, iters=100)
    _, losses = train.train_many(apply_fn, params, x, y, rates, steps=200)
    assert np.all(losses[:, -1] < 0.5 * losses[:, 0])
    assert np.all(np.diff(losses[:, :20], axis=1) <= 1e-6 * losses[:, :1])
    # beyond the stable rate the top NTK mode grows at first (a wide enough net may later
    # recover by shrinking its kernel, the catapult of Lewkowycz et al. 2020)
    _, losses = train.train_many(apply_fn, params, x, y, 4 * rates, steps=20)
    assert np.all(~np.isfinite(losses.max(1)) | (losses.max(1) > 2 * losses[:, 0]))


def test_stable_rates_refuse_a_fraction_outside_zero_one():
    init_fn, apply_fn, _ = _net()
    x = np.ones((2, 5), np.float32)
    params = models.init_many(init_fn, jax.random.PRNGKey(5), 1, x.shape)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            predict.stable_rates(apply_fn, params, x, 3, fraction=bad)


def test_loss_ratios_known_values():
    y = np.array([[1.0, -1.0], [0.5, -0.5]])  # mean(y²) = 0.625
    f = np.stack([np.zeros_like(y), y, y + 0.5, np.full_like(y, np.inf)])
    r = metrics.loss_ratios(f, y)
    np.testing.assert_allclose(r[:3], [1.0, 0.0, 0.25 / 0.625])
    assert not np.isfinite(r[3])
    with pytest.raises(ValueError, match="S, n, k"):
        metrics.loss_ratios(y, y)


def test_accuracies_known_values_and_non_finite_outputs():
    labels = np.array([0, 1, 2, 1])
    good = np.eye(3)[labels]
    half = np.eye(3)[[0, 1, 0, 0]]
    bad = good.copy()
    bad[0, 0] = np.nan
    acc = metrics.accuracy(np.stack([good, half, bad]), labels)
    np.testing.assert_allclose(acc[:2], [1.0, 0.5])
    assert np.isnan(acc[2])


def test_crossing_interpolates_in_log_depth():
    depths = [1, 2, 4, 8]
    # reaches 0.5 halfway between depths 2 and 4 (in the loss ratio): at 2 * sqrt(2) in log depth
    assert metrics.crossing(depths, [0.1, 0.3, 0.7, 0.9], 0.5) == pytest.approx(2 * 2**0.5)
    assert metrics.crossing(depths, [0.1, 0.5, 0.7, 0.9], 0.5) == pytest.approx(2.0)
    assert metrics.crossing(depths, [0.1, 0.2, 0.3, 0.4], 0.5) == np.inf
    assert np.isnan(metrics.crossing(depths, [0.6, 0.2, 0.3, 0.4], 0.5))
    assert metrics.crossing(depths, [0.1, 0.2, np.nan, 0.4], 0.5) == 4.0  # diverged: not trained
    with pytest.raises(ValueError, match="increasing"):
        metrics.crossing([2, 1], [0.1, 0.9], 0.5)


def test_finite_stat_and_factor_off():
    v = np.array([1.0, np.nan, 3.0, np.inf])
    assert metrics.finite_stat(v) == 2.0
    assert metrics.finite_stat(v, np.median) == 2.0
    assert np.isnan(metrics.finite_stat(np.array([np.nan, np.inf])))
    assert metrics.factor_off(2.0) == metrics.factor_off(0.5) == 2.0
    assert metrics.factor_off(10.0, 5.0) == metrics.factor_off(2.5, 5.0) == 2.0
    for bad in (0.0, -1.0, np.nan, np.inf):
        assert metrics.factor_off(bad) == np.inf


def test_concat_many_stacks_batches_of_networks():
    init_fn, apply_fn, _ = models.fcn(4, 1, 2)
    a = models.init_many(init_fn, jax.random.PRNGKey(0), 2, (3, 5))
    b = models.init_many(init_fn, jax.random.PRNGKey(1), 3, (3, 5))
    both = models.concat_many(a, b)
    x = np.ones((3, 5), np.float32)
    out = models.apply_many(apply_fn, both, x)
    assert out.shape == (5, 3, 2)
    np.testing.assert_array_equal(out[2:], models.apply_many(apply_fn, b, x))


def test_first_mismatch():
    depths = [1, 2, 4, 8]
    assert metrics.first_mismatch(depths, [1.0, 1.2, 0.9, 1.1], 1.5) is None
    assert metrics.first_mismatch(depths, [1.0, 1.2, 0.6, 2.0], 1.5) == 4
    assert metrics.first_mismatch(depths, [1.0, 3.0, 1.0, 1.0], 1.5) == 2
    assert metrics.first_mismatch(depths, [1.0, np.nan, 1.0, 1.0], 1.5) == 2
    with pytest.raises(ValueError, match="factor"):
        metrics.first_mismatch(depths, [1.0] * 4, 1.0)

"""Unit tests of the helpers of the lee2020 width and best-practices figures (synthetic
data only)."""

from __future__ import annotations

import numpy as np
import pytest

import ntkrepro  # noqa: F401  (applies the neural-tangents compatibility patches)
from ntkrepro import kernels, metrics, models, predict


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_network_max_learning_rate_matches_the_empirical_ntk(parameterization):
    import jax

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5)).astype(np.float32)
    init_fn, apply_fn, _ = models.fcn(32, 1, 3, parameterization=parameterization)
    _, params = init_fn(jax.random.PRNGKey(1), x.shape)
    # Full (not traced) empirical NTK: (n, n, k, k) -> (n k, n k).
    full = kernels.empirical_ntk(apply_fn, params, x, trace_axes=())
    n, k = 12, 3
    matrix = np.asarray(full).transpose(0, 2, 1, 3).reshape(n * k, n * k)
    expected = 2 * n * k / np.linalg.eigvalsh(matrix.astype(np.float64))[-1]
    got = predict.network_max_learning_rate(apply_fn, params, x, iters=200)
    assert got == pytest.approx(expected, rel=1e-3)


def test_standard_parameterization_rate_shrinks_with_width():
    import jax

    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 8)).astype(np.float32)
    rates = {}
    for par in ("ntk", "standard"):
        for width in (32, 512):
            init_fn, apply_fn, _ = models.fcn(width, 1, 2, parameterization=par)
            _, params = init_fn(jax.random.PRNGKey(0), x.shape)
            rates[par, width] = predict.network_max_learning_rate(apply_fn, params, x)
    # Standard: the NTK grows like the width, so the stable rate falls by about 16x.
    assert rates["standard", 32] / rates["standard", 512] > 8
    # NTK parameterization: the kernel converges, the rate changes little.
    assert 0.5 < rates["ntk", 32] / rates["ntk", 512] < 2


def test_network_max_learning_rate_rejects_bad_iters():
    with pytest.raises(ValueError, match="iters"):
        predict.network_max_learning_rate(lambda p, x: x, {}, np.ones((2, 2)), iters=0)


def test_validation_accuracy_uses_only_the_training_kernel():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, size=40)
    y = np.eye(3)[labels] - 1 / 3
    # A kernel that is perfect for the labels: same class -> 1, else 0, plus a ridge.
    k = (labels[:, None] == labels[None, :]).astype(float) + 0.1 * np.eye(40)
    acc = predict.validation_accuracy(k, y, labels, 10, [1e-3, 1.0])
    assert acc.shape == (2,)
    np.testing.assert_allclose(acc, 1.0)
    # Labels of the held-out part are what is scored: permuting them lowers accuracy.
    wrong = labels.copy()
    wrong[30:] = (wrong[30:] + 1) % 3
    assert predict.validation_accuracy(k, y, wrong, 10, [1e-3])[0] == 0.0
    with pytest.raises(ValueError, match="n_val"):
        predict.validation_accuracy(k, y, labels, 40, [1e-3])


def test_centering_targets_leaves_kernel_argmax_unchanged():
    # Why the best-practices table shows no separate effect of target centering on
    # kernel regression: a constant shift of all targets shifts every class equally.
    rng = np.random.default_rng(3)
    a = rng.normal(size=(20, 20))
    k = a @ a.T + np.eye(20)
    ks = rng.normal(size=(7, 20))
    labels = rng.integers(0, 4, size=20)
    plain = predict.kernel_regression(k, ks, np.eye(4)[labels], 0.1)
    centered = predict.kernel_regression(k, ks, np.eye(4)[labels] - 0.25, 0.1)
    np.testing.assert_array_equal(plain.argmax(1), centered.argmax(1))
    assert not np.allclose(plain, centered)


def test_largest_width_drop_finds_the_dip():
    out = metrics.largest_width_drop([8, 16, 32, 64], [0.5, 0.7, 0.6, 0.65], [0, 0, 0, 0])
    assert out["narrow"] == 16 and out["wide"] == 32
    assert out["drop"] == pytest.approx(0.1)
    assert out["z"] == np.inf
    mono = metrics.largest_width_drop([1, 2, 3], [0.1, 0.2, 0.3], [0.01, 0.01, 0.01])
    assert mono["drop"] == pytest.approx(-0.1)
    assert mono["z"] < 0
    noisy = metrics.largest_width_drop([1, 2], [0.5, 0.48], [0.02, 0.02])
    assert noisy["z"] == pytest.approx(0.02 / np.hypot(0.02, 0.02))
    with pytest.raises(ValueError, match="two widths"):
        metrics.largest_width_drop([1], [0.1], [0.0])

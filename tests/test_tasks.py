"""Kernel-defined tasks (ntkrepro.tasks)."""

from __future__ import annotations

import numpy as np
import pytest

from ntkrepro import data, metrics


def test_eigen_indices_are_log_spaced_distinct_and_in_range():
    ks = data.eigen_indices(1000, 9)
    assert ks[0] == 1 and ks[-1] == 500 and ks == sorted(set(ks))
    ratios = np.diff(np.log(ks[2:]))  # (rounding distorts the first steps)
    assert np.all(np.abs(ratios - ratios.mean()) < 0.1), ks
    with pytest.raises(ValueError):
        data.eigen_indices(2, 3)  # no index between 1 and n // 2
    with pytest.raises(ValueError):
        data.eigen_indices(100, 0)


def test_eigenfunction_labels_are_signs_of_the_chosen_column():
    v = np.array([[0.5, -0.1], [-0.2, 0.0], [0.1, 0.3]])
    np.testing.assert_array_equal(data.eigenfunction_labels(v, 1).ravel(), [-1, 1, 1])
    assert data.eigenfunction_labels(v, 0).shape == (3, 1)
    assert metrics.balance(np.array([1, 1, -1, 1])) == 0.75


def test_spearman():
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert metrics.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert abs(metrics.spearman([1, 2, 3, 4], [2, 4, 1, 3])) < 1


def test_neighbour_agreement_separates_smooth_from_random_labels():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    smooth = np.sign(x[:, 0])
    noise = np.sign(rng.normal(size=200))
    assert metrics.neighbour_agreement(x, smooth) > 0.85
    assert abs(metrics.neighbour_agreement(x, noise) - 0.5) < 0.15

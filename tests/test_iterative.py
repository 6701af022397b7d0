"""Iterative linearised training (ntkrepro.train.train_iterative_linearization)."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from ntkrepro import models, train


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(24, 5)).astype(np.float32)
    y = np.sign(rng.normal(size=(24, 3))).astype(np.float32)
    init_fn, apply_fn, _ = models.fcn(32, 2, 3, parameterization="standard")
    _, params = init_fn(jax.random.PRNGKey(3), x.shape)
    return x, y, apply_fn, params


def leaves_close(a, b, **tol):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), **tol)


@pytest.mark.parametrize("batch_size", [None, 8])
def test_k1_is_ordinary_gradient_descent(setup, batch_size):
    x, y, apply_fn, params = setup
    opt = optax.sgd(0.05, momentum=0.9)  # stateful: the state must run on across re-linearizations
    kw = dict(optimizer=opt, steps=30, batch_size=batch_size, loss="xent", chunk_size=7)
    kw["key"] = jax.random.PRNGKey(5)
    gd = train.train(apply_fn, params, x, y, progress=False, **kw)
    it = train.train_iterative_linearization(
        apply_fn, params, x, y, relinearize_every=1, progress=False, **kw
    )
    np.testing.assert_allclose(it.loss, gd.loss, rtol=1e-6, atol=1e-7)
    leaves_close(it.params, gd.params, rtol=1e-5, atol=1e-6)
    assert it.feature_updates == 29 and gd.loss[-1] < gd.loss[0]


def test_k_none_trains_the_fixed_linearization(setup):
    x, y, apply_fn, params = setup
    kw = dict(optimizer=optax.sgd(0.2), steps=40, chunk_size=15)
    lin = train.train(train.linearize(apply_fn, params), params, x, y, progress=False, **kw)
    it = train.train_iterative_linearization(
        apply_fn, params, x, y, relinearize_every=None, progress=False, **kw
    )
    np.testing.assert_allclose(it.loss, lin.loss, rtol=1e-5, atol=1e-7)
    leaves_close(it.params, lin.params, rtol=1e-5, atol=1e-6)
    leaves_close(it.anchor, params, rtol=0, atol=0)
    assert it.feature_updates == 0
    # ... and differs from gradient descent on the network (the check above can fail).
    gd = train.train(apply_fn, params, x, y, progress=False, **kw)
    assert abs(gd.loss[-1] - it.loss[-1]) > 1e-4


def test_k_steps_on_each_linearization_then_relinearize(setup):
    """K = 4 over 10 steps = 4 steps on the linearization at θ0, 4 at θ4, 2 at θ8."""
    x, y, apply_fn, params = setup
    opt = optax.sgd(0.05)  # stateless, so the run can be split into pieces
    it = train.train_iterative_linearization(
        apply_fn,
        params,
        x,
        y,
        optimizer=opt,
        steps=10,
        relinearize_every=4,
        snapshot_steps=[0, 5, 10],
        chunk_size=3,
        progress=False,
    )
    p, losses, anchors = params, [], {}
    for start, n in [(0, 4), (4, 4), (8, 2)]:
        anchors[start] = p
        piece = train.train(
            train.linearize(apply_fn, p), p, x, y, optimizer=opt, steps=n, progress=False
        )
        p = piece.params
        losses.append(piece.loss)
    np.testing.assert_allclose(it.loss, np.concatenate(losses), rtol=1e-5, atol=1e-7)
    leaves_close(it.params, p, rtol=1e-5, atol=1e-6)
    leaves_close(it.anchor, anchors[8], rtol=1e-5, atol=1e-6)
    leaves_close(it.anchors[5], anchors[4], rtol=1e-5, atol=1e-6)
    assert sorted(it.snapshots) == [0, 5, 10] and it.feature_updates == 2
    f = train.linearize(apply_fn, it.anchor)(it.params, x)
    assert f.shape == (24, 3)


@pytest.mark.parametrize(
    ("k", "steps", "expected"), [(1, 10, 9), (3, 10, 3), (5, 10, 1), (10, 10, 0), (None, 10, 0)]
)
def test_feature_update_count(setup, k, steps, expected):
    x, y, apply_fn, params = setup
    it = train.train_iterative_linearization(
        apply_fn,
        params,
        x,
        y,
        optimizer=optax.sgd(0.01),
        steps=steps,
        relinearize_every=k,
        progress=False,
    )
    assert it.feature_updates == expected and it.relinearize_every == k


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_period_fails_before_compute(setup, bad):
    x, y, apply_fn, params = setup
    with pytest.raises(ValueError, match="relinearize_every"):
        train.train_iterative_linearization(
            apply_fn, params, x, y, optimizer=optax.sgd(0.1), steps=5, relinearize_every=bad
        )


def test_divergence_is_recorded(setup):
    x, y, apply_fn, params = setup
    it = train.train_iterative_linearization(
        apply_fn,
        params,
        x,
        y,
        optimizer=optax.sgd(1e4),
        steps=50,
        relinearize_every=2,
        progress=False,
    )
    assert it.diverged and it.diverged_at < 50


def test_unrolled_chunks_match_the_scan_loop(setup):
    x, y, apply_fn, params = setup
    kw = dict(optimizer=optax.sgd(0.05), steps=12, relinearize_every=5, progress=False)
    looped = train.train_iterative_linearization(apply_fn, params, x, y, **kw)
    unrolled = train.train_iterative_linearization(
        apply_fn, params, x, y, unroll=True, chunk_size=4, **kw
    )
    np.testing.assert_allclose(unrolled.loss, looped.loss, rtol=1e-5, atol=1e-7)
    leaves_close(unrolled.params, looped.params, rtol=1e-5, atol=1e-6)
    assert unrolled.feature_updates == looped.feature_updates == 2

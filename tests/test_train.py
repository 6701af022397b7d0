"""Training loops (ntkrepro.train)."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

from ntkrepro import kernels, models, train


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6)).astype(np.float32)
    y = np.sign(rng.normal(size=(32, 2))).astype(np.float32)
    init_fn, apply_fn, _ = models.fcn(64, 1, 2)
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    return x, y, apply_fn, params


def test_scan_chunks_equal_a_python_loop_of_steps(setup):
    x, y, apply_fn, params = setup
    opt = optax.sgd(0.5)
    res = train.train(
        apply_fn, params, x, y, optimizer=opt, steps=25, chunk_size=10, progress=False
    )
    p, state = params, opt.init(params)
    losses = []
    for _ in range(25):
        loss, g = jax.value_and_grad(lambda q: train.mse(apply_fn(q, x), y))(p)
        upd, state = opt.update(g, state, p)
        p = optax.apply_updates(p, upd)
        losses.append(float(loss))
    np.testing.assert_allclose(res.loss, losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(p), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert res.loss[-1] < res.loss[0] and not res.diverged


def test_snapshots_at_requested_steps(setup):
    x, y, apply_fn, params = setup
    res = train.train(
        apply_fn,
        params,
        x,
        y,
        optimizer=optax.sgd(0.5),
        steps=20,
        snapshot_steps=[0, 7, 20],
        chunk_size=6,
        progress=False,
    )
    assert sorted(res.snapshots) == [0, 7, 20]
    short = train.train(apply_fn, params, x, y, optimizer=optax.sgd(0.5), steps=7, progress=False)
    for a, b in zip(jax.tree.leaves(res.snapshots[7]), jax.tree.leaves(short.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert len(res.loss) == 20


def test_divergence_is_recorded_not_raised(setup):
    x, y, apply_fn, params = setup
    res = train.train(
        apply_fn, params, x, y, optimizer=optax.sgd(1e4), steps=200, chunk_size=50, progress=False
    )
    assert res.diverged and 0 < res.diverged_at < 200
    assert not np.isfinite(res.loss[-1]) and np.all(np.isfinite(res.loss[:-1]))
    assert len(res.loss) == res.diverged_at + 1


def test_minibatches_are_deterministic_given_the_key(setup):
    x, y, apply_fn, params = setup
    kw = dict(optimizer=optax.sgd(0.1), steps=12, batch_size=8, progress=False)
    a = train.train(apply_fn, params, x, y, key=jax.random.PRNGKey(3), **kw)
    b = train.train(apply_fn, params, x, y, key=jax.random.PRNGKey(3), **kw)
    c = train.train(apply_fn, params, x, y, key=jax.random.PRNGKey(4), **kw)
    np.testing.assert_array_equal(a.loss, b.loss)
    assert not np.allclose(a.loss, c.loss)
    with pytest.raises(ValueError, match="batch_size"):
        train.train(apply_fn, params, x, y, optimizer=optax.sgd(0.1), steps=1, batch_size=99)


def test_trained_linearization_follows_its_empirical_ntk(setup):
    x, y, apply_fn, params = setup
    f_lin = train.linearize(apply_fn, params)
    # The full kernel: at finite width outputs share hidden weights, so Θ has cross-output
    # blocks that the output-traced kernel drops.
    full = kernels.empirical_ntk(apply_fn, params, x, trace_axes=())  # (n, n, k, k)
    n, k_out = y.shape
    k = np.asarray(full, np.float64).transpose(0, 2, 1, 3).reshape(n * k_out, n * k_out)
    lr, steps = 0.2 * 2 * y.size / np.linalg.eigvalsh(k)[-1], 200
    res = train.train(f_lin, params, x, y, optimizer=optax.sgd(lr), steps=steps, progress=False)
    f0 = np.asarray(apply_fn(params, x), np.float64)
    # Gradient descent on a linear model, in function space: f <- f - lr K (f - y) / (n k).
    f = f0.reshape(-1)
    for _ in range(steps):
        f = f - lr * k @ (f - y.reshape(-1)) / y.size
    np.testing.assert_allclose(np.asarray(f_lin(res.params, x)), f.reshape(n, k_out), atol=2e-3)


def test_losses():
    f = np.array([[2.0, -1.0]])
    y = np.array([[1.0, -1.0]])
    assert float(train.mse(f, y)) == pytest.approx(0.25)
    one = np.ones((1, 1), np.float32)
    assert float(train.sigmoid_bce(0 * one, one)) == pytest.approx(np.log(2))
    with pytest.raises(ValueError, match="unknown loss"):
        train.train(lambda p, x: x, {}, f, y, optimizer=optax.sgd(1.0), steps=1, loss="l1")


def test_train_reuses_one_compilation_per_model_and_optimizer():
    init_fn, apply_fn, _ = models.fcn(8, 1, 1)
    x = np.random.RandomState(0).randn(16, 3).astype(np.float32)
    y = np.ones((16, 1), np.float32)
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    opt = optax.sgd(0.1)
    first = train.train(apply_fn, params, x, y, optimizer=opt, steps=3, progress=False)
    hits = train._chunk.cache_info().hits
    again = train.train(apply_fn, params, x, y, optimizer=opt, steps=3, progress=False)
    assert train._chunk.cache_info().hits == hits + 1
    np.testing.assert_array_equal(first.loss, again.loss)


def test_progress_bars_are_off_under_ntkrepro_run(monkeypatch):
    from ntkrepro import progress

    monkeypatch.setenv("NTKREPRO_PROGRESS", "0")
    assert not progress.enabled() and progress.tqdm(range(3)).disable
    monkeypatch.setenv("NTKREPRO_PROGRESS", "1")
    assert progress.enabled() and not progress.tqdm(range(3)).disable
    assert progress.tqdm(range(3), disable=True).disable


def _same(a, b) -> bool:
    """Bit-for-bit equality of two pytrees of arrays."""
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(np.array_equal(u, v) for u, v in pairs)


def test_linearize_is_nt_linearize_operation_for_operation(setup):
    import neural_tangents as nt

    x, y, apply_fn, params = setup
    kw = dict(optimizer=optax.sgd(0.5), steps=12, chunk_size=5, progress=False)
    ours = train.train(train.linearize(apply_fn, params), params, x, y, **kw)
    theirs = train.train(nt.linearize(apply_fn, params), params, x, y, **kw)
    assert _same(ours.params, theirs.params) and np.array_equal(ours.loss, theirs.loss)
    tangent = train.linearize(apply_fn, params, offset=False)
    np.testing.assert_array_equal(tangent(params, x), 0.0)  # the zero function at the anchor


def test_unvectorized_ensemble_members_are_single_runs(setup):
    x, y, _, _ = setup
    init_fn, apply_fn, _ = models.fcn(16, 1, 2)
    keys = [jax.random.PRNGKey(i) for i in range(2)]
    kw = dict(lr=0.3, steps=9, weight_decay=1e-3, chunk_size=4, vectorize=False)
    ens = train.train_ensemble(init_fn, apply_fn, keys, x, y, x[:5], **kw)
    opt = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.3))
    kw = dict(optimizer=opt, steps=9, chunk_size=4, progress=False)
    runs = [train.train(apply_fn, init_fn(key, x.shape)[1], x, y, **kw) for key in keys]
    vmapped = jax.jit(jax.vmap(apply_fn, in_axes=(0, None)))
    f = np.asarray(vmapped(train._stack([r.params for r in runs]), x[:5]))
    np.testing.assert_array_equal(ens.f_test, f)
    np.testing.assert_array_equal(ens.loss, np.mean([r.loss for r in runs], axis=0))


def test_train_many_broadcasts_one_rate_and_never_stops(setup):
    x, y, _, _ = setup
    init_fn, apply_fn, _ = models.fcn(16, 1, 2)
    params = models.init_many(init_fn, jax.random.PRNGKey(3), 3, x.shape)
    one = train.train_many(apply_fn, params, x, y, 0.2, steps=15, chunk_steps=4)
    vec = train.train_many(apply_fn, params, x, y, np.full(3, 0.2), steps=15, chunk_steps=4)
    assert _same(one, vec) and one[1].shape == (3, 15) and one[1].dtype == np.float64
    _, losses = train.train_many(apply_fn, params, x, y, [0.2, 0.2, 1e3], steps=15)
    assert np.all(np.isfinite(losses[:2])) and not np.all(np.isfinite(losses[2]))
    assert train.train_many(apply_fn, params, x, y, 0.2, steps=0)[1].shape == (3, 0)

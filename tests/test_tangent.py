"""Linearized training on tangent features (ntkrepro.train.train_linearized): the same
trajectory as training ``train.linearize`` with ``train.train``, in function space (eNTK) and
on the Jacobian."""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax
import pytest

from ntkrepro import kernels, models, train

N, M = 40, 15  # training and evaluation examples
# Momentum and a warm-up/cosine schedule: the function-space path must follow both. One
# optimizer object and one model per architecture, so that runs share their compilations.
OPT = optax.sgd(optax.warmup_cosine_decay_schedule(0.0, 0.5, 10, 50), momentum=0.9)


@functools.cache
def _model(arch: str, k: int):
    """``(init_fn, apply_fn)``: one object per architecture, shared by the tests."""
    return (models.fcn(32, 2, k) if arch == "mlp" else models.cnn(4, 1, k))[:2]


@functools.cache
def _task(arch: str, k: int, seed: int = 0):
    """Inputs, centered one-hot targets, the model, its parameters and its linearization
    (jitted: evaluating the jvp op by op compiles each operation)."""
    rng = np.random.default_rng(seed)
    shape = (6,) if arch == "mlp" else (6, 6, 1)
    x = rng.normal(size=(N + M, *shape)).astype(np.float32)
    y = np.eye(k, dtype=np.float32)[rng.integers(0, k, N)] - 1.0 / k
    init_fn, apply_fn = _model(arch, k)
    _, params = init_fn(jax.random.PRNGKey(seed), x.shape)
    return x[:N], y, x[N:], apply_fn, params, jax.jit(train.linearize(apply_fn, params))


def _recipe(loss: str, steps: int = 50, **extra) -> dict:
    return dict(optimizer=OPT, steps=steps, loss=loss, batch_size=8, progress=False, **extra)


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


# With test_linearization_from_theta_t (MLP, MSE): both models, both losses.
@pytest.mark.parametrize(("arch", "loss"), [("mlp", "xent"), ("cnn", "mse"), ("cnn", "xent")])
def test_same_trajectory_as_training_the_linearization(arch, loss):
    x, y, xe, apply_fn, params, f_lin = _task(arch, 2)
    kw = _recipe(loss, key=jax.random.PRNGKey(7), snapshot_steps=[0, 25, 50])
    ref = train.train(f_lin, params, x, y, **kw)
    want = np.asarray(f_lin(ref.params, xe))
    moved = _rel(np.asarray(f_lin(params, xe)), want)
    assert moved > 0.1  # training changed the outputs: the comparison below can fail
    for method in ("ntk", "jacobian"):
        res = train.train_linearized(apply_fn, params, x, y, xe, method=method, **kw)
        assert res.method == method and not res.diverged
        assert _rel(res.f_eval, want) < 1e-4, method
        assert _rel(res.f_train, f_lin(ref.params, x)) < 1e-4, method
        np.testing.assert_allclose(res.loss, ref.loss, rtol=1e-4, atol=1e-6)
        assert sorted(res.snapshots) == sorted(res.train_snapshots) == [0, 25, 50]
        assert _rel(res.snapshots[25], f_lin(ref.snapshots[25], xe)) < 1e-4
        np.testing.assert_allclose(res.snapshots[0], apply_fn(params, xe), rtol=1e-5, atol=1e-6)
    # A different minibatch order is a different trajectory.
    other = train.train_linearized(
        apply_fn, params, x, y, xe, **{**kw, "key": jax.random.PRNGKey(8)}
    )
    assert _rel(other.f_eval, want) > 1e-3


def test_linearization_from_theta_t():
    x, y, xe, apply_fn, params0, _ = _task("mlp", 2)
    theta_t = train.train(apply_fn, params0, x, y, **_recipe("mse")).params
    kw = _recipe("mse", key=jax.random.PRNGKey(2), snapshot_steps=[0])
    want = {}
    for offset in (True, False):  # from f(θ_t), and the tangent model (zero at θ_t)
        f_lin = jax.jit(train.linearize(apply_fn, theta_t, offset=offset))
        want[offset] = np.asarray(f_lin(train.train(f_lin, theta_t, x, y, **kw).params, xe))
        for method in ("ntk", "jacobian"):
            res = train.train_linearized(
                apply_fn, theta_t, x, y, xe, method=method, offset=offset, **kw
            )
            assert _rel(res.f_eval, want[offset]) < 1e-4, (offset, method)
            assert 0 in res.snapshots
            assert np.abs(res.snapshots[0]).max() == 0.0 or offset  # the tangent model: zero
    assert _rel(want[False], want[True]) > 1e-2
    # The anchor matters: the linearization at θ_0 ends elsewhere.
    at_init = train.train_linearized(apply_fn, params0, x, y, xe, **kw)
    assert _rel(at_init.f_eval, want[True]) > 1e-2


def test_weight_decay_through_the_jacobian_path():
    x, y, xe, apply_fn, params, f_lin = _task("cnn", 2)
    kw = _recipe("mse", key=jax.random.PRNGKey(3))
    kw["optimizer"] = optax.chain(optax.add_decayed_weights(0.05), kw["optimizer"])
    ref = train.train(f_lin, params, x, y, **kw)
    want = np.asarray(f_lin(ref.params, xe))
    res = train.train_linearized(apply_fn, params, x, y, xe, method="jacobian", **kw)
    assert _rel(res.f_eval, want) < 1e-4
    for a, b in zip(jax.tree.leaves(res.params), jax.tree.leaves(ref.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # Weight decay is linear in θ, so the function-space path runs it too (on J θ).
    assert _rel(train.train_linearized(apply_fn, params, x, y, xe, **kw).f_eval, want) < 1e-4
    no_decay = train.train(f_lin, params, x, y, **_recipe("mse", key=kw["key"])).params
    assert _rel(f_lin(no_decay, xe), want) > 1e-3  # the decay made a difference


def test_eval_outputs_by_kernel_block_and_by_vjp_jvp_agree(monkeypatch):
    # With a few evaluations of x_eval the function-space path pulls α back (vjp) and pushes it
    # forward (jvp); with more it computes Θ[eval, train]. Weight decay moves θ off the span of
    # the training Jacobians (s ≠ 1), which both must carry.
    x, y, xe, apply_fn, params, f_lin = _task("mlp", 2)
    opt = optax.chain(optax.add_decayed_weights(0.05), OPT)
    kw = {**_recipe("xent", key=jax.random.PRNGKey(6)), "optimizer": opt}
    ref = train.train(f_lin, params, x, y, **kw, snapshot_steps=[10, 20, 30, 40])
    pullbacks = []
    pullback = train._pullback
    monkeypatch.setattr(train, "_pullback", lambda *a: pullbacks.append(1) or pullback(*a))
    few = train.train_linearized(apply_fn, params, x, y, xe, **kw, snapshot_steps=[20, 50])
    assert len(pullbacks) == 2  # step 20 and the end (step 50, the same state, reused)
    many = train.train_linearized(apply_fn, params, x, y, xe, **kw, snapshot_steps=[10, 20, 30, 40])
    assert len(pullbacks) == 2  # the kernel block Θ[eval, train] served all five
    np.testing.assert_array_equal(few.snapshots[50], few.f_eval)
    for res in (few, many):
        assert res.method == "ntk"
        assert _rel(res.f_eval, f_lin(ref.params, xe)) < 1e-4
        assert _rel(res.snapshots[20], f_lin(ref.snapshots[20], xe)) < 1e-4
    assert _rel(many.snapshots[40], f_lin(ref.snapshots[40], xe)) < 1e-4


def test_weight_decay_that_starts_late_or_is_masked_is_not_mistaken_for_none():
    # A decay whose learning rate is zero for the first steps still moves θ without a
    # gradient later: s must be kept. A decay masked by leaf shape (matrices only) acts
    # differently on the function-space coordinates: refused there, trained on the Jacobian.
    x, y, xe, apply_fn, params, f_lin = _task("mlp", 2)
    late = optax.join_schedules([optax.constant_schedule(0.0), optax.constant_schedule(0.3)], [10])
    delayed = optax.chain(optax.add_decayed_weights(0.2), optax.sgd(late))
    assert train.moves_without_gradient(delayed)
    kw = {**_recipe("mse", key=jax.random.PRNGKey(9)), "optimizer": delayed}
    want = f_lin(train.train(f_lin, params, x, y, **kw).params, xe)
    assert _rel(train.train_linearized(apply_fn, params, x, y, xe, **kw).f_eval, want) < 1e-4
    matrices = lambda p: jax.tree.map(lambda a: a.ndim > 1, p)  # noqa: E731
    masked = optax.chain(optax.add_decayed_weights(0.2, mask=matrices), optax.sgd(0.3))
    assert train.commutes_with_linear_maps(masked)  # on a flat vector it looks linear...
    assert not train.acts_elementwise_on_the_flat_vector(masked, params)  # ...but it is not
    kw["optimizer"] = masked
    want = f_lin(train.train(f_lin, params, x, y, **kw).params, xe)
    res = train.train_linearized(apply_fn, params, x, y, xe, **kw)
    assert res.method == "jacobian" and _rel(res.f_eval, want) < 1e-4
    with pytest.raises(ValueError, match="depend on the parameters' shapes"):
        train.train_linearized(apply_fn, params, x, y, xe, method="ntk", **kw)


def test_adam_trains_on_the_jacobian_and_is_refused_in_function_space():
    x, y, xe, apply_fn, params, f_lin = _task("mlp", 1)
    kw = dict(_recipe("mse", steps=20), optimizer=optax.adam(1e-2))
    want = np.asarray(f_lin(train.train(f_lin, params, x, y, **kw).params, xe))
    res = train.train_linearized(apply_fn, params, x, y, xe, **kw)
    assert res.method == "jacobian" and _rel(res.f_eval, want) < 1e-4
    with pytest.raises(ValueError, match="commute with linear maps"):
        train.train_linearized(apply_fn, params, x, y, xe, method="ntk", **kw)
    kernel = np.ones((N + M, N + M), np.float32)  # a given kernel means function space
    with pytest.raises(ValueError, match="commute with linear maps"):
        train.train_linearized(apply_fn, params, x, y, xe, ntk=kernel, **kw)
    with pytest.raises(ValueError, match="method='ntk' only"):
        train.train_linearized(apply_fn, params, x, y, xe, ntk=kernel, method="jacobian", **kw)


def test_which_optimizers_commute_with_linear_maps():
    schedule = optax.linear_schedule(0.1, 0.0, 100)
    linear = [
        optax.sgd(0.1),
        optax.sgd(schedule, momentum=0.9),
        optax.sgd(0.1, momentum=0.9, nesterov=True),
        optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(schedule, momentum=0.9)),
    ]
    other = [optax.adam(1e-3), optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1))]
    assert all(train.commutes_with_linear_maps(opt) for opt in linear)
    assert not any(train.commutes_with_linear_maps(opt) for opt in other)
    # Only weight decay moves θ without a gradient (then the function-space path tracks s).
    assert [train.moves_without_gradient(opt) for opt in linear] == [False] * 3 + [True]
    assert not train.moves_without_gradient(optax.adam(1e-3))


def test_a_precomputed_kernel_gives_the_same_run():
    x, y, xe, apply_fn, params, f_lin = _task("mlp", 2)
    x_all = np.concatenate([x, xe])
    kw = _recipe("xent", key=jax.random.PRNGKey(4))
    full = kernels.empirical_ntk(apply_fn, params, x_all, trace_axes=())
    computed = train.train_linearized(apply_fn, params, x, y, xe, **kw)
    given = train.train_linearized(apply_fn, params, x, y, xe, ntk=full, **kw)
    assert computed.method == given.method == "ntk"
    assert _rel(given.f_eval, computed.f_eval) < 1e-5
    # One output: the traced (n, n) kernel is the kernel.
    x1, y1, xe1, apply1, params1, _ = _task("mlp", 1)
    traced = kernels.empirical_ntk(apply1, params1, np.concatenate([x1, xe1]))
    kw1 = _recipe("mse", key=jax.random.PRNGKey(4))
    a = train.train_linearized(apply1, params1, x1, y1, xe1, ntk=traced, **kw1)
    b = train.train_linearized(apply1, params1, x1, y1, xe1, method="jacobian", **kw1)
    assert _rel(a.f_eval, b.f_eval) < 1e-4


def test_wrong_shapes_are_refused_clearly():
    x, y, xe, apply_fn, params, f_lin = _task("mlp", 2)
    kw = _recipe("mse", steps=2)
    with pytest.raises(ValueError, match=r"y_train must be \(n, k\)"):
        train.train_linearized(apply_fn, params, x, y[:, 0], xe, **kw)
    with pytest.raises(ValueError, match=r"y_train must be \(n, k\)"):
        train.train_linearized(apply_fn, params, x[:-1], y, xe, **kw)
    with pytest.raises(ValueError, match="x_eval examples have shape"):
        train.train_linearized(apply_fn, params, x, y, xe[:, :4], **kw)
    with pytest.raises(ValueError, match="k = 3 outputs"):
        train.train_linearized(apply_fn, params, x, np.ones((N, 3), np.float32), xe, **kw)
    with pytest.raises(ValueError, match="ntk must be"):
        train.train_linearized(apply_fn, params, x, y, xe, ntk=np.ones((N, N, 2, 2)), **kw)
    with pytest.raises(ValueError, match="traced"):
        train.train_linearized(apply_fn, params, x, y, xe, ntk=np.ones((N + M, N + M)), **kw)
    with pytest.raises(ValueError, match="method="):
        train.train_linearized(apply_fn, params, x, y, xe, method="kernel", **kw)


def test_divergence_is_recorded_at_the_same_step():
    x, y, xe, apply_fn, params, f_lin = _task("mlp", 1)
    kw = dict(optimizer=optax.sgd(1e3), steps=100, chunk_size=30, progress=False)
    ref = train.train(f_lin, params, x, y, **kw)
    res = train.train_linearized(apply_fn, params, x, y, xe, **kw)
    assert ref.diverged and res.diverged_at == ref.diverged_at
    assert res.diverged_at < 30 and np.all(np.isfinite(res.f_eval))  # outputs at step 0
    assert len(res.loss) == len(ref.loss) == res.diverged_at + 1


def test_minibatch_order_is_one_permutation_per_epoch():
    # Permutations drawn per chunk and epoch (on the host) equal jax.random.permutation's,
    # drawn step by step.
    n, b, key = 30, 7, jax.random.PRNGKey(5)
    plan, index = train._minibatches(n, b)
    index = jax.jit(index)
    per_epoch = n // b
    perms = np.asarray(
        jax.vmap(lambda e: jax.random.permutation(jax.random.fold_in(key, e), n))(np.arange(10))
    )
    for first, length in ((0, 1), (3, 9), (10, 25)):
        drawn = plan(key, first, length)
        for step in range(first, first + length):
            epoch, i = divmod(step, per_epoch)
            np.testing.assert_array_equal(index(drawn, step), perms[epoch, i * b : (i + 1) * b])
    assert train._minibatches(n, None)[0](key, 0, 5) is None


@pytest.mark.parametrize("n", [1, 2, 1000, 1700, 70_000])  # 1700 and 70,000: two sort rounds
def test_host_permutations_are_jax_permutations(n):
    key, epochs = jax.random.PRNGKey(3), np.arange(4, 7)
    want = [np.asarray(jax.random.permutation(jax.random.fold_in(key, e), n)) for e in epochs]
    np.testing.assert_array_equal(train.permutations(key, epochs, n), np.stack(want))

"""Training a network, or its linearization, with optax.

Steps are compiled in chunks: one ``jax.jit`` of a ``lax.scan`` over many optimizer
steps, so Python dispatch does not dominate small models. Snapshots of the parameters
are kept at chosen steps. A loss that becomes NaN/inf stops training and is recorded as
``diverged_at`` instead of raising (diverging is a result, e.g. for large learning rates).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import neural_tangents as nt
import numpy as np
import optax

from ntkrepro import progress as _progress
from ntkrepro.memo import memoized


def mse(f: jax.Array, y: jax.Array) -> jax.Array:
    """``0.5 * mean((f - y)**2)`` over all entries (neural-tangents' convention)."""
    return 0.5 * jnp.mean((f - y) ** 2)


def softmax_xent(f: jax.Array, y: jax.Array) -> jax.Array:
    """Softmax cross-entropy; ``y`` one-hot (or centered one-hot) ``(n, k)``."""
    return jnp.mean(optax.softmax_cross_entropy(f, y > y.min(axis=-1, keepdims=True)))


def sigmoid_bce(f: jax.Array, y: jax.Array) -> jax.Array:
    """Sigmoid binary cross-entropy on one logit; labels ``y`` in {-1, +1}, shape (n, 1)."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(f, (y + 1.0) / 2.0))


LOSSES: dict[str, Callable] = {"mse": mse, "xent": softmax_xent, "bce": sigmoid_bce}


def linearized(apply_fn: Callable, params0) -> Callable:
    """``f_lin(θ, x) = f(θ0, x) + J(θ0, x)(θ - θ0)``: the first-order Taylor model at θ0.

    The offset ``f(θ0, x)`` is kept (not subtracted), as in ``nt.linearize``.
    """
    return nt.linearize(apply_fn, params0)


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
      params: final parameters; after a divergence, those at the start of the chunk
        in which the loss first became non-finite.
      loss: training loss per step, shape ``(steps_done,)``.
      snapshots: ``{step: params}`` at the requested steps (step 0 = init).
      diverged_at: first step whose loss was NaN/inf, else None.
    """

    params: object
    loss: np.ndarray
    snapshots: dict[int, object] = field(default_factory=dict)
    diverged_at: int | None = None

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None


def _make_chunk(apply_fn, loss_fn, optimizer, n: int, batch_size: int | None, unroll=1):
    per_epoch = max(1, n // batch_size) if batch_size else 1

    def batch(x, y, step, key):
        if not batch_size:
            return x, y
        epoch, i = jnp.divmod(step, per_epoch)
        perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
        idx = jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)
        return x[idx], y[idx]

    # Data are arguments, not closure constants: XLA would otherwise constant-fold them.
    @partial(jax.jit, static_argnums=5)
    def chunk(params, opt_state, key, x, y, length, first_step):
        def one_step(carry, step):
            params, opt_state = carry
            xb, yb = batch(x, y, step, key)
            loss, grads = jax.value_and_grad(lambda p: loss_fn(apply_fn(p, xb), yb))(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        steps = first_step + jnp.arange(length)
        (params, opt_state), losses = jax.lax.scan(
            one_step, (params, opt_state), steps, unroll=unroll
        )
        return params, opt_state, losses

    return chunk


_chunk = memoized(16)(_make_chunk)


def _boundaries(steps: int, snapshot_steps: Sequence[int], chunk_size: int) -> list[int]:
    marks = {s for s in snapshot_steps if 0 < s < steps} | {steps}
    marks |= set(range(chunk_size, steps, chunk_size))
    return sorted(marks)


def _check_args(loss: str, steps: int, batch_size: int | None, n: int) -> None:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
    if steps < 0:
        raise ValueError(f"steps={steps} must be >= 0")
    if batch_size is not None and not 0 < batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must be in [1, n={n}]")


def _drive(
    chunk: Callable,
    state: tuple,
    steps: int,
    snapshot_steps: Sequence[int],
    chunk_size: int,
    progress: bool | None,
    desc: str,
) -> tuple[tuple, np.ndarray, dict[int, tuple], int | None]:
    """Run ``chunk(state, length, first_step) -> (state, losses)`` over ``steps`` steps,
    in pieces that end at the snapshot steps, stopping at the first non-finite loss.

    Returns the final state (after a divergence: the state before the diverging chunk),
    the loss curve, ``{step: state}`` at the snapshot steps, and the diverging step.
    """
    snapshots = {0: state} if 0 in snapshot_steps else {}
    losses: list[np.ndarray] = []
    done = 0
    if progress is None:
        progress = _progress.enabled()
    with _progress.tqdm(total=steps, desc=desc, disable=not progress, leave=False) as bar:
        for stop in _boundaries(steps, snapshot_steps, chunk_size):
            new_state, chunk_loss = chunk(state, stop - done, done)
            chunk_loss = np.asarray(chunk_loss)
            bad = np.flatnonzero(~np.isfinite(chunk_loss))
            if bad.size:
                losses.append(chunk_loss[: bad[0] + 1])
                return state, np.concatenate(losses), snapshots, done + int(bad[0])
            state = new_state
            losses.append(chunk_loss)
            bar.update(stop - done)
            done = stop
            if done in snapshot_steps:
                snapshots[done] = state
    return state, (np.concatenate(losses) if losses else np.zeros(0)), snapshots, None


def train(
    apply_fn: Callable,
    params,
    x,
    y,
    *,
    optimizer: optax.GradientTransformation,
    steps: int,
    loss: str = "mse",
    batch_size: int | None = None,
    key: jax.Array | None = None,
    snapshot_steps: Sequence[int] = (),
    chunk_size: int = 100,
    progress: bool | None = None,
    desc: str = "train",
    unroll: int | bool = 1,
) -> TrainResult:
    """Train ``apply_fn(params, x)`` for ``steps`` optimizer steps.

    Args:
      apply_fn: ``(params, x) -> (n, k)`` outputs; pass :func:`linearized` to train the
        linearization.
      x, y: training inputs ``(n, ...)`` and targets ``(n, k)``.
      optimizer: an optax transformation (its schedule counts steps).
      loss: ``"mse"``, ``"xent"`` or ``"bce"`` (see :data:`LOSSES`).
      batch_size: minibatch size (epochs reshuffle with ``key``); None = full batch.
      snapshot_steps: steps at which to keep the parameters (0 = initial parameters).
      chunk_size: steps compiled into one ``lax.scan``.
      progress: show a tqdm bar; None = unless ``$NTKREPRO_PROGRESS`` is ``0`` (set by
        ``ntkrepro run``, so that executed notebooks hold results, not progress logs).
      desc: label of the progress bar.
      unroll: passed to ``lax.scan``; ``True`` unrolls each chunk. XLA on CPU runs
        convolutions inside a loop about 20x slower than unrolled, so convolutional
        models on CPU train much faster with ``unroll=True`` and a small ``chunk_size``
        (compile time grows with the chunk length).
    """
    _check_args(loss, steps, batch_size, x.shape[0])
    key = jax.random.PRNGKey(0) if key is None else key
    x, y = jnp.asarray(x), jnp.asarray(y)
    # Cached like train_iterative_linearization's: one compilation per model and
    # optimizer object (pass the same optimizer to a sweep of runs to compile once).
    chunk_args = (apply_fn, LOSSES[loss], optimizer, x.shape[0], batch_size, unroll)
    chunk = _chunk(*chunk_args)

    def run(state, length, first_step):
        *state, chunk_loss = chunk(*state, key, x, y, length, first_step)
        return tuple(state), chunk_loss

    state = (params, optimizer.init(params))
    (params, _), curve, snaps, diverged_at = _drive(
        run, state, steps, snapshot_steps, chunk_size, progress, desc
    )
    return TrainResult(params, curve, {t: st[0] for t, st in snaps.items()}, diverged_at)


# ------------------------------------------------- iterative linearisation (Goldwaser & Ge)


@dataclass
class IterativeTrainResult(TrainResult):
    """A :class:`TrainResult` of :func:`train_iterative_linearization`, plus where the
    model was linearized.

    Attributes:
      anchor: the last linearization point θ_s; the trained model is
        ``f(θ_s, x) + J(θ_s, x)(params - θ_s)`` (see :func:`linearized_at`).
      anchors: ``{step: θ_s}`` at each snapshot step: the linearization point in force
        after that step, so the model's tangent kernel at that time is the empirical NTK
        at ``anchors[step]``.
      feature_updates: number of re-linearizations after the first linearization at
        step 0 (``ceil(steps / K) - 1`` without divergence; ``steps - 1`` for K = 1, 0 for
        K = None).
      relinearize_every: K (None = never: fixed linearization at the initial parameters).
    """

    anchor: object = None
    anchors: dict[int, object] = field(default_factory=dict)
    feature_updates: int = 0
    relinearize_every: int | None = None


def linearized_at(apply_fn: Callable, params, anchor, x) -> jax.Array:
    """``f(θ_s, x) + J(θ_s, x)(θ - θ_s)``: the first-order Taylor model at ``anchor`` = θ_s,
    evaluated at ``params`` = θ. Outputs ``(n, k)`` like ``apply_fn``."""
    delta = jax.tree_util.tree_map(lambda p, a: p - a, params, anchor)
    f0, df = jax.jvp(lambda q: apply_fn(q, x), (anchor,), (delta,))
    return f0 + df


def _make_iterative_chunk(
    apply_fn, loss_fn, optimizer, n: int, batch_size: int | None, unroll: int | bool = 1
):
    """Like :func:`_make_chunk`, carrying the linearization point θ_s, which is set to the
    current parameters at every step that is a multiple of ``k`` (``k = 0``: never).

    ``k`` is a traced argument, so runs with different periods share one compilation."""
    per_epoch = max(1, n // batch_size) if batch_size else 1

    def batch(x, y, step, key):  # the same minibatch order as train()
        if not batch_size:
            return x, y
        epoch, i = jnp.divmod(step, per_epoch)
        perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
        idx = jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)
        return x[idx], y[idx]

    @partial(jax.jit, static_argnums=6)
    def chunk(params, opt_state, anchor, key, x, y, length, first_step, k):
        def one_step(carry, step):
            params, opt_state, anchor = carry
            relin = (k > 0) & (step % jnp.maximum(k, 1) == 0)
            anchor = jax.tree_util.tree_map(lambda p, a: jnp.where(relin, p, a), params, anchor)
            xb, yb = batch(x, y, step, key)

            def objective(p):
                return loss_fn(linearized_at(apply_fn, p, anchor, xb), yb)

            loss, grads = jax.value_and_grad(objective)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, anchor), loss

        steps = first_step + jnp.arange(length)
        carry, losses = jax.lax.scan(one_step, (params, opt_state, anchor), steps, unroll=unroll)
        return *carry, losses

    return chunk


_iterative_chunk = memoized(16)(_make_iterative_chunk)


def train_iterative_linearization(
    apply_fn: Callable,
    params,
    x,
    y,
    *,
    optimizer: optax.GradientTransformation,
    steps: int,
    relinearize_every: int | None,
    loss: str = "mse",
    batch_size: int | None = None,
    key: jax.Array | None = None,
    snapshot_steps: Sequence[int] = (),
    chunk_size: int = 100,
    progress: bool | None = None,
    desc: str = "iterative linearization",
    unroll: int | bool = 1,
) -> IterativeTrainResult:
    """Iterative linearised training (Goldwaser & Ge 2023).

    At step 0 the network is linearized at θ_s = θ_0; each optimizer step then follows
    the gradient of the loss of the linear model ``f(θ_s) + J(θ_s)(θ - θ_s)``; every
    ``relinearize_every`` = K steps θ_s is reset to the current parameters (a *feature
    update*). K = 1 is ordinary gradient descent (the linear model's gradient at θ = θ_s
    is the network's); K = None (∞) trains the fixed linearization at θ_0, i.e. the
    finite-width fixed-NTK model. The optimizer state (momentum, schedules) runs on
    across re-linearizations, as in :func:`train`, which this mirrors argument for
    argument (same minibatch order for the same ``key``).

    Args:
      apply_fn: ``(params, x) -> (n, k)`` outputs of the network (not linearized).
      relinearize_every: K >= 1, or None for never.
      other arguments: as in :func:`train` (``unroll=True`` with a small ``chunk_size``
        for convolutional models on CPU).

    Returns:
      :class:`IterativeTrainResult`; evaluate the trained model with
      ``linearized_at(apply_fn, result.params, result.anchor, x)``.
    """
    if relinearize_every is not None and (
        isinstance(relinearize_every, bool)
        or not isinstance(relinearize_every, int | np.integer)
        or relinearize_every < 1
    ):
        raise ValueError(
            f"relinearize_every={relinearize_every!r} must be an integer >= 1 "
            "(1 = gradient descent) or None (never re-linearize: fixed NTK)"
        )
    _check_args(loss, steps, batch_size, x.shape[0])
    k = int(relinearize_every or 0)
    key = jax.random.PRNGKey(0) if key is None else key
    x, y = jnp.asarray(x), jnp.asarray(y)
    # Cached, so that runs of one model with one optimizer object (e.g. a sweep over K)
    # compile once; unhashable arguments just build a fresh chunk.
    chunk_args = (apply_fn, LOSSES[loss], optimizer, x.shape[0], batch_size, unroll)
    chunk = _iterative_chunk(*chunk_args)

    def updates_before(step: int) -> int:  # re-linearizations at steps 1..step-1
        return (step - 1) // k if k and step > 0 else 0

    def run(state, length, first_step):
        *state, chunk_loss = chunk(*state, key, x, y, length, first_step, k)
        return tuple(state), chunk_loss

    state = (params, optimizer.init(params), params)  # the anchor starts at θ_0
    (params, _, anchor), curve, snaps, diverged_at = _drive(
        run, state, steps, snapshot_steps, chunk_size, progress, desc
    )
    return IterativeTrainResult(
        params,
        curve,
        {t: st[0] for t, st in snaps.items()},
        diverged_at,
        anchor=anchor,
        anchors={t: st[2] for t, st in snaps.items()},
        feature_updates=updates_before(steps if diverged_at is None else diverged_at + 1),
        relinearize_every=relinearize_every,
    )

"""Training a network, its linearization, or many networks at once, with optax.

One loop serves every mode: chunks of steps compiled as one ``jax.jit`` of a ``lax.scan``
(Python dispatch does not dominate small models), ending at snapshot steps; a NaN/inf
loss stops training and is recorded as ``diverged_at`` (diverging is a result). Outputs
are ``(n, k)``; with the MSE ``0.5 * mean((f - y)**2)``, ``lr * steps`` is the
gradient-flow time of :mod:`ntkrepro.predict`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
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


def linearize(apply_fn: Callable, anchor, *, offset: bool = True) -> Callable:
    """First-order Taylor model at ``anchor`` = θ_a: ``(θ, x) -> f(θ_a, x) + J(θ_a, x)(θ -
    θ_a)``, outputs ``(n, k)`` (``nt.linearize``, operation for operation). ``offset=False``
    drops ``f(θ_a, x)``: the *tangent model*, zero at θ_a, whose kernel is the eNTK at θ_a
    (Ortiz-Jiménez et al. 2021 compare such models at two anchors)."""

    def f(params, x):
        delta = jax.tree_util.tree_map(lambda p, a: p - a, params, anchor)
        f0, df = jax.jvp(lambda q: apply_fn(q, x), (anchor,), (delta,))
        return f0 + df if offset else df

    return f


@dataclass
class TrainResult:
    """``params``: final (after a divergence: at the start of the diverging chunk);
    ``loss`` per step ``(steps_done,)``; ``snapshots`` ``{step: params}`` (0 = init);
    ``diverged_at``: the first step with a NaN/inf loss, else None."""

    params: object
    loss: np.ndarray
    snapshots: dict[int, object] = field(default_factory=dict)
    diverged_at: int | None = None

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None


@dataclass
class IterativeTrainResult(TrainResult):
    """A :class:`TrainResult` plus ``anchor``, the last linearization point θ_s (the
    trained model is ``linearize(apply_fn, anchor)(params, x)``), ``anchors`` ``{step:
    θ_s}`` after each snapshot step, ``feature_updates`` (re-linearizations after step 0:
    ``ceil(steps / K) - 1``) and ``relinearize_every`` (K; None = never)."""

    anchor: object = None
    anchors: dict[int, object] = field(default_factory=dict)
    feature_updates: int = 0
    relinearize_every: int | None = None


# ------------------------------------------------------------------- the one training loop


def _make_chunk(apply_fn, loss_fn, optimizer, n: int, batch_size, unroll=1, mode="plain"):
    """jit ``chunk(state, key, x, y, length, first_step, k=0) -> (state, losses)``:
    ``length`` optimizer steps in one ``lax.scan``. ``mode``: ``"plain"`` (state
    ``(params, opt_state)``); ``"iterative"`` (``(params, opt_state, anchor)``: the loss
    of the linearization at the anchor, reset to the parameters at multiples of the traced
    ``k``, 0 = never); ``"many"`` (states stacked over networks, one step each by
    ``vmap``; losses ``(length, S)``). Epoch ``e`` permutes with ``fold_in(key, e)``."""
    per_epoch = max(1, n // batch_size) if batch_size else 1

    def batch(x, y, step, key):
        if not batch_size:
            return x, y
        epoch, i = jnp.divmod(step, per_epoch)
        perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
        idx = jax.lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)
        return x[idx], y[idx]

    def update(params, opt_state, xb, yb, anchor=None):
        model = apply_fn if anchor is None else linearize(apply_fn, anchor)
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model(p, xb), yb))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    # Data are arguments, not closure constants: XLA would otherwise constant-fold them.
    @partial(jax.jit, static_argnums=4)
    def chunk(state, key, x, y, length, first_step, k=0):
        def one_step(carry, step):
            xb, yb = batch(x, y, step, key)
            if mode == "plain":
                *carry, loss = update(*carry, xb, yb)
            elif mode == "many":
                *carry, loss = jax.vmap(update, (0, 0, None, None))(*carry, xb, yb)
            else:
                params, opt_state, anchor = carry
                relin = (k > 0) & (step % jnp.maximum(k, 1) == 0)
                anchor = jax.tree_util.tree_map(lambda p, a: jnp.where(relin, p, a), params, anchor)
                *carry, loss = update(params, opt_state, xb, yb, anchor)
                carry.append(anchor)
            return tuple(carry), loss

        steps = first_step + jnp.arange(length)
        return jax.lax.scan(one_step, tuple(state), steps, unroll=unroll)

    return chunk


_chunk = memoized(16)(_make_chunk)


def _boundaries(steps: int, snapshot_steps: Sequence[int], chunk_size: int) -> list[int]:
    marks = {s for s in snapshot_steps if 0 < s < steps} | {steps}
    marks |= set(range(chunk_size, steps, chunk_size))
    return sorted(marks)


def _fit(
    mode: str,
    apply_fn: Callable,
    state: tuple,
    x,
    y,
    optimizer,
    steps: int,
    *,
    loss: str = "mse",
    batch_size: int | None = None,
    key: jax.Array | None = None,
    snapshot_steps: Sequence[int] = (),
    chunk_size: int = 100,
    progress: bool | None = None,
    desc: str = "train",
    unroll: int | bool = 1,
    k: int = 0,
    stop: bool = True,
) -> tuple[tuple, np.ndarray, dict[int, tuple], int | None]:
    """Run ``steps`` steps in chunks ending at the snapshot steps (with ``stop``: until a
    non-finite loss). Returns the final state (after a divergence: before the diverging
    chunk), the losses, ``{step: state}`` at the snapshot steps and the diverging step."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
    if steps < 0:
        raise ValueError(f"steps={steps} must be >= 0")
    if batch_size is not None and not 0 < batch_size <= x.shape[0]:
        raise ValueError(f"batch_size={batch_size} must be in [1, n={x.shape[0]}]")
    key = jax.random.PRNGKey(0) if key is None else key
    x, y = jnp.asarray(x), jnp.asarray(y)
    # Cached: runs of one model with one optimizer object (a sweep of runs, of K) compile
    # once; unhashable arguments just build a fresh chunk.
    chunk = _chunk(apply_fn, LOSSES[loss], optimizer, x.shape[0], batch_size, unroll, mode)
    snapshots = {0: state} if 0 in snapshot_steps else {}
    losses: list[np.ndarray] = []
    done = 0
    show = _progress.enabled() if progress is None else progress
    with _progress.tqdm(total=steps, desc=desc, disable=not show, leave=False) as bar:
        for end in _boundaries(steps, snapshot_steps, chunk_size):
            new_state, chunk_loss = chunk(state, key, x, y, end - done, done, k)
            chunk_loss = np.asarray(chunk_loss)
            bad = np.flatnonzero(~np.isfinite(chunk_loss)) if stop else ()
            if len(bad):
                losses.append(chunk_loss[: bad[0] + 1])
                return state, np.concatenate(losses), snapshots, done + int(bad[0])
            state = new_state
            losses.append(chunk_loss)
            bar.update(end - done)
            done = end
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
    **kw,
) -> TrainResult:
    """Train ``apply_fn(params, x) -> (n, k)`` on inputs ``x`` ``(n, ...)`` and targets ``y`` ``(n,
    k)`` for ``steps`` steps of ``optimizer`` (its schedule counts steps). Keywords: ``loss``
    (:data:`LOSSES`), ``batch_size`` (None = full batch; epochs reshuffle with ``key``),
    ``snapshot_steps`` (0 = init), ``chunk_size`` (steps per ``lax.scan``; one compilation per model
    and optimizer object), ``progress`` (None = unless ``$NTKREPRO_PROGRESS=0``), ``desc``,
    ``unroll`` (XLA on CPU runs convolutions in a loop ~20x slower than unrolled: CNNs on CPU want
    ``unroll=True`` and a small ``chunk_size``)."""
    state = (params, optimizer.init(params))
    (params, _), curve, snaps, diverged_at = _fit(
        "plain", apply_fn, state, x, y, optimizer, steps, **kw
    )
    return TrainResult(params, curve, {t: st[0] for t, st in snaps.items()}, diverged_at)


def train_iterative_linearization(
    apply_fn: Callable,
    params,
    x,
    y,
    *,
    optimizer: optax.GradientTransformation,
    steps: int,
    relinearize_every: int | None,
    desc: str = "iterative linearization",
    **kw,
) -> IterativeTrainResult:
    """Iterative linearised training (Goldwaser & Ge 2023). At step 0 the network is linearized at
    θ_s = θ_0; each step follows the gradient of the loss of ``linearize(apply_fn, θ_s)``; every
    ``relinearize_every`` = K steps θ_s is reset to the current parameters (a *feature update*). K =
    1 is ordinary gradient descent; K = None (∞) trains the fixed linearization at θ_0 (the
    finite-width fixed-NTK model). The optimizer state runs on across re-linearizations. Other
    arguments as in :func:`train` (same minibatch order for the same ``key``)."""
    k = relinearize_every
    if k is not None and (isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1):
        raise ValueError(
            f"relinearize_every={k!r} must be an integer >= 1 "
            "(1 = gradient descent) or None (never re-linearize: fixed NTK)"
        )
    k = int(k or 0)
    state = (params, optimizer.init(params), params)  # the anchor starts at θ_0
    (params, _, anchor), curve, snaps, diverged_at = _fit(
        "iterative", apply_fn, state, x, y, optimizer, steps, k=k, desc=desc, **kw
    )
    last = steps if diverged_at is None else diverged_at + 1
    updates = (last - 1) // k if k and last > 0 else 0  # re-linearized at steps 1..last-1
    at = [{t: st[i] for t, st in snaps.items()} for i in (0, 2)]  # params, anchors
    result = (params, curve, at[0], diverged_at, anchor, at[1], updates, relinearize_every)
    return IterativeTrainResult(*result)


# SGD whose state is the learning rate, so that each of a stack of networks carries its own
# (train_many sets the states): ``p + (-rate * g)`` is ``p - rate * g`` bit for bit.
_SGD_RATES = optax.GradientTransformation(
    lambda params: None, lambda g, rate, params=None: (jax.tree.map(lambda u: -rate * u, g), rate)
)


def train_many(
    apply_fn: Callable, params_batch, x, y, lr, steps: int, chunk_steps: int = 100
) -> tuple[object, np.ndarray]:
    """Full-batch gradient descent on :func:`mse` for each of ``S`` stacked networks
    (``params_batch``: leading axis ``S``, e.g. :func:`ntkrepro.models.init_many`), all at
    once; ``lr`` scalar or ``(S,)``. Training never stops: a diverged network shows
    non-finite losses. Returns ``(params_batch, losses (S, steps) float64)``.
    """
    leaves = jax.tree_util.tree_leaves(params_batch)
    rates = jnp.broadcast_to(jnp.asarray(lr, leaves[0].dtype), (leaves[0].shape[0],))
    state = (params_batch, rates)
    kw = dict(chunk_size=chunk_steps, progress=False, stop=False)
    (params_batch, _), curve, _, _ = _fit("many", apply_fn, state, x, y, _SGD_RATES, steps, **kw)
    curve = curve.reshape(-1, len(rates))
    return params_batch, np.asarray(curve, np.float64).T


# ------------------------------------------------------------------------------ ensembles


@dataclass
class EnsembleResult:
    """Outputs of independently initialized networks: ``f_test`` after training
    ``(members, m, k)`` (centered ensembles: ``f(θ_T) - f(θ_0)``), ``f0_test``/``f0_train``
    at initialization, ``snapshots`` ``{step: (members, m, k)}``, ``loss`` (member mean)
    per step, ``diverged_at`` (first non-finite loss of any member, else None)."""

    f_test: np.ndarray
    f0_test: np.ndarray
    f0_train: np.ndarray
    snapshots: dict[int, np.ndarray] = field(default_factory=dict)
    loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    diverged_at: int | None = None

    diverged = TrainResult.diverged

    @property
    def mean(self) -> np.ndarray:
        """The ensemble prediction, ``(m, k)``: the mean over members."""
        return self.f_test.mean(axis=0)


def _stack(trees: Sequence) -> object:
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def train_ensemble(
    init_fn: Callable,
    apply_fn: Callable,
    keys: Sequence[jax.Array],
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray,
    *,
    lr: float,
    steps: int,
    weight_decay: float = 0.0,
    centered: bool = False,
    snapshot_steps: Sequence[int] = (),
    chunk_size: int = 100,
    unroll: int | bool = 1,
    vectorize: bool = True,
    desc: str = "ensemble",
) -> EnsembleResult:
    """Train one network per key by full-batch gradient descent on MSE (learning rate ``lr``, loss
    ``+ weight_decay/2 * ||θ||²``), all at once. The members are stacked and trained as one vmapped
    model by :func:`train`; the stacked loss (a mean over ``(members, n, k)``) gives each member
    ``1/members`` of its gradient, so the rate is ``lr * members`` and the decay ``weight_decay /
    members``. ``centered=True`` trains ``f(θ) - f(θ_0)`` (Lee et al. 2020), i.e. ``f(θ)`` on the
    targets ``y + f(θ_0)``; outputs are then reported centered. A divergence is recorded in
    ``diverged_at`` (outputs: those of the last finite chunk). ``vectorize=False`` trains the
    members one after the other (XLA on CPU runs vmapped convolutions far slower than single ones:
    use it for CNNs, with ``unroll=True``, small ``chunk_size``)."""
    if not keys:
        raise ValueError("train_ensemble needs at least one key (one per member)")
    if lr <= 0 or weight_decay < 0:
        raise ValueError(f"lr={lr} must be > 0 and weight_decay={weight_decay} >= 0")
    members = len(keys)
    x, x_test, y = jnp.asarray(x), jnp.asarray(x_test), jnp.asarray(y)
    stacked = [init_fn(key, x.shape)[1] for key in keys]
    params0 = _stack(stacked)
    apply_all = jax.jit(jax.vmap(apply_fn, in_axes=(0, None)))
    f0_train, f0_test = apply_all(params0, x), np.asarray(apply_all(params0, x_test))
    targets = y[None] + f0_train if centered else jnp.broadcast_to(y, f0_train.shape)
    offset = f0_test if centered else 0.0
    kw = dict(steps=steps, snapshot_steps=snapshot_steps, chunk_size=chunk_size, unroll=unroll)
    if vectorize:
        opt = optax.chain(
            optax.add_decayed_weights(weight_decay / members), optax.sgd(lr * members)
        )
        runs = [train(apply_all, params0, x, targets, optimizer=opt, desc=desc, **kw)]
        final, snaps = runs[0].params, runs[0].snapshots
    else:
        opt = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr))
        runs = [
            train(apply_fn, p0, x, t, optimizer=opt, desc=f"{desc} {i}", **kw)
            for i, (p0, t) in enumerate(zip(stacked, targets, strict=True))
        ]
        final = _stack([r.params for r in runs])
        common = set.intersection(*(set(r.snapshots) for r in runs))
        snaps = {s: _stack([r.snapshots[s] for r in runs]) for s in common}
    done = min(len(r.loss) for r in runs)
    loss = np.mean([r.loss[:done] for r in runs], axis=0) if not vectorize else runs[0].loss
    stops = [r.diverged_at for r in runs if r.diverged_at is not None]

    def outputs(params) -> np.ndarray:
        return np.asarray(apply_all(params, x_test)) - offset

    return EnsembleResult(
        f_test=outputs(final),
        f0_test=f0_test,
        f0_train=np.asarray(f0_train),
        snapshots={s: outputs(p) for s, p in snaps.items()},
        loss=loss,
        diverged_at=min(stops) if stops else None,
    )

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
from jax.flatten_util import ravel_pytree

from ntkrepro import kernels, memory
from ntkrepro import progress as _progress
from ntkrepro.memo import memoized, spec_key


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


@memoized(8)
def _round_fn(n: int) -> Callable:
    """jit ``keys (E, 2) -> (keys, bits (E, n) uint32)``: one round of ``jax.random.permutation``'s
    shuffle for each key (split, then 32 random bits per element)."""

    @jax.jit
    def one_round(keys):
        pairs = jax.vmap(jax.random.split)(keys)
        bits = jax.vmap(lambda k: jax.random.bits(k, (n,), jnp.uint32))(pairs[:, 1])
        return pairs[:, 0], bits

    return one_round


@jax.jit
def _epoch_keys(key: jax.Array, epochs: jax.Array) -> jax.Array:
    return jax.vmap(lambda e: jax.random.fold_in(key, e))(epochs)


def permutations(key: jax.Array, epochs: np.ndarray, n: int) -> np.ndarray:
    """``jax.random.permutation(fold_in(key, e), n)`` for each epoch ``e`` of ``epochs``: ``(E, n)``
    int32, the same orders, with the sort done on the host: XLA's CPU sort is ~5x slower than
    NumPy's stable argsort (101 permutations of 1,000: 15 ms against 3), which showed in runs of
    small models. Rounds as JAX draws them (sort by fresh 32-bit keys, stable, until collisions
    are negligible)."""
    keys = _epoch_keys(key, jnp.asarray(epochs, jnp.uint32))
    order = np.broadcast_to(np.arange(n, dtype=np.int32), (len(epochs), n))
    rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))
    position = np.arange(n, dtype=np.uint64)
    for _ in range(rounds):
        keys, bits = _round_fn(n)(keys)
        # A stable argsort by the bits: sort the distinct keys bits * 2^32 + position (2x faster)
        stable = np.sort((np.asarray(bits, np.uint64) << 32) | position, axis=1) & 0xFFFFFFFF
        order = np.take_along_axis(order, stable.astype(np.intp), 1)
    return np.ascontiguousarray(order)


def _minibatches(n: int, batch_size: int | None) -> tuple[Callable, Callable]:
    """``(plan, index)`` of the minibatch order: epoch ``e`` permutes the ``n`` examples with
    ``fold_in(key, e)`` (:func:`permutations`). ``plan(key, first_step, length)``, on the host
    before a chunk: the permutations of the epochs that the chunk's steps fall in, once per epoch
    rather than per step; ``index(plan, step)``, inside it: the ``(batch_size,)`` training indices
    of a step, None for full batch. Every mode of :func:`_make_chunk` draws from it, so all follow
    the same order for the same key."""
    per_epoch = max(1, n // batch_size) if batch_size else 1

    def plan(key, first_step: int, length: int):
        if not batch_size:
            return None
        first = first_step // per_epoch
        epochs = first + np.arange(max(length - 1, 0) // per_epoch + 2)  # a count fixed by length
        return np.int32(first), permutations(key, epochs, n)

    def index(plan, step):
        if plan is None:
            return None
        first, perms = plan
        epoch, i = jnp.divmod(step, per_epoch)
        return jax.lax.dynamic_slice_in_dim(perms[epoch - first], i * batch_size, batch_size)

    return plan, index


def _make_chunk(apply_fn, loss_fn, optimizer, n: int, batch_size, unroll=1, mode="plain"):
    """``(chunk, plan)``: jit ``chunk(state, drawn, x, y, length, first_step, k=0) -> (state,
    losses)``, ``length`` optimizer steps in one ``lax.scan`` with the minibatch order ``drawn =
    plan(key, first_step, length)`` (:func:`_minibatches`). ``mode``: ``"plain"`` (state
    ``(params, opt_state)``); ``"iterative"`` (``(params, opt_state, anchor)``: the loss
    of the linearization at the anchor, reset to the parameters at multiples of the traced
    ``k``, 0 = never); ``"many"`` (states stacked over networks, one step each by
    ``vmap``; losses ``(length, S)``); the linear models of :func:`train_linearized`
    (``apply_fn`` unused): ``"jacobian"`` (``(params, opt_state, anchor)``, ``x`` the tangent
    features ``(J (n, k, P), f_0 (n, k))``) and ``"ntk"`` (``(w, opt_state)``, ``w = (α (n, k),
    [s])`` the coordinates of θ = J_trᵀ α + s θ_a; ``x`` = ``(Θ[train, train] laid out (n, k, n,
    k), f_0 (n, k), [J θ_a (n, k)], arange(n))``). ``x``: an array or a tuple of arrays with
    leading axis ``n``. Epoch ``e`` permutes with ``fold_in(key, e)``."""
    plan, index = _minibatches(n, batch_size)

    def batch(x, y, step, drawn):
        idx = index(drawn, step)
        return (x, y) if idx is None else jax.tree_util.tree_map(lambda a: a[idx], (x, y))

    def update(params, opt_state, xb, yb, model=apply_fn):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(model(p, xb), yb))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def update_ntk(w, opt_state, xb, yb):
        # One step of the linear model in the coordinates w = (α, [s]) of θ = J_trᵀ α + s θ_a:
        # f_B = f_0,B + Θ[B, train] α + (s - 1) J_B θ_a, and ∂L/∂θ = J_Bᵀ r has coordinates
        # (r scattered to the batch's rows, 0). Optimizers that commute with linear maps give
        # the same trajectory as on θ (θ = M w, M linear): see train_linearized. Without s
        # (an optimizer that never moves θ without a gradient), s = 1.
        rows, f0b, *imageb, idx = xb  # rows Θ[B, train] (b, k, n, k): one matrix-vector product
        f = _linear_outputs(rows, w, f0b, *imageb)
        loss, r = jax.value_and_grad(loss_fn)(f, yb)
        grads = (jnp.zeros_like(w[0]).at[idx].add(r), *map(jnp.zeros_like, w[1:]))
        updates, opt_state = optimizer.update(grads, opt_state, w)
        return optax.apply_updates(w, updates), opt_state, loss

    # Data are arguments, not closure constants: XLA would otherwise constant-fold them.
    @partial(jax.jit, static_argnums=4)
    def chunk(state, drawn, x, y, length, first_step, k=0):
        def one_step(carry, step):
            xb, yb = batch(x, y, step, drawn)
            if mode == "plain":
                *carry, loss = update(*carry, xb, yb)
            elif mode == "many":
                *carry, loss = jax.vmap(update, (0, 0, None, None))(*carry, xb, yb)
            elif mode == "ntk":
                *carry, loss = update_ntk(*carry, xb, yb)
            elif mode == "jacobian":
                params, opt_state, anchor = carry
                *carry, loss = update(params, opt_state, xb, yb, _tangent_model(anchor))
                carry.append(anchor)
            else:
                params, opt_state, anchor = carry
                relin = (k > 0) & (step % jnp.maximum(k, 1) == 0)
                anchor = jax.tree_util.tree_map(lambda p, a: jnp.where(relin, p, a), params, anchor)
                model = linearize(apply_fn, anchor)
                *carry, loss = update(params, opt_state, xb, yb, model)
                carry.append(anchor)
            return tuple(carry), loss

        steps = first_step + jnp.arange(length)
        return jax.lax.scan(one_step, tuple(state), steps, unroll=unroll)

    return chunk, plan


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
    n = jax.tree_util.tree_leaves(x)[0].shape[0]
    if batch_size is not None and not 0 < batch_size <= n:
        raise ValueError(f"batch_size={batch_size} must be in [1, n={n}]")
    key = jax.random.PRNGKey(0) if key is None else key
    x, y = jax.tree_util.tree_map(jnp.asarray, x), jnp.asarray(y)
    # Cached: runs of one model with one optimizer object (a sweep of runs, of K) compile
    # once; unhashable arguments just build a fresh chunk.
    chunk, plan = _chunk(apply_fn, LOSSES[loss], optimizer, n, batch_size, unroll, mode)
    snapshots = {0: state} if 0 in snapshot_steps else {}
    losses: list[np.ndarray] = []
    done = 0
    show = _progress.enabled() if progress is None else progress
    with _progress.tqdm(total=steps, desc=desc, disable=not show, leave=False) as bar:
        for end in _boundaries(steps, snapshot_steps, chunk_size):
            drawn = plan(key, done, end - done)
            new_state, chunk_loss = chunk(state, drawn, x, y, end - done, done, k)
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


# ------------------------------------------------- linearized training on tangent features


@dataclass
class LinearizedResult:
    """Training of a linearization by :func:`train_linearized`: outputs after training on the
    training inputs ``f_train`` ``(n, k)`` and on the evaluation inputs ``f_eval`` ``(m, k)``
    (after a divergence: at the start of the diverging chunk); ``loss`` per step ``(steps_done,)``
    (as :func:`train` records it); ``snapshots`` ``{step: f_eval}`` and ``train_snapshots``
    ``{step: f_train}`` at the snapshot steps (0 = init); ``method`` (``"ntk"`` or
    ``"jacobian"``); ``params``: the final θ for ``"jacobian"`` (the trained model is
    ``linearize(apply_fn, anchor)(params, x)``), None for ``"ntk"``, which keeps coordinates of θ;
    ``diverged_at``: the first step with a NaN/inf loss, else None."""

    f_train: np.ndarray
    f_eval: np.ndarray
    loss: np.ndarray
    snapshots: dict[int, np.ndarray] = field(default_factory=dict)
    train_snapshots: dict[int, np.ndarray] = field(default_factory=dict)
    method: str = "ntk"
    params: object = None
    diverged_at: int | None = None

    diverged = TrainResult.diverged


METHODS = ("auto", "ntk", "jacobian")


def _tangent_model(anchor) -> Callable:
    """``(θ, (J (b, k, P), f_0 (b, k))) -> f_0 + J (θ - θ_a)`` on flattened parameters."""
    flat_anchor = ravel_pytree(anchor)[0]

    def model(params, features):
        jac, f0 = features  # 2-D products: XLA's CPU dot runs 3-D einsums far slower
        delta = ravel_pytree(params)[0] - flat_anchor
        return f0 + (jac.reshape(-1, delta.size) @ delta).reshape(f0.shape)

    return model


@memoized(32)
def commutes_with_linear_maps(optimizer: optax.GradientTransformation, steps: int = 4) -> bool:
    """Whether ``optimizer``'s updates commute with a linear map ``M``, ``u(M g, M θ) = M u(g,
    θ)``, over a few steps from random gradients and parameters (a probe, not a proof). Such an
    optimizer run on the images ``J g``, ``J θ`` gives the function-space trajectory of the
    linear model exactly: ``optax.sgd`` with any momentum, Nesterov and schedule,
    ``add_decayed_weights``; not Adam-like, sign-based or clipping ones (a clip threshold
    above the probe's gradients, ~100 per entry, goes unseen)."""
    rng = np.random.default_rng(0)
    m = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    theta = jnp.asarray(rng.normal(size=5), jnp.float32)
    grads = jnp.asarray(100 * rng.normal(size=(steps, 5)), jnp.float32)

    @jax.jit  # one compilation, rather than one per operation run eagerly
    def errors(theta, grads):
        image = m @ theta
        state, state_m = optimizer.init(theta), optimizer.init(image)
        out = []
        for g in grads:
            u, state = optimizer.update(g, state, theta)
            u_m, state_m = optimizer.update(m @ g, state_m, image)
            mu = m @ u
            scale = jnp.linalg.norm(mu) + jnp.linalg.norm(u_m)
            out.append(jnp.where(scale > 0, jnp.linalg.norm(mu - u_m) / scale, 0.0))  # 0: no step
            theta, image = theta + u, image + u_m
        return jnp.stack(out)

    try:
        err = np.asarray(errors(theta, grads))
    except (TypeError, ValueError):  # it needs parameter pytrees (masks, per-leaf labels)
        return False
    return bool(np.all(err <= 1e-4))  # NaN or inf: no


@memoized(32)
def moves_without_gradient(optimizer: optax.GradientTransformation, steps: int = 8) -> bool:
    """Whether ``optimizer`` may move θ without a gradient (weight decay does; SGD with momentum
    and schedules, Adam do not): True where its update needs the parameters (it fails when given
    none), or where ``steps`` updates from zero gradients at random parameters are not all zero.
    An optimizer it cannot run on a flat array counts as moving."""
    theta = jnp.asarray(np.random.default_rng(0).normal(size=5), jnp.float32)
    zeros = jnp.zeros_like(theta)

    @jax.jit
    def sizes(theta):
        state, out = optimizer.init(theta), []
        optimizer.update(zeros, state, None)  # raises where the update reads the parameters
        for _ in range(steps):
            u, state = optimizer.update(zeros, state, theta)
            out.append(jnp.abs(u).max())
            theta = theta + u
        return jnp.stack(out)

    try:
        return bool(np.any(np.asarray(sizes(theta)) != 0))
    except Exception:  # noqa: BLE001 -- any failure: it reads the parameters, or is unknown
        return True


def acts_elementwise_on_the_flat_vector(optimizer: optax.GradientTransformation, like) -> bool:
    """Whether ``optimizer`` gives the same updates on a parameter pytree shaped ``like`` as on
    its values raveled into one flat vector (a probe over a few steps). Function-space training
    runs it on other coordinates than θ, so masks or labels by leaf shape or name (weight decay
    on matrices only, ``optax.multi_transform``) must be refused there."""
    return _flat_probe(optimizer, *spec_key(like))  # memoized: unhashable ones probe afresh


@memoized(32)
def _flat_probe(optimizer, treedef, specs, steps: int = 3) -> bool:
    rng = np.random.default_rng(1)
    leaves = [jnp.asarray(rng.normal(size=shape), jnp.float32) for shape, _ in specs]
    theta = jax.tree_util.tree_unflatten(treedef, leaves)
    flat, unravel = ravel_pytree(theta)
    grads = [jnp.asarray(rng.normal(size=flat.shape), jnp.float32) for _ in range(steps)]

    @jax.jit
    def gap(theta, flat):
        state, state_flat, out = optimizer.init(theta), optimizer.init(flat), []
        for g in grads:
            u, state = optimizer.update(unravel(g), state, theta)
            u_flat, state_flat = optimizer.update(g, state_flat, flat)
            u = ravel_pytree(u)[0]
            scale = jnp.linalg.norm(u) + jnp.linalg.norm(u_flat)
            out.append(jnp.where(scale > 0, jnp.linalg.norm(u - u_flat) / scale, 0.0))
            theta, flat = optax.apply_updates(theta, unravel(u)), flat + u_flat
        return jnp.stack(out)

    try:
        return bool(np.all(np.asarray(gap(theta, flat)) <= 1e-5))
    except Exception:  # noqa: BLE001 -- it cannot run on one of the two: not elementwise
        return False


@memoized(32)
def _forward_fn(apply_fn: Callable) -> Callable:
    """jit ``(θ, x) -> f(θ, x)``."""
    return jax.jit(apply_fn)


@memoized(32)
def _jvp_fn(apply_fn: Callable) -> Callable:
    """jit ``(θ, v, x) -> (f(θ, x), J(θ, x) v)``: outputs and a tangent's image, one jvp."""
    return jax.jit(lambda params, v, x: jax.jvp(lambda p: apply_fn(p, x), (params,), (v,)))


@memoized(32)
def _vjp_fn(apply_fn: Callable) -> Callable:
    """jit ``(θ, x (b, ...), c (b, k)) -> J(θ, x)ᵀ c``, a parameter pytree."""
    return jax.jit(lambda params, x, c: jax.vjp(lambda p: apply_fn(p, x), params)[1](c)[0])


@jax.jit
def _tangent_outputs(jac: jax.Array, f0: jax.Array, params, anchor) -> jax.Array:
    """``f_0 + J (θ - θ_a)``: ``(n, k, P), (n, k) -> (n, k)``."""
    return _tangent_model(anchor)(params, (jac, f0))


def _blocks(fn: Callable, x, block: int) -> list:
    """``fn(x[s:s + block])`` for each block of rows."""
    return [fn(jnp.asarray(x[s : s + block])) for s in range(0, len(x), block)]


def _pullback(apply_fn: Callable, params, x, c, block: int):
    """``J(θ, x)ᵀ c`` for inputs ``x`` ``(n, ...)``, cotangents ``c`` ``(n, k)``, in blocks."""
    vjp = _vjp_fn(apply_fn)
    parts = [
        vjp(params, jnp.asarray(x[s : s + block]), c[s : s + block])
        for s in range(0, len(x), block)
    ]
    return jax.tree.map(lambda *leaves: sum(leaves[1:], leaves[0]), *parts)


def _kernels_at_anchor(
    apply_fn, anchor, x_train, x_eval, k, ntk, evaluations, implementation, block
):
    """``(Θ[train, train] (n, k, n, k), Θ[eval, train] (m, k, n, k) or None)`` at the anchor, from
    a given ``ntk`` or computed. The eval block is computed only when more than two evaluations
    of ``x_eval`` are wanted (snapshots and the end): each other one costs a vjp over the
    training inputs and a jvp over ``x_eval`` instead, cheaper than the block for a few."""
    n, m = len(x_train), len(x_eval)
    if ntk is not None:
        return _given_kernels(ntk, n, n + m, k)
    # One output: the traced kernel is the kernel, and neural-tangents computes it faster
    # (structured derivatives of the MLP at n = 1,000: 27 ms against 46).
    kw = dict(batch_size=block, implementation=implementation, trace_axes=(-1,) if k == 1 else ())
    with_eval = m > 0 and evaluations > 2
    x2 = np.concatenate([np.asarray(x_train), np.asarray(x_eval)]) if with_eval else None
    theta = kernels.empirical_ntk(apply_fn, anchor, x_train, x2, **kw)
    rows = (theta[..., None, None] if k == 1 else theta).transpose(0, 2, 1, 3)
    theta_et = jnp.asarray(rows[:, :, n:].transpose(2, 3, 0, 1)) if with_eval else None
    return jnp.asarray(rows[:, :, :n]), theta_et  # on the device once, each a copy of its own


def _check_inputs(apply_fn, anchor, x_train, y_train, x_eval) -> int:
    """Validate the shapes; return the number of outputs ``k``."""
    if np.ndim(y_train) != 2 or len(y_train) != len(x_train):
        raise ValueError(
            f"y_train must be (n, k) with n = len(x_train) = {len(x_train)}; "
            f"got shape {np.shape(y_train)}"
        )
    if np.shape(x_eval)[1:] != np.shape(x_train)[1:]:
        raise ValueError(
            f"x_eval examples have shape {np.shape(x_eval)[1:]}, "
            f"x_train examples {np.shape(x_train)[1:]}: they must agree"
        )
    x1 = jax.ShapeDtypeStruct((1, *np.shape(x_train)[1:]), jnp.float32)
    out = jax.eval_shape(apply_fn, anchor, x1).shape
    k = np.shape(y_train)[1]
    if out != (1, k):
        raise ValueError(f"the model maps one example to {out[1:]}; y_train has k = {k} outputs")
    return k


def _given_kernels(ntk, n: int, n_all: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A given eNTK ``Θ[i, j, l, m]`` over [x_train; x_eval] as ``(Θ[train, train], Θ[eval,
    train])``, each laid out ``[i, l, j, m]``: ``(n, k, n, k)`` and ``(m, k, n, k)``."""
    ntk = np.asarray(ntk)
    if ntk.ndim == 2 and k == 1:
        ntk = ntk[..., None, None]
    if ntk.ndim == 2:
        raise ValueError(
            f"a traced (n, n) eNTK serves one output only; with k = {k} the per-logit kernels "
            "differ at finite width (the eNTK is not Θ ⊗ I_k): pass the full (n_all, n_all, "
            "k, k) kernel, kernels.empirical_ntk(..., trace_axes=())"
        )
    if ntk.shape[1:] != (n_all, k, k) or ntk.shape[0] not in (n, n_all):
        raise ValueError(
            f"ntk must be Θ over [x_train; x_eval], ({n_all}, {n_all}, {k}, {k}) or "
            f"({n}, {n_all}, {k}, {k}); got shape {ntk.shape}"
        )
    rows = ntk[:n].transpose(0, 2, 1, 3)  # Θ[train, all] as [i, l, j, m]
    # Θ[eval, train][e, l, t, m] = Θ[t, e, m, l]: the kernel is symmetric
    theta_et = jnp.asarray(rows[:, :, n:].transpose(2, 3, 0, 1))
    return jnp.asarray(rows[:, :, :n]), theta_et


def _linear_outputs(kernel, w, f0, image=None) -> jax.Array:
    """``f_0 + Θ[·, train] α (+ (s - 1) J θ_a)`` for ``w = (α (n, k), [s])``: kernel ``(r, k, n,
    k)``, ``f_0`` and ``image`` ``(r, k)``."""
    f = f0 + (kernel.reshape(f0.size, -1) @ w[0].reshape(-1)).reshape(f0.shape)
    return f if len(w) == 1 else f + (w[1] - 1) * image


_linear_outputs_jit = jax.jit(_linear_outputs)


def _choose_method(
    method: str, optimizer, anchor, n: int, n_all: int, k: int, n_params: int, given: bool
):
    """The method that ``"auto"`` stands for (a given kernel: ``"ntk"``), checked."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: use one of {', '.join(METHODS)}")
    if given and method == "jacobian":
        raise ValueError("a precomputed ntk serves method='ntk' only")
    method = "ntk" if given else method
    linear = (
        method != "jacobian"
        and commutes_with_linear_maps(optimizer)
        and acts_elementwise_on_the_flat_vector(optimizer, anchor)
    )
    if method == "ntk" and not linear:
        raise ValueError(
            "method='ntk' needs an optimizer whose updates commute with linear maps and do not "
            "depend on the parameters' shapes (optax.sgd with momentum/schedule, "
            "add_decayed_weights without a mask); use method='jacobian' for this one"
        )
    # The kernel's floats against the Jacobians': one of them is held for the whole run.
    small_kernel = n * n_all * k * k <= n_all * k * n_params
    return (
        "ntk" if method == "ntk" or (method == "auto" and linear and small_kernel) else "jacobian"
    )


def train_linearized(
    apply_fn: Callable,
    anchor,
    x_train,
    y_train,
    x_eval=None,
    *,
    optimizer: optax.GradientTransformation,
    steps: int,
    method: str = "auto",
    offset: bool = True,
    ntk: np.ndarray | None = None,
    implementation: str = "auto",
    block: int = 1000,
    desc: str = "linearized",
    **kw,
) -> LinearizedResult:
    """Train ``linearize(apply_fn, anchor, offset=offset)`` from θ = ``anchor`` as :func:`train`
    would (same ``optimizer`` and schedule, ``steps``, ``loss``, ``batch_size`` and ``key``, so the
    same minibatches; ``snapshot_steps``, ``chunk_size`` (default 100; 1000 for ``"ntk"``),
    ``progress``), at the cost of a linear model. ``anchor`` is θ_0 for the linearization at
    initialization, or any θ_t (the linearization at θ_t, started from f(θ_t)). Inputs
    ``x_train`` ``(n, ...)``, targets ``y_train`` ``(n, k)``, evaluation inputs ``x_eval`` ``(m,
    ...)`` (None: none). Returns a :class:`LinearizedResult`.

    ``method``: ``"ntk"`` trains the coordinates ``(α, s)`` of θ = θ_a + J_trᵀ α + (s - 1) θ_a
    (the span that gradient steps and weight decay reach) with the eNTK on the training inputs,
    ``Θ[train, train]`` (``n² k²`` floats; ``ntk``: a precomputed Θ over [x_train; x_eval], full
    ``(n+m, n+m, k, k)``, traced ``(n+m, n+m)`` for k = 1; else computed with
    ``implementation`` in ``block``-sized blocks): one ``(batch k) x (n k)`` product per step,
    for optimizers whose updates commute with linear maps (:func:`commutes_with_linear_maps`:
    SGD with momentum and schedules, weight decay). Outputs on ``x_eval`` come from
    ``Θ[eval, train] α`` where more than two evaluations are wanted (snapshots and the end),
    else from one vjp over the training inputs and one jvp over ``x_eval`` each. ``"jacobian"``
    keeps the tangent features ``J`` ``((n + m), k, P)`` at the anchor and trains ``f_0 + J (θ -
    θ_a)`` with any optimizer (one ``(batch k) x P`` product each way per step: memory-bound, it
    beats the network's step only where that computes far more than ``P`` per example, as
    convolutions do, not for MLPs). ``"auto"``: ``"ntk"`` where the optimizer allows it and the
    kernel is no larger than the Jacobians (or ``ntk`` is given), else ``"jacobian"``.
    ``block`` 1000: the structured-derivatives eNTK of LeNet on 1,000 inputs took 0.56 s in one
    block, 1.8 s in blocks of 500 (each block pair recomputes both blocks' derivatives)."""
    x_eval = np.zeros((0, *np.shape(x_train)[1:]), np.float32) if x_eval is None else x_eval
    k = _check_inputs(apply_fn, anchor, x_train, y_train, x_eval)
    x_all = np.concatenate([np.asarray(x_train), np.asarray(x_eval)])
    n, n_all = len(x_train), len(x_all)
    n_params = ravel_pytree(anchor)[0].size
    method = _choose_method(method, optimizer, anchor, n, n_all, k, n_params, ntk is not None)
    if offset:
        f0 = jnp.concatenate(_blocks(partial(_forward_fn(apply_fn), anchor), x_all, block))
    else:
        f0 = jnp.zeros((n_all, k), jax.eval_shape(apply_fn, anchor, x_all[:1]).dtype)
    fit = partial(_fit, y=y_train, optimizer=optimizer, steps=steps, desc=desc, **kw)
    params = None
    if method == "ntk":
        # Evaluations of x_eval: the end, and the snapshots before it (step 0 is f_0)
        evaluations = len({t for t in kw.get("snapshot_steps", ()) if 0 < t < steps} | {steps})
        theta_tt, theta_et = _kernels_at_anchor(
            apply_fn, anchor, x_train, x_eval, k, ntk, evaluations, implementation, block
        )
        # A step costs ~0.05 ms here, a chunk call several: fewer, longer chunks by default.
        fit = partial(fit, chunk_size=kw.get("chunk_size", 1000))
        # The image J θ_a enters through s - 1 only, and s stays 1 unless the optimizer moves θ
        # without a gradient (weight decay): otherwise neither s nor the image's jvp is needed.
        w0 = (jnp.zeros((n, k), f0.dtype),)  # θ = θ_a
        images = ()
        if moves_without_gradient(optimizer):
            w0 += (jnp.ones((), f0.dtype),)
            pushed = _blocks(partial(_jvp_fn(apply_fn), anchor, anchor), x_all, block)
            images = (jnp.concatenate([jv for _, jv in pushed]),)
        features = (theta_tt, f0[:n], *(im[:n] for im in images), jnp.arange(n))
        (w, _), curve, snaps, diverged_at = fit("ntk", None, (w0, optimizer.init(w0)), features)

        def linear_outputs(w) -> np.ndarray:
            f_tr = _linear_outputs_jit(theta_tt, w, f0[:n], *(im[:n] for im in images))
            if n_all == n:
                return np.asarray(f_tr)
            if theta_et is not None:
                f_ev = _linear_outputs_jit(theta_et, w, f0[n:], *(im[n:] for im in images))
            else:  # f_0 + J_eval (J_trᵀ α + (s - 1) θ_a): a vjp over the training inputs, a jvp
                tangent = _pullback(apply_fn, anchor, x_train, w[0], block)
                if len(w) > 1:
                    tangent = jax.tree.map(lambda v, a: v + (w[1] - 1) * a, tangent, anchor)
                pushed = _blocks(partial(_jvp_fn(apply_fn), anchor, tangent), x_eval, block)
                f_ev = f0[n:] + jnp.concatenate([jv for _, jv in pushed])
            return np.concatenate([np.asarray(f_tr), np.asarray(f_ev)])

        f = linear_outputs(w)
        last = steps if diverged_at is None else None  # the final state is that snapshot's

        def snapshot(t, st):
            return np.asarray(f0) if t == 0 else f if t == last else linear_outputs(st[0])

        outs = {t: snapshot(t, st) for t, st in snaps.items()}
    else:
        what = f"the tangent features of {n_all} examples ({n_params:,} parameters)"
        jac_bytes = n_all * k * n_params * kernels._itemsize()
        memory.require_memory(what, {"jacobians": jac_bytes, "blocks being joined": jac_bytes})
        jac = jnp.concatenate(
            _blocks(partial(kernels._jacobian_fn(apply_fn), anchor), x_all, block)
        )
        state = (anchor, optimizer.init(anchor), anchor)
        (params, *_), curve, snaps, diverged_at = fit("jacobian", None, state, (jac[:n], f0[:n]))
        f = _tangent_outputs(jac, f0, params, anchor)
        outs = {t: np.asarray(_tangent_outputs(jac, f0, st[0], anchor)) for t, st in snaps.items()}
    f = np.asarray(f)
    return LinearizedResult(
        f_train=f[:n],
        f_eval=f[n:],
        loss=curve,
        snapshots={t: out[n:] for t, out in outs.items()},
        train_snapshots={t: out[:n] for t, out in outs.items()},
        method=method,
        params=params,
        diverged_at=diverged_at,
    )

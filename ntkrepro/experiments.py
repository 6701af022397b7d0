"""Reusable experiments: functions that a figure notebook calls as one step of its method.

Each function returns plain arrays or records. Conventions follow :mod:`ntkrepro.kernels`:
targets ``y`` are ``(n, k)``, the loss is ``0.5 * mean((f - y)**2)`` and gradient descent
with learning rate ``lr`` for ``steps`` steps follows gradient flow for time ``lr * steps``.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ntkrepro import train as _train


def downsample(x: np.ndarray, factor: int) -> np.ndarray:
    """Average-pool NHWC images by an integer ``factor``: ``(n, H, W, C) -> (n, H/f, W/f, C)``.

    Used to make convolutional kernels affordable on a CPU (their cost grows with the
    square of the number of pixels for CNN-GAP).
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"downsample expects NHWC images (n, H, W, C), got shape {x.shape}")
    n, h, w, c = x.shape
    if factor < 1 or h % factor or w % factor:
        raise ValueError(
            f"factor={factor} must be a positive divisor of the image size {h}x{w} "
            "(e.g. 2, 4 or 7 for 28x28 MNIST)"
        )
    return x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far, in MiB (``ru_maxrss``)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB else


@dataclass
class EnsembleResult:
    """Test outputs of an ensemble of networks trained from independent initializations.

    Attributes:
      f_test: outputs after training, ``(members, m, k)``; for a centered ensemble these
        are ``f(θ_T) - f(θ_0)``.
      f0_test: outputs at initialization, ``(members, m, k)``.
      f0_train: outputs at initialization on the training set, ``(members, n, k)``.
      snapshots: ``{step: (members, m, k)}`` test outputs (centered if the ensemble is).
      loss: training loss per step, averaged over members, ``(steps_done,)``.
      diverged_at: first step with a non-finite loss (any member), else None.
    """

    f_test: np.ndarray
    f0_test: np.ndarray
    f0_train: np.ndarray
    snapshots: dict[int, np.ndarray] = field(default_factory=dict)
    loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    diverged_at: int | None = None

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    @property
    def mean(self) -> np.ndarray:
        """The ensemble prediction, ``(m, k)``: the mean over members."""
        return self.f_test.mean(axis=0)


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
    """Train one network per key by full-batch gradient descent on MSE, all at once.

    The members are stacked and trained as one vmapped model. The stacked loss
    ``0.5 * mean`` over ``(members, n, k)`` gives each member ``1/members`` of its own
    gradient, so the step is scaled by ``members``: each member follows exactly the
    gradient descent it would follow alone (learning rate ``lr``, L2 coefficient
    ``weight_decay``, i.e. loss ``+ weight_decay/2 * ||θ||²``).

    ``centered=True`` trains ``f(θ) - f(θ_0)`` (Lee et al. 2020): the same gradients as
    training ``f(θ)`` on the targets ``y + f(θ_0)``; outputs are then reported centered.
    A diverging run (NaN/inf loss) is recorded in ``diverged_at``; its outputs are those
    of the last finite chunk.

    ``vectorize=False`` trains the members one after the other instead (the same
    arithmetic): XLA on CPU runs vmapped convolutions far slower than single ones, so
    convolutional ensembles on a CPU should use it, with ``unroll=True`` and a small
    ``chunk_size`` (see :func:`ntkrepro.train.train`).
    """
    if not keys:
        raise ValueError("train_ensemble needs at least one key (one per member)")
    if lr <= 0 or weight_decay < 0:
        raise ValueError(f"lr={lr} must be > 0 and weight_decay={weight_decay} >= 0")
    members = len(keys)
    x, x_test, y = jnp.asarray(x), jnp.asarray(x_test), jnp.asarray(y)
    stacked = [init_fn(key, x.shape)[1] for key in keys]
    params0 = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *stacked)
    apply_all = jax.jit(jax.vmap(apply_fn, in_axes=(0, None)))
    f0_train, f0_test = apply_all(params0, x), np.asarray(apply_all(params0, x_test))
    targets = y[None] + f0_train if centered else jnp.broadcast_to(y, f0_train.shape)
    offset = f0_test if centered else 0.0
    kw = dict(snapshot_steps=snapshot_steps, chunk_size=chunk_size, unroll=unroll)
    if vectorize:
        optimizer = optax.chain(
            optax.add_decayed_weights(weight_decay / members), optax.sgd(lr * members)
        )
        result = _train.train(
            apply_all, params0, x, targets, optimizer=optimizer, steps=steps, desc=desc, **kw
        )
        final, snaps = result.params, result.snapshots
        loss, diverged_at = result.loss, result.diverged_at
    else:
        optimizer = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(lr))
        runs = [
            _train.train(
                apply_fn, p0, x, t, optimizer=optimizer, steps=steps, desc=f"{desc} {i}", **kw
            )
            for i, (p0, t) in enumerate(zip(stacked, targets, strict=True))
        ]
        final = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *[r.params for r in runs])
        common = set.intersection(*(set(r.snapshots) for r in runs))
        snaps = {
            s: jax.tree_util.tree_map(lambda *v: jnp.stack(v), *[r.snapshots[s] for r in runs])
            for s in common
        }
        done = min(len(r.loss) for r in runs)
        loss = np.mean([r.loss[:done] for r in runs], axis=0)
        stops = [r.diverged_at for r in runs if r.diverged_at is not None]
        diverged_at = min(stops) if stops else None

    def outputs(params) -> np.ndarray:
        return np.asarray(apply_all(params, x_test)) - offset

    return EnsembleResult(
        f_test=outputs(final),
        f0_test=f0_test,
        f0_train=np.asarray(f0_train),
        snapshots={s: outputs(p) for s, p in snaps.items()},
        loss=loss,
        diverged_at=diverged_at,
    )


def predictive_variance(f: np.ndarray) -> float:
    """Mean over test points and outputs of the variance over members of ``f``
    ``(members, m, k)``: the empirical posterior variance of an ensemble."""
    f = np.asarray(f, np.float64)
    if f.ndim != 3 or f.shape[0] < 2:
        raise ValueError(f"need outputs of shape (members >= 2, m, k), got {f.shape}")
    return float(f.var(axis=0, ddof=1).mean())


def rms(a: np.ndarray, b: np.ndarray) -> float:
    """Root-mean-square difference of two output arrays of the same shape."""
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def kernel_prediction_from(
    k_train_train: np.ndarray,
    k_test_train: np.ndarray,
    y: np.ndarray,
    f0_train: np.ndarray,
    f0_test: np.ndarray,
    t: float,
) -> np.ndarray:
    """What the infinite-width (linearized) network predicts on the test set after gradient
    flow for time ``t`` when started from the initial outputs ``f0``.

    ``f(t) = f0_test + K_st K^{-1} (I - exp(-K t / (n k))) (y - f0_train)``, per member.
    Shapes: kernels ``(n, n)``, ``(m, n)``; ``y`` ``(n, k)``; ``f0_train``
    ``(members, n, k)``, ``f0_test`` ``(members, m, k)`` → ``(members, m, k)``. With zero
    ``f0`` this is the mean prediction over initializations (:func:`kernels.gradient_flow`).
    """
    from ntkrepro import kernels

    f0_train = np.asarray(f0_train, np.float64)
    f0_test = np.asarray(f0_test, np.float64)
    out = []
    for a, b in zip(f0_train, f0_test, strict=True):
        _, f = kernels.gradient_flow(k_train_train, k_test_train, np.asarray(y) - a, [t])
        out.append(b + f[0])
    return np.stack(out)


# ------------------------------------ parameterization, width, best practices (Lee et al. 2020)


def network_max_learning_rate(
    apply_fn: Callable, params, x: np.ndarray, *, iters: int = 30, seed: int = 0
) -> float:
    """Largest stable full-batch gradient-descent learning rate of a finite network at
    ``params``, for the MSE convention of this module: ``2 n k / lambda_max(J J^T)``.

    ``J`` is the Jacobian of the ``(n, k)`` outputs on ``x`` with respect to all
    parameters; ``J J^T`` (the empirical NTK, ``(n k) x (n k)``) is never formed: its top
    eigenvalue comes from ``iters`` power iterations of ``v -> J (J^T v)`` (one VJP and one
    JVP each), so the cost is that of ``2 * iters`` forward/backward passes. Works for any
    parameterization: in the standard one ``lambda_max`` grows with width and the rate
    shrinks, which is why comparisons at equal *fractions* of this rate are fair.
    """
    if iters < 1:
        raise ValueError(f"iters={iters} must be >= 1")
    x = jnp.asarray(x)

    # params and x are arguments, not closed-over constants: XLA would constant-fold them.
    @jax.jit
    def step(p, xs, v):
        def f(q):
            return apply_fn(q, xs)

        _, vjp = jax.vjp(f, p)
        (jt_v,) = vjp(v)
        _, jjt_v = jax.jvp(f, (p,), (jt_v,))
        return jjt_v

    out = jax.eval_shape(apply_fn, params, x)
    v = jax.random.normal(jax.random.PRNGKey(seed), out.shape, out.dtype)
    v = v / jnp.linalg.norm(v)
    lam = 0.0
    for _ in range(iters):
        w = step(params, x, v)
        lam = float(jnp.vdot(v, w))  # Rayleigh quotient, v has unit norm
        v = w / jnp.linalg.norm(w)
    if not lam > 0:
        raise ValueError(f"the empirical NTK has no positive eigenvalue (got {lam})")
    return float(2 * np.prod(out.shape) / lam)


def validation_accuracy(
    k_train_train: np.ndarray,
    y: np.ndarray,
    labels: np.ndarray,
    n_val: int,
    diag_regs: Sequence[float],
) -> np.ndarray:
    """Accuracy on a validation split carved from the training set, per diagonal
    regularizer, from one training kernel.

    The last ``n_val`` training examples are held out: the kernel regressor is fitted on
    the first ``n - n_val`` (``K[:f, :f]``, targets ``y[:f]``) and predicts the held-out
    ones (``K[f:, :f]``), as in :func:`ntkrepro.kernels.ridge_sweep`. The test set is
    never touched, so hyperparameters picked here are honest. Shapes: ``(n, n)``,
    ``(n, k)`` targets, ``(n,)`` integer labels → ``(len(diag_regs),)``.
    """
    from ntkrepro import kernels

    k = np.asarray(k_train_train)
    n = k.shape[0]
    if not 0 < n_val < n:
        raise ValueError(f"n_val={n_val} must lie in 1..{n - 1} (the training set has {n})")
    f = n - n_val
    preds = kernels.ridge_sweep(k[:f, :f], k[f:, :f], np.asarray(y)[:f], diag_regs)
    return np.array([kernels.accuracy(p, np.asarray(labels)[f:]) for p in preds])


def largest_width_drop(widths: Sequence[int], mean: Sequence[float], sem: Sequence[float]):
    """Where accuracy falls as width grows: the largest ``mean[i] - mean[j]`` over pairs of
    widths ``i < j`` (a wider network worse than a narrower one).

    Returns ``{"drop", "narrow", "wide", "z"}``: the drop (<= 0 when accuracy never falls,
    then the pair is the closest to falling), the two widths, and the drop in units of its
    standard error ``sqrt(sem[i]**2 + sem[j]**2)`` (``inf`` if both are 0). Monotone
    non-decreasing accuracy gives ``drop <= 0``.
    """
    m = np.asarray(mean, float)
    s = np.asarray(sem, float)
    if len(widths) != len(m) or len(m) != len(s) or len(m) < 2:
        raise ValueError("need at least two widths with one mean and one sem each")
    best = None
    for i in range(len(m)):
        for j in range(i + 1, len(m)):
            d = m[i] - m[j]
            if best is None or d > best[0]:
                best = (d, i, j)
    d, i, j = best
    se = float(np.hypot(s[i], s[j]))
    z = d / se if se > 0 else (np.inf if d > 0 else (-np.inf if d < 0 else 0.0))
    return {"drop": float(d), "narrow": int(widths[i]), "wide": int(widths[j]), "z": float(z)}


def table_text(rows: Sequence[dict], columns: Sequence[str], digits: int = 3) -> tuple[str, str]:
    """A list of records as a markdown table and as CSV text (same columns, same order).

    Floats are written with ``digits`` decimals, ``None`` as an empty cell. Returns
    ``(markdown, csv)``.
    """
    import csv
    import io

    def cell(v) -> str:
        if v is None:
            return ""
        if isinstance(v, float | np.floating):
            return f"{float(v):.{digits}f}"
        return str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(row) + " |" for row in cells]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(cells)
    return "\n".join(md), buf.getvalue()

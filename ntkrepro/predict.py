"""What kernels predict: kernel regression, gradient flow, GP posteriors, learning rates.
Kernels ``K_tt`` ``(n, n)`` (train, train) and ``K_st`` ``(m, n)`` (test,
train), targets ``y`` ``(n, k)``. Training minimizes ``0.5 * mean((f - y)**2)`` over all
``n*k`` entries (neural-tangents' normalization), so gradient descent with learning rate
``lr`` for ``steps`` steps follows gradient flow for time ``t = lr * steps``:
``df/dt = -(1/(n*k)) K (f - y)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import neural_tangents as nt
import numpy as np
import scipy.linalg

from ntkrepro import kernels
from ntkrepro.metrics import accuracy

# ------------------------------------------------------------------------ kernel regression


def diag_regularize(k: np.ndarray, eps: float) -> np.ndarray:
    """``K + eps * tr(K)/n * I`` (the diagonal regularizer of Lee et al. 2020)."""
    n = k.shape[0]
    return k + eps * np.trace(k) / n * np.eye(n, dtype=k.dtype)


def _regularized_copy(k_train_train: np.ndarray, eps: float, dtype) -> np.ndarray:
    """:func:`diag_regularize` in float64, cast to ``dtype``, as ONE Fortran-ordered copy
    that LAPACK factorizes in place. Bit for bit the dense formula, except that an
    off-diagonal ``-0.0`` stays ``-0.0`` (``+ 0 * I`` made it ``+0.0``: no value changes)."""
    k = np.asarray(k_train_train)
    n = k.shape[0]
    out = np.array(k, dtype=dtype, order="F")
    diag = np.diagonal(k).astype(np.float64)
    shift = eps * diag.sum() / n  # = eps * np.trace(K in float64) / n, bit for bit
    idx = np.arange(n)
    out[idx, idx] = (diag + shift).astype(dtype)
    return out


class SingularKernelError(np.linalg.LinAlgError):
    """A kernel solve failed because the matrix is numerically singular in its dtype. ``report`` is
    :func:`solve_report`'s dict. In float32 this is a finding of Lee et al. (2020) (kernel
    regression collapses beyond a critical data set size), not a bug."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def kernel_regression(
    k_train_train: np.ndarray,
    k_test_train: np.ndarray,
    y_train: np.ndarray,
    diag_reg: float = 0.0,
    *,
    dtype=np.float64,
) -> np.ndarray:
    """Infinite-time kernel prediction ``K_st (K_tt + reg)^{-1} y`` (Cholesky, ``reg`` of
    :func:`diag_regularize`) in ``dtype`` (float32: Lee et al.'s precision experiment):
    ``(n, n)``, ``(m, n)``, ``(n, k)`` → ``(m, k)``, with one ``n x n`` copy. Raises
    :class:`SingularKernelError` where the factorization fails in ``dtype``."""
    k = _regularized_copy(k_train_train, diag_reg, dtype)
    try:
        factor = scipy.linalg.cho_factor(k, lower=True, overwrite_a=True)
    except np.linalg.LinAlgError as err:
        report = solve_report(k_train_train, dtype, diag_reg)
        raise SingularKernelError(_singular_message(report), report) from err
    # The factor is finite (its input was checked): only the targets need the check.
    y = np.asarray_chkfinite(np.asarray(y_train, dtype))
    alpha = scipy.linalg.cho_solve(factor, y, check_finite=False)
    return np.asarray(k_test_train, dtype) @ alpha


def solve_report(k_train_train: np.ndarray, dtype=np.float32, diag_reg: float = 0.0) -> dict:
    """Whether solving with ``K + reg`` in ``dtype`` is numerically singular (no digit left
    once the condition number reaches ``1/eps``: 8.4e6 in float32, 4.5e15 in float64), as
    JSON-ready ``{"dtype", "n", "eps", "critical_condition" (1/eps), "condition_number"
    (None: infinite), "min_eigenvalue", "max_eigenvalue" (float64), "singular"}``."""
    k = diag_regularize(np.asarray(k_train_train, np.float64), diag_reg)
    lam = np.linalg.eigvalsh(k)
    eps = float(np.finfo(dtype).eps)
    cond = float(lam[-1] / lam[0]) if lam[0] > 0 else float("inf")
    return {
        "dtype": np.dtype(dtype).name,
        "n": int(k.shape[0]),
        "eps": eps,
        "critical_condition": 1.0 / eps,
        "condition_number": cond if np.isfinite(cond) else None,
        "min_eigenvalue": float(lam[0]),
        "max_eigenvalue": float(lam[-1]),
        "singular": bool(not cond * eps < 1.0),
    }


def _singular_message(report: dict) -> str:
    cond = report["condition_number"]
    cond_text = "infinite" if cond is None else f"{cond:.3g}"
    return (
        f"the {report['n']} x {report['n']} kernel is numerically singular in "
        f"{report['dtype']}: condition number {cond_text} >= 1/eps = "
        f"{report['critical_condition']:.3g}. In float32 this is what Lee et al. (2020) "
        "report beyond a critical data set size (a finding, not a bug); use "
        "dtype=np.float64 or diag_reg > 0, or kernel_regression_report() to record it."
    )


def kernel_regression_report(
    k_train_train: np.ndarray,
    k_test_train: np.ndarray,
    y_train: np.ndarray,
    diag_reg: float = 0.0,
    *,
    dtype=np.float32,
) -> tuple[np.ndarray, dict]:
    """:func:`kernel_regression` in ``dtype`` that records numerical trouble, never raises. Returns
    ``(prediction, report)``: the ``(m, k)`` prediction (all NaN if the factorization failed) and
    :func:`solve_report`'s dict plus ``"failed"`` and ``"finite"`` (the prediction has no NaN/inf).
    """
    report = solve_report(k_train_train, dtype, diag_reg)
    m, k = np.shape(k_test_train)[0], np.shape(y_train)[-1]
    try:
        with np.errstate(all="ignore"):
            pred = kernel_regression(k_train_train, k_test_train, y_train, diag_reg, dtype=dtype)
        failed = False
    except np.linalg.LinAlgError:
        pred, failed = np.full((m, k), np.nan, dtype), True
    report.update(failed=failed, finite=bool(np.isfinite(pred).all()))
    report["singular"] = report["singular"] or failed
    return pred, report


# ----------------------------------------------------- one eigendecomposition, many answers


def _spectrum(k_train_train, k_test_train) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(λ clipped at 0, V, K_st V)`` of ``K_tt = V diag(λ) V^T``, float64."""
    lam, v = np.linalg.eigh(np.asarray(k_train_train, np.float64))
    return np.clip(lam, 0.0, None), v, np.asarray(k_test_train, np.float64) @ v


def ridge_sweep(
    k_train_train: np.ndarray,
    k_test_train: np.ndarray,
    y_train: np.ndarray,
    diag_regs: Sequence[float],
) -> np.ndarray:
    """Kernel regression for many diagonal regularizers ``eps`` (:func:`diag_regularize`)
    from one float64 eigendecomposition; ``eps = 0`` is the pseudo-inverse on the positive
    eigenvalues. Shapes: ``(n, n)``, ``(m, n)``, ``(n, k)`` → ``(len(diag_regs), m, k)``.
    """
    regs = np.asarray(diag_regs, np.float64)
    if regs.ndim != 1 or np.any(regs < 0) or not np.all(np.isfinite(regs)):
        raise ValueError(f"diag_regs must be a list of finite numbers >= 0, got {diag_regs!r}")
    lam, v, kst_v = _spectrum(k_train_train, k_test_train)
    vy = v.T @ np.asarray(y_train, np.float64)
    k = np.asarray(k_train_train, np.float64)
    scale = np.trace(k) / k.shape[0]
    out = []
    for eps in regs:
        denom = lam + eps * scale
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(denom > 0, 1.0 / denom, 0.0)
        out.append(kst_v @ (inv[:, None] * vy))
    return np.stack(out)


def validation_accuracy(
    k_train_train: np.ndarray,
    y: np.ndarray,
    labels: np.ndarray,
    n_val: int,
    diag_regs: Sequence[float],
) -> np.ndarray:
    """Accuracy per diagonal regularizer on the last ``n_val`` training examples, held out:
    :func:`ridge_sweep` fitted on the first ``n - n_val``. The test set is never touched,
    so hyperparameters picked here are honest. Shapes: ``(n, n)``, ``(n, k)`` targets,
    ``(n,)`` integer labels → ``(len(diag_regs),)``.
    """
    k = np.asarray(k_train_train)
    n = k.shape[0]
    if not 0 < n_val < n:
        raise ValueError(f"n_val={n_val} must lie in 1..{n - 1} (the training set has {n})")
    f = n - n_val
    preds = ridge_sweep(k[:f, :f], k[f:, :f], np.asarray(y)[:f], diag_regs)
    return np.array([accuracy(p, np.asarray(labels)[f:]) for p in preds])


def _flow(lam, v, kst_v, y: np.ndarray, times: Sequence[float]):
    """Gradient flow from zero outputs on the spectrum of :func:`_spectrum`."""
    vy = v.T @ y
    f_train, f_test = [], []
    for t in times:
        decay = np.exp(-lam * t / y.size) if np.isfinite(t) else np.zeros_like(lam)
        fitted = (1.0 - decay)[:, None] * vy  # spectral coefficients of f_train(t)
        f_train.append(v @ fitted)
        with np.errstate(divide="ignore", invalid="ignore"):
            coef = np.where(lam[:, None] > 0, fitted / lam[:, None], 0.0)
        f_test.append(kst_v @ coef)
    return np.stack(f_train), np.stack(f_test)


def gradient_flow(
    k_train_train: np.ndarray,
    k_test_train: np.ndarray,
    y_train: np.ndarray,
    times: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """Mean predictions of an infinitely wide network trained by gradient flow on MSE for each time
    in ``times`` (``t = lr * steps``; ``np.inf`` = kernel regression without regularization), from
    zero initial outputs (the mean over initializations). Float64. Returns ``(f_train, f_test)``:
    ``(len(times), n, k)`` and ``(len(times), m, k)``."""
    lam, v, kst_v = _spectrum(k_train_train, k_test_train)
    return _flow(lam, v, kst_v, np.asarray(y_train, np.float64), times)


def gradient_flow_from(
    k_train_train: np.ndarray,
    k_test_train: np.ndarray,
    y: np.ndarray,
    f0_train: np.ndarray,
    f0_test: np.ndarray,
    t: float,
) -> np.ndarray:
    """Test outputs ``(members, m, k)`` of the linearized network after gradient flow for
    time ``t`` from each member's initial outputs ``f0_train`` ``(members, n, k)``,
    ``f0_test`` ``(members, m, k)``: ``f0_test + K_st K^{-1} (I - exp(-K t / (n k))) (y -
    f0_train)``, :func:`gradient_flow` per member on one eigendecomposition."""
    lam, v, kst_v = _spectrum(k_train_train, k_test_train)
    f0_train, f0_test = np.asarray(f0_train, np.float64), np.asarray(f0_test, np.float64)
    return np.stack(
        [
            b + _flow(lam, v, kst_v, np.asarray(y) - a, [t])[1][0]
            for a, b in zip(f0_train, f0_test, strict=True)
        ]
    )


# ------------------------------------------------------------------------- GP posteriors


def _flow_operator(ntk: dict[str, np.ndarray], n_entries: int, t: float) -> np.ndarray:
    """``A = Θ_st Θ_tt^{-1} (I - exp(-Θ_tt t / (n k)))`` ``(m, n)`` in float64, through the
    eigendecomposition of ``Θ_tt`` (``(1 - e^{-λ s}) / λ → s`` for ``λ = 0``)."""
    scale = t / n_entries
    lam, v = np.linalg.eigh(np.asarray(ntk["tt"], np.float64))
    lam = np.clip(lam, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.where(lam > 0, -np.expm1(-lam * scale) / lam, scale)
    return np.asarray(ntk["st"], np.float64) @ v @ np.diag(g) @ v.T


def ensemble_prediction(
    nngp: dict[str, np.ndarray], ntk: dict[str, np.ndarray], y_train: np.ndarray, t: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(m, k)`` and covariance ``(m, m)`` over initializations of an infinitely wide network
    after gradient flow for time ``t`` (Lee et al. 2019, eq. 16), in float64. ``nngp``/``ntk`` hold
    blocks ``"tt"`` (n, n), ``"st"`` (m, n), ``"ss"`` (m, m). With ``A = Θ_st Θ_tt^{-1} (I -
    exp(-Θ_tt t / (n k)))`` (through the eigendecomposition; ``(1 - e^{-λ s}) / λ → s`` for ``λ =
    0``): mean ``A y``, covariance ``K_ss + A K_tt A^T - (A K_ts + K_st A^T)``, what
    ``nt.predict.gradient_descent_mse_ensemble`` computes, accurate for ill-conditioned deep
    kernels. (Its mean equals :func:`gradient_flow`'s up to round-off.)"""
    y = np.asarray(y_train, np.float64)
    a = _flow_operator(ntk, y.size, t)  # (m, n)
    k_tt = np.asarray(nngp["tt"], np.float64)
    k_st = np.asarray(nngp["st"], np.float64)
    cov = np.asarray(nngp["ss"], np.float64) + a @ k_tt @ a.T - a @ k_st.T - k_st @ a.T
    return a @ y, cov


def ensemble_change(
    nngp: dict[str, np.ndarray], ntk: dict[str, np.ndarray], y_train: np.ndarray, t: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(m, k)`` and covariance ``(m, m)`` over initializations of what gradient flow for
    time ``t`` adds to an infinitely wide network's test outputs, ``f_t - f_0``, in float64
    (blocks as in :func:`ensemble_prediction`, whose ``A`` this shares). The network is linear
    in its parameters with a deterministic NTK, so ``f_t - f_0 = A (y - f_0(X_train))`` with
    ``f_0 ~ GP(0, K)``: mean ``A y``, covariance ``A K_tt A^T`` (only the NNGP's train block
    enters: the change does not depend on the initial test outputs)."""
    y = np.asarray(y_train, np.float64)
    a = _flow_operator(ntk, y.size, t)
    return a @ y, a @ np.asarray(nngp["tt"], np.float64) @ a.T


def ntk_gp_posterior(
    kernel_fn: Callable,
    x_train,
    y_train: np.ndarray,
    x_test,
    t: float,
    *,
    get: str = "ntk",
    diag_reg: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(m, k)`` and per-point variance ``(m,)`` over initializations after gradient flow for
    time ``t``, by ``nt.predict.gradient_descent_mse_ensemble`` on a stax ``kernel_fn`` (kernels in
    one block: keep ``n``, ``m`` to a few thousand). ``get="ntk"``: the gradient-descent ensemble
    (the variance includes the random initial function); ``get="nngp"``: the Bayesian posterior (``t
    = np.inf``)."""
    if get not in ("ntk", "nngp"):
        raise ValueError(f"get={get!r}: use 'ntk' or 'nngp'")
    predict = nt.predict.gradient_descent_mse_ensemble(
        kernel_fn, jnp.asarray(x_train), jnp.asarray(y_train), diag_reg=diag_reg
    )
    out = predict(t=t, x_test=jnp.asarray(x_test), get=get, compute_cov=True)
    return np.asarray(out.mean), np.diagonal(np.asarray(out.covariance)).copy()


# -------------------------------------------------------------------------- learning rates


def _lambda_max(k: np.ndarray) -> float:
    n = k.shape[0]
    return scipy.linalg.eigvalsh(np.asarray(k, np.float64), subset_by_index=[n - 1, n - 1])[-1]


def max_learning_rates(lam_max: np.ndarray, n_entries: int) -> np.ndarray:
    """Largest stable GD learning rates for the MSE over ``n_entries`` = ``n*k`` entries,
    ``2 n k / λ_max``, given top eigenvalues of the full eNTK ``J J^T``
    (:func:`ntkrepro.kernels.top_ntk_eigenvalue`) or ``k`` times those of an
    output-averaged kernel."""
    return 2.0 * n_entries / np.asarray(lam_max, np.float64)


def max_learning_rate(k_train_train: np.ndarray, n_outputs: int) -> float:
    """Largest stable GD learning rate ``2 n k / λ_max(K)`` of an ``(n, n)`` output-averaged
    kernel for ``n_outputs`` = ``k`` outputs."""
    n = k_train_train.shape[0]
    return float(max_learning_rates(_lambda_max(k_train_train), n * n_outputs))


def network_max_learning_rate(
    apply_fn: Callable, params, x: np.ndarray, *, iters: int = 30, seed: int = 0
) -> float:
    """Largest stable full-batch GD learning rate of a finite network at ``params`` on
    ``x``: :func:`max_learning_rates` of its eNTK's top eigenvalue (``iters`` power
    iterations from ``PRNGKey(seed)``). In the standard parameterization ``λ_max`` grows
    with width, so fair comparisons use equal *fractions* of this rate."""
    key = jax.random.PRNGKey(seed)
    lam = float(kernels.top_ntk_eigenvalue(apply_fn, params, x, iters, key, batched=False))
    if not lam > 0:
        raise ValueError(f"the empirical NTK has no positive eigenvalue (got {lam})")
    n_entries = int(np.prod(jax.eval_shape(apply_fn, params, jnp.asarray(x)).shape))
    return float(max_learning_rates(lam, n_entries))


def stable_rates(
    apply_fn: Callable,
    params_batch,
    x,
    n_outputs: int,
    fraction: float,
    iters: int = 30,
    key: jax.Array | None = None,
) -> np.ndarray:
    """The learning-rate rule of the Seleznova chapter, one rule for every phase and depth:
    for each of ``S`` stacked networks, ``fraction`` of its largest stable rate on the
    inputs ``x`` ``(n, d)`` (its own eNTK at initialization). Returns ``(S,)`` float64."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction} must lie in (0, 1]: a fraction of the stable rate")
    lam = kernels.top_ntk_eigenvalue(apply_fn, params_batch, x, iters=iters, key=key)
    return fraction * max_learning_rates(lam, len(x) * n_outputs)


def ntk_scale(k_train_train: np.ndarray) -> float:
    """``lambda_hat = λ_max(K) / n`` of an ``(n, n)`` kernel: GD on a mean-over-examples
    loss moves the outputs along the top eigenvector at the rate ``lr * lambda_hat`` per
    step, so ``lr * lambda_hat`` is the step size in function space."""
    k = np.asarray(k_train_train, np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] == 0:
        raise ValueError(f"ntk_scale needs a square (n, n) kernel matrix, got shape {k.shape}")
    return float(_lambda_max(k) / k.shape[0])


def lr_for_normalized_step(
    apply_fn: Callable, params, x, normalized_step: float, **ntk_kw
) -> tuple[float, float]:
    """``(lr, lambda_hat)`` with ``lr = normalized_step / lambda_hat``, ``lambda_hat`` the
    :func:`ntk_scale` of the eNTK (:func:`ntkrepro.kernels.empirical_ntk`; ``ntk_kw``
    passed on) of ``apply_fn`` at ``params`` on ``x`` ``(n, ...)``: models trained with
    one normalized step move their outputs equally fast at initialization, whatever their
    parameterization or size."""
    if not (normalized_step > 0 and np.isfinite(normalized_step)):
        raise ValueError(f"normalized_step={normalized_step!r} must be a positive finite number")
    lam = ntk_scale(kernels.empirical_ntk(apply_fn, params, x, **ntk_kw))
    if not lam > 0:
        raise ValueError(f"the empirical NTK has lambda_max/n = {lam!r} <= 0: cannot set lr")
    return normalized_step / lam, lam

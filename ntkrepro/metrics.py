"""Numbers computed from predictions and kernels: accuracy, distances between kernels and
outputs, alignment, dispersion over initializations, rank correlation, task statistics,
width and depth diagnostics, power-law fits. Float64 throughout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def correct(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-example correctness ``(m,)`` (bool) against integer ``labels`` ``(m,)``: argmax of
    ``pred`` ``(m, k)``, or the sign of ``pred`` ``(m,)``/``(m, 1)`` against labels in
    {-1, +1}. Its mean is :func:`accuracy`; it is what a paired bootstrap resamples."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.ndim == 2 and pred.shape[1] > 1:
        return pred.argmax(1) == labels
    return np.sign(pred.reshape(-1)) == np.sign(labels.reshape(-1))


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float | np.ndarray:
    """Classification accuracy against integer ``labels`` ``(m,)``. ``pred`` ``(m, k)``: argmax over
    outputs; ``(m,)`` or ``(m, 1)``: sign against labels in {-1, +1}; returns a float. With leading
    batch dimensions, ``(..., m, k)``: argmax per member, an array ``(...)`` in which a member with
    non-finite outputs scores NaN."""
    pred = np.asarray(pred)
    labels = np.asarray(labels)
    if pred.ndim > 2:
        f = pred.astype(np.float64)
        acc = np.mean(f.argmax(-1) == labels, axis=-1)
        return np.where(np.all(np.isfinite(f), axis=(-2, -1)), acc, np.nan)
    return float(np.mean(correct(pred, labels)))


def rms(a: np.ndarray, b: np.ndarray) -> float:
    """Root-mean-square difference of two output arrays of the same shape."""
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def predictive_variance(f: np.ndarray) -> float:
    """Mean over test points and outputs of the variance over members (``ddof=1``) of ``f``
    ``(members, m, k)``: the empirical posterior variance of an ensemble."""
    f = np.asarray(f, np.float64)
    if f.ndim != 3 or f.shape[0] < 2:
        raise ValueError(f"need outputs of shape (members >= 2, m, k), got {f.shape}")
    return float(f.var(axis=0, ddof=1).mean())


def loss_ratios(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``mean((f_s - y)²) / mean(y²)`` per network: the MSE relative to the zero predictor
    (1 = no better than 0, the best constant for centred targets). ``f`` ``(S, n, k)``,
    ``y`` ``(n, k)`` → ``(S,)`` (NaN/inf for a diverged network)."""
    f, y = np.asarray(f, np.float64), np.asarray(y, np.float64)
    if f.ndim != 3 or f.shape[1:] != y.shape:
        raise ValueError(f"f must be (S, n, k) with (n, k) = y.shape {y.shape}, got {f.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        return np.mean((f - y) ** 2, axis=(1, 2)) / np.mean(y**2)


def kernel_distance(k1: np.ndarray, k2: np.ndarray) -> float:
    """``1 - <K1, K2>_F / (||K1||_F ||K2||_F)`` (Fort et al. 2020); 0 for parallel kernels."""
    k1 = np.asarray(k1, np.float64)
    k2 = np.asarray(k2, np.float64)
    return float(1.0 - np.vdot(k1, k2) / (np.linalg.norm(k1) * np.linalg.norm(k2)))


def relative_change(k_t: np.ndarray, k_0: np.ndarray) -> float | np.ndarray:
    """``||K_t - K_0||_F / ||K_0||_F``: a float for ``(n, n)`` kernels, ``(S,)`` for stacks
    ``(S, n, n)`` (one per network)."""
    k_t, k_0 = np.asarray(k_t, np.float64), np.asarray(k_0, np.float64)
    if k_0.ndim == 2:
        return float(np.linalg.norm(k_t - k_0) / np.linalg.norm(k_0))
    return np.linalg.norm(k_t - k_0, axis=(-2, -1)) / np.linalg.norm(k_0, axis=(-2, -1))


def alignment(k: np.ndarray, y: np.ndarray, centered: bool = True) -> float:
    """Kernel-target alignment ``<K, y y^T>_F / (||K||_F ||y y^T||_F)`` of ``K`` ``(n, n)``
    and ``y`` ``(n,)`` or ``(n, k)``; ``centered`` centers both first (Cortes et al. 2012)."""
    k = np.asarray(k, np.float64)
    y = np.asarray(y, np.float64).reshape(k.shape[0], -1)
    if centered:
        h = np.eye(k.shape[0]) - 1.0 / k.shape[0]
        k = h @ k @ h
        y = y - y.mean(0)
    yy = y @ y.T
    return float(np.vdot(k, yy) / (np.linalg.norm(k) * np.linalg.norm(yy)))


def dispersion(ntks: np.ndarray) -> dict[str, float]:
    """Dispersion over initializations of kernels ``(S, n, n)``: ``cv_frobenius =
    sqrt(mean_s ||Θ_s - Θ̄||_F²) / ||Θ̄||_F`` (finite where off-diagonal means are near 0)
    and ``cv_diag``, the mean over inputs of ``std_s Θ_s(x, x) / mean_s Θ_s(x, x)``."""
    k = np.asarray(ntks, np.float64)
    if k.ndim != 3 or k.shape[0] < 2 or k.shape[1] != k.shape[2]:
        raise ValueError(f"ntks must be (S >= 2, n, n), got {k.shape}")
    mean = k.mean(0)
    spread = np.sqrt(np.mean(np.sum((k - mean) ** 2, axis=(1, 2))))
    diag = np.diagonal(k, axis1=1, axis2=2)
    return {
        "cv_frobenius": float(spread / np.linalg.norm(mean)),
        "cv_diag": float(np.mean(diag.std(0, ddof=1) / diag.mean(0))),
    }


def log_moment_ratio(values: np.ndarray) -> float:
    """``mean_x log(E_s[v²] / E_s[v]²)`` of ``values`` ``(S, n)`` (rows: initializations,
    columns: inputs), i.e. ``log(1 + CV²)`` with population moments: the quantity that
    Hanin & Nica (2019) predict as ``≈ 5 L / n`` for the diagonal NTK of a ReLU network."""
    v = np.asarray(values, np.float64)
    if v.ndim != 2 or v.shape[0] < 2:
        raise ValueError(f"values must be (S >= 2, n), got {v.shape}")
    return float(np.mean(np.log(np.mean(v**2, axis=0) / np.mean(v, axis=0) ** 2)))


def spearman(a, b) -> float:
    """Spearman rank correlation of two sequences (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(a), np.asarray(b)).statistic)


def balance(labels: np.ndarray) -> float:
    """Fraction of the majority class (0.5 = balanced); a trivial task is near 1."""
    labels = np.asarray(labels).reshape(-1)
    return float(max(np.mean(labels > 0), np.mean(labels < 0)))


def neighbour_agreement(x: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of points whose nearest other point (Euclidean, inputs flattened) has the
    same label: near 1 for a function that is smooth on the data, near 0.5 for noise."""
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    sq = np.sum(flat**2, axis=1)
    dist = sq[:, None] + sq[None, :] - 2 * flat @ flat.T
    np.fill_diagonal(dist, np.inf)
    labels = np.asarray(labels).reshape(-1)
    return float(np.mean(labels == labels[np.argmin(dist, axis=1)]))


def finite_stat(values, fn: Callable = np.mean) -> float:
    """``fn`` (default the mean) over the finite entries of ``values``, e.g. the networks of one
    configuration that did not diverge; NaN if none is finite."""
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    return float(fn(v[ok])) if ok.any() else float("nan")


def factor_off(measured: float, reference: float = 1.0) -> float:
    """How far ``measured`` is from ``reference`` as a factor, ``max(m / r, r / m) >= 1``;
    ``inf`` unless both are finite and positive."""
    ok = np.isfinite(measured) and np.isfinite(reference) and measured > 0 and reference > 0
    return float(max(measured / reference, reference / measured)) if ok else float("inf")


def crossing(depths: Sequence[float], values: Sequence[float], level: float) -> float:
    """The depth at which ``values`` first reach ``level`` (e.g. a loss ratio reaching 0.5: the
    depth where networks stop training), interpolated linearly in log depth between the two
    grid points around it. ``nan`` if the first value is already at or above ``level`` (or is
    not finite), ``inf`` if no value reaches it; a non-finite value counts as reaching it."""
    d = np.asarray(depths, np.float64)
    v = np.asarray(values, np.float64)
    if d.shape != v.shape or d.ndim != 1 or np.any(d <= 0) or np.any(np.diff(d) <= 0):
        raise ValueError("depths must be positive and increasing, one value per depth")
    reached = ~(v < level)  # NaN (diverged) counts as not trained
    if reached[0]:
        return float("nan")
    if not reached.any():
        return float("inf")
    i = int(np.argmax(reached))
    if not np.isfinite(v[i]):
        return float(d[i])
    frac = (level - v[i - 1]) / (v[i] - v[i - 1])
    return float(np.exp(np.log(d[i - 1]) + frac * (np.log(d[i]) - np.log(d[i - 1]))))


def first_mismatch(depths: Sequence[int], ratios: Sequence[float], factor: float) -> int | None:
    """The first depth whose ``ratio`` (measured / predicted) leaves ``[1/factor, factor]``
    (a non-finite ratio leaves it); None if none does."""
    if factor <= 1.0:
        raise ValueError(f"factor={factor} must be > 1")
    for depth, r in zip(depths, ratios, strict=True):
        if not (np.isfinite(r) and 1.0 / factor <= r <= factor):
            return int(depth)
    return None


def largest_width_drop(widths: Sequence[int], mean: Sequence[float], sem: Sequence[float]):
    """The largest fall of accuracy as width grows, ``max mean[i] - mean[j]`` over ``i < j``:
    ``{"drop"`` (<= 0 if accuracy never falls: the pair closest to falling), ``"narrow",
    "wide"`` (the widths), ``"z"}`` (the drop over ``sqrt(sem[i]**2 + sem[j]**2)``)."""
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


def fit_power_law(ns: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of ``y = c * n**a`` on log-log axes; returns ``(a, c)``. Needs at least two
    distinct positive ``n`` and positive ``y``."""
    n = np.asarray(ns, np.float64)
    y = np.asarray(ys, np.float64)
    if n.shape != y.shape or n.size < 2 or len(np.unique(n)) < 2:
        raise ValueError(f"need >= 2 distinct sizes with one value each, got {ns!r}, {ys!r}")
    if np.any(n <= 0) or np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise ValueError(f"sizes and values must be positive and finite, got {ns!r}, {ys!r}")
    a, log_c = np.polyfit(np.log(n), np.log(y), 1)
    return float(a), float(np.exp(log_c))

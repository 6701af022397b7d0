"""Mean-field signal propagation (Seleznova & Kutyniok 2022; Poole et al. 2016;
Schoenholz et al. 2017), in neural-tangents' NTK parameterization: a layer computes
``z = sqrt(weight_var / fan_in) * W x + sqrt(bias_var) * b``, ``W, b ~ N(0, 1)``, so
``weight_var`` is σ_w² and ``bias_var`` σ_b².

The pre-activation variance follows the *variance map*
``q' = σ_w² E[φ(√q z)²] + σ_b²`` (``z ~ N(0, 1)``) to a fixed point ``q*``; the
correlation ``c`` of two inputs follows the *correlation map*, whose slope at ``c = 1``,
``χ₁ = σ_w² E[φ'(√q* z)²]``, separates the ordered phase (``χ₁ < 1``: inputs become
perfectly correlated, gradients vanish) from the chaotic phase (``χ₁ > 1``: gradients
explode); ``χ₁ = 1`` is the edge of chaos. Closed forms exist for ``relu`` (arc-cosine
kernel) and ``erf`` (arcsine kernel); any other activation in :data:`NUMERIC` is
integrated by quadrature. Theory only: finite networks over many initializations are in
``models.init_many``, ``kernels.ntk_many`` and ``train.train_many``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import scipy.integrate
import scipy.optimize
import scipy.special

CLOSED_FORM = ("relu", "erf")
PHASES = ("ordered", "edge", "chaotic")

# The three initializations shared by every figure of the chapter: σ_b² fixed, σ_w² such
# that χ₁ takes these values (ReLU: σ_w² = 2 χ₁, i.e. 1, 2 and 3).
BIAS_VAR = 0.05
PHASE_CHI = {"ordered": 0.5, "edge": 1.0, "chaotic": 1.5}


def _logistic(x):
    return scipy.special.expit(x)


NUMERIC: dict[str, tuple[Callable, Callable]] = {
    "relu": (lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float)),
    "erf": (scipy.special.erf, lambda x: 2 / np.sqrt(np.pi) * np.exp(-(x**2))),
    "tanh": (np.tanh, lambda x: 1.0 - np.tanh(x) ** 2),
    "sigmoid": (_logistic, lambda x: _logistic(x) * (1.0 - _logistic(x))),
}


def _check_act(act: str, closed_form: bool = False) -> None:
    known = CLOSED_FORM if closed_form else tuple(NUMERIC)
    if act not in known:
        raise ValueError(f"activation {act!r} not supported here; use one of {', '.join(known)}")


def gauss_expectation(
    fn: Callable, q: float, order: int = 200, adaptive: bool | None = None
) -> float:
    """``E[fn(√q z)]`` for ``z ~ N(0, 1)``, by numerical integration. Default (``adaptive=None``):
    for ``q <= 4`` probabilists' Gauss-Hermite of even ``order`` (no node at ``z = 0``, where ReLU's
    derivative jumps); for larger ``q`` adaptive quadrature in ``u = √q z`` split at 0, because
    features of width O(1) in ``u`` (erf's derivative) become too narrow in ``z`` for fixed nodes.
    ReLU terms are positively homogeneous, so the symmetric Gauss-Hermite rule is exact for them at
    any ``q`` (``adaptive=False``)."""
    if adaptive is None:
        adaptive = q > 4.0
    if not adaptive:
        z, w = _hermite_nodes(order)
        return float(np.sum(w * fn(np.sqrt(q) * z)))
    s = np.sqrt(q)

    def f(u):
        return float(fn(np.asarray(u))) * np.exp(-0.5 * u * u / q) / (s * np.sqrt(2 * np.pi))

    lim = 12 * s
    kw = dict(epsabs=1e-13, epsrel=1e-11, limit=200)
    return float(
        scipy.integrate.quad(f, -lim, 0, **kw)[0] + scipy.integrate.quad(f, 0, lim, **kw)[0]
    )


@functools.lru_cache(maxsize=8)
def _hermite_nodes(order: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (normalized to sum to 1) of probabilists' Gauss-Hermite."""
    z, w = np.polynomial.hermite_e.hermegauss(order)
    return z, w / np.sqrt(2 * np.pi)


def variance_map(q: float, weight_var: float, bias_var: float, act: str) -> float:
    """One layer of the variance map ``q' = σ_w² E[φ(√q z)²] + σ_b²``. Closed forms: ReLU ``E =
    q/2``; erf ``E = (2/π) arcsin(2q / (1 + 2q))``."""
    _check_act(act)
    if act == "relu":
        second = q / 2
    elif act == "erf":
        second = 2 / np.pi * np.arcsin(2 * q / (1 + 2 * q))
    else:
        phi = NUMERIC[act][0]
        second = gauss_expectation(lambda u: phi(u) ** 2, q)
    return weight_var * second + bias_var


def fixed_point(
    weight_var: float, bias_var: float, act: str, q0: float = 1.0, tol: float = 1e-12
) -> float:
    """The fixed point ``q*`` of the variance map reached from ``q0``; ``inf`` if it diverges. ReLU
    has ``q* = σ_b² / (1 - σ_w²/2)`` for ``σ_w² < 2`` and no finite fixed point otherwise (unless
    ``σ_w² = 2`` and ``σ_b² = 0``, where every ``q`` is fixed)."""
    _check_act(act)
    if act == "relu":
        if weight_var < 2:
            return bias_var / (1 - weight_var / 2)
        return q0 if (weight_var == 2 and bias_var == 0) else np.inf
    if act == "erf":
        return _erf_fixed_point(weight_var, bias_var)
    q = q0
    for _ in range(100_000):
        new = variance_map(q, weight_var, bias_var, act)
        if not np.isfinite(new) or new > 1e12:
            return np.inf
        if abs(new - q) <= tol * max(1.0, q):
            return new
        q = new
    return q


def _erf_fixed_point(weight_var: float, bias_var: float) -> float:
    """Stable fixed point of the erf variance map, by root finding. The map is increasing and
    concave with ``q' <= σ_w² + σ_b²`` and slope ``4 σ_w²/π`` at ``q = 0``: for ``σ_b² > 0`` the
    fixed point is unique; for ``σ_b² = 0`` it is ``0`` unless the slope exceeds 1, when the
    positive root is the stable one."""
    top = weight_var + bias_var
    if bias_var == 0 and 4 * weight_var / np.pi <= 1:
        return 0.0
    lo = bias_var if bias_var > 0 else 1e-300
    if bias_var == 0:  # positive root: start where the map is still above the diagonal
        lo = top * 1e-9
    h = lambda q: variance_map(q, weight_var, bias_var, "erf") - q  # noqa: E731
    return float(scipy.optimize.brentq(h, lo, top, xtol=1e-14, rtol=1e-13))


def chi1(weight_var: float, bias_var: float, act: str, numeric: bool = False) -> float:
    """``χ₁ = σ_w² E[φ'(√q* z)²]``: slope of the correlation map at ``c = 1``. Closed forms: ReLU
    ``χ₁ = σ_w²/2`` (any ``q*``); erf ``χ₁ = σ_w² (4/π) / √(1 + 4 q*)``. With ``numeric=True`` both
    the fixed point and the expectation use quadrature."""
    _check_act(act, closed_form=not numeric)
    if not numeric:
        if act == "relu":
            return weight_var / 2
        q = fixed_point(weight_var, bias_var, act)
        return weight_var * 4 / np.pi / np.sqrt(1 + 4 * q)
    phi, dphi = NUMERIC[act]
    adaptive = False if act == "relu" else None
    q = 1.0
    # Iterate the variance map; stop once it has converged or clearly diverges (then
    # E[φ'²] is taken at a large q; for ReLU it does not depend on q at all).
    for _ in range(5_000):
        new = weight_var * gauss_expectation(lambda u: phi(u) ** 2, q, adaptive=adaptive)
        new += bias_var
        done = new > 1e6 or abs(new - q) <= 1e-12 * max(1.0, q)
        q = new
        if done:
            break
    return weight_var * gauss_expectation(lambda u: dphi(u) ** 2, q, adaptive=adaptive)


def correlation_map(c: float, q: float, weight_var: float, bias_var: float, act: str) -> float:
    """Correlation after one layer of two inputs with variance ``q`` and correlation ``c``. ``c' =
    (σ_w² E[φ(u)φ(v)] + σ_b²) / q'`` with ``(u, v)`` centred Gaussian, variances ``q``, covariance
    ``c q``; ``q'`` from :func:`variance_map`. Closed forms: ReLU (arc-cosine, ``E = q (sin θ + (π -
    θ) cos θ) / 2π``, ``θ = arccos c``) and erf (``E = (2/π) arcsin(2 c q / (1 + 2 q))``)."""
    _check_act(act, closed_form=True)
    c = float(np.clip(c, -1.0, 1.0))
    if act == "relu":
        theta = np.arccos(c)
        cross = q * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi)
    else:
        cross = 2 / np.pi * np.arcsin(2 * c * q / (1 + 2 * q))
    return (weight_var * cross + bias_var) / variance_map(q, weight_var, bias_var, act)


def weight_var_for_chi(
    chi: float, bias_var: float, act: str, hi: float = 1e3, numeric: bool = False
) -> float:
    """The ``σ_w²`` at which ``χ₁(σ_w², σ_b²) = chi`` (root of a monotone function);
    ``numeric=True`` uses quadrature (any activation in :data:`NUMERIC`)."""
    _check_act(act, closed_form=not numeric)
    if chi <= 0:
        raise ValueError(f"chi={chi} must be > 0")
    if act == "relu" and not numeric:
        return 2.0 * chi
    return float(
        scipy.optimize.brentq(
            lambda w: chi1(w, bias_var, act, numeric=numeric) - chi, 1e-6, hi, xtol=1e-10
        )
    )


def edge_of_chaos(bias_var: float, act: str) -> float:
    """``σ_w²`` on the ``χ₁ = 1`` line at a given ``σ_b²``."""
    return weight_var_for_chi(1.0, bias_var, act)


def phase_points(
    act: str, bias_var: float = BIAS_VAR, chis: dict[str, float] | None = None
) -> dict[str, tuple[float, float]]:
    """``{phase: (σ_w², σ_b²)}`` for the ordered phase, the edge of chaos and the chaotic
    phase at fixed ``σ_b²``: the points where ``χ₁`` equals :data:`PHASE_CHI`."""
    chis = PHASE_CHI if chis is None else chis
    return {ph: (weight_var_for_chi(chi, bias_var, act), bias_var) for ph, chi in chis.items()}


def chi1_grid(weight_vars: np.ndarray, bias_vars: np.ndarray, act: str) -> np.ndarray:
    """``χ₁`` on a grid, shape ``(len(bias_vars), len(weight_vars))`` (rows: σ_b²)."""
    return np.array([[chi1(w, b, act) for w in weight_vars] for b in bias_vars])

"""Mean-field signal propagation (Poole et al. 2016; Seleznova & Kutyniok 2022), NTK
parameterization (``weight_var`` σ_w², ``bias_var`` σ_b²): variance map, ``q*``, ``χ₁``."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import scipy.integrate
import scipy.optimize
import scipy.special

CLOSED_FORM = ("relu", "erf")
PHASES = ("ordered", "edge", "chaotic")

# The initializations of every figure of the chapter: σ_b² fixed, σ_w² such that χ₁ is:
BIAS_VAR = 0.05
PHASE_CHI = {"ordered": 0.5, "edge": 1.0, "chaotic": 1.5}
_expit = scipy.special.expit

NUMERIC: dict[str, tuple[Callable, Callable]] = {
    "relu": (lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float)),
    "erf": (scipy.special.erf, lambda x: 2 / np.sqrt(np.pi) * np.exp(-(x**2))),
    "tanh": (np.tanh, lambda x: 1.0 - np.tanh(x) ** 2),
    "sigmoid": (_expit, lambda x: _expit(x) * (1.0 - _expit(x))),
}


def _check_act(act: str, closed_form: bool = False) -> None:
    known = CLOSED_FORM if closed_form else tuple(NUMERIC)
    if act not in known:
        raise ValueError(f"activation {act!r} not supported here; use one of {', '.join(known)}")


def gauss_expectation(
    fn: Callable, q: float, order: int = 200, adaptive: bool | None = None
) -> float:
    """``E[fn(√q z)]``: Gauss-Hermite (even ``order``: no node at the ReLU kink) for ``q <= 4``,
    else adaptive quadrature in ``u = √q z``, as fixed nodes miss narrow features in ``u``."""
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
    """Nodes and weights (summing to 1) of probabilists' Gauss-Hermite."""
    z, w = np.polynomial.hermite_e.hermegauss(order)
    return z, w / np.sqrt(2 * np.pi)


def variance_map(q: float, weight_var: float, bias_var: float, act: str) -> float:
    """One layer of the variance map ``q' = σ_w² E[φ(√q z)²] + σ_b²``."""
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
    """The fixed point ``q*`` of the variance map reached from ``q0``; ``inf`` if it diverges."""
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
    """Stable fixed point of the erf variance map (for ``σ_b² = 0``: 0 unless ``4 σ_w²/π > 1``)."""
    top = weight_var + bias_var
    if bias_var == 0 and 4 * weight_var / np.pi <= 1:
        return 0.0
    # For σ_b² = 0, the positive root: start where the map is still above the diagonal.
    lo = bias_var if bias_var > 0 else (top * 1e-9 if bias_var == 0 else 1e-300)
    h = lambda q: variance_map(q, weight_var, bias_var, "erf") - q  # noqa: E731
    return float(scipy.optimize.brentq(h, lo, top, xtol=1e-14, rtol=1e-13))


def chi1(weight_var: float, bias_var: float, act: str, numeric: bool = False) -> float:
    """``χ₁ = σ_w² E[φ'(√q* z)²]``, the correlation map's slope at 1; ``numeric``: quadrature."""
    _check_act(act, closed_form=not numeric)
    if not numeric:
        if act == "relu":
            return weight_var / 2
        q = fixed_point(weight_var, bias_var, act)
        return weight_var * 4 / np.pi / np.sqrt(1 + 4 * q)
    phi, dphi = NUMERIC[act]
    adaptive = False if act == "relu" else None
    q = 1.0
    # Iterate until converged or clearly diverging (E[φ'²] then at a large q; ReLU: any q).
    for _ in range(5_000):
        new = weight_var * gauss_expectation(lambda u: phi(u) ** 2, q, adaptive=adaptive)
        new += bias_var
        done = new > 1e6 or abs(new - q) <= 1e-12 * max(1.0, q)
        q = new
        if done:
            break
    return weight_var * gauss_expectation(lambda u: dphi(u) ** 2, q, adaptive=adaptive)


def correlation_map(c: float, q: float, weight_var: float, bias_var: float, act: str) -> float:
    """Correlation ``c'`` after one layer of two inputs of variance ``q`` and correlation ``c``."""
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
    """The ``σ_w²`` at which ``χ₁(σ_w², σ_b²) = chi``; ``numeric`` allows any :data:`NUMERIC`."""
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
    """``{phase: (σ_w², σ_b²)}`` at fixed ``σ_b²`` where ``χ₁`` equals :data:`PHASE_CHI`."""
    chis = PHASE_CHI if chis is None else chis
    return {ph: (weight_var_for_chi(chi, bias_var, act), bias_var) for ph, chi in chis.items()}


def chi1_grid(weight_vars: np.ndarray, bias_vars: np.ndarray, act: str) -> np.ndarray:
    """``χ₁`` on a grid, shape ``(len(bias_vars), len(weight_vars))`` (rows: σ_b²)."""
    return np.array([[chi1(w, b, act) for w in weight_vars] for b in bias_vars])

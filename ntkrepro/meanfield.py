"""Mean-field signal propagation (Poole et al. 2016; Schoenholz et al. 2017) of fully
connected networks with weight and bias variances ``weight_var`` σ_w², ``bias_var`` σ_b²
(the forward maps are the same in NTK and standard parameterization): variance map, ``q*``,
``χ₁``, correlation map, depth scale, and the phase points of the Seleznova & Kutyniok
(2022) chapter."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import scipy.integrate
import scipy.optimize
import scipy.special

# Activations ``a erf(b u) + c`` with closed-form Gaussian expectations, as (a, b, c):
# "sigmoid" is neural-tangents' ``stax.Sigmoid_like``, the erf fitted to the logistic function.
ERF_FAMILY = {"erf": (1.0, 1.0, 0.0), "sigmoid": (0.5, 1 / 2.4020563531719796, 0.5)}
CLOSED_FORM = ("relu", *ERF_FAMILY)
PHASES = ("ordered", "edge", "chaotic")

# The initializations of every figure of the chapter: the authors' σ_b² = 0 (trainable biases,
# zero at init) and σ_w² where χ₁ takes these values. ReLU: σ_w² = 1.0, 2.0, 2.2, the values
# of ntk_train_dynamics.py in github.com/mselezniova/ntk_beyond_limit. The sigmoid's mean of
# 1/2 correlates every pair of inputs, so its chaotic fixed point stays close to 1: c* = 0.977
# at χ₁ = 1.1, 0.920 at χ₁ = 1.5, which is the chaotic point taken for it.
BIAS_VAR = 0.0
PHASE_CHI = {
    "relu": {"ordered": 0.5, "edge": 1.0, "chaotic": 1.1},
    "sigmoid": {"ordered": 0.5, "edge": 1.0, "chaotic": 1.5},
}
DEFAULT_CHI = {"ordered": 0.5, "edge": 1.0, "chaotic": 1.5}
_expit = scipy.special.expit


def _erf_family(a: float, b: float, c: float) -> tuple[Callable, Callable]:
    def fn(x):
        return a * scipy.special.erf(b * x) + c

    def grad(x):
        return a * b * 2 / np.sqrt(np.pi) * np.exp(-((b * x) ** 2))

    return fn, grad


NUMERIC: dict[str, tuple[Callable, Callable]] = {
    "relu": (lambda x: np.maximum(x, 0.0), lambda x: (x > 0).astype(float)),
    **{name: _erf_family(*abc) for name, abc in ERF_FAMILY.items()},
    "tanh": (np.tanh, lambda x: 1.0 - np.tanh(x) ** 2),
    "logistic": (_expit, lambda x: _expit(x) * (1.0 - _expit(x))),
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
    elif act in ERF_FAMILY:
        second = _erf_cross(q, q, 1.0, act)
    else:
        phi = NUMERIC[act][0]
        second = gauss_expectation(lambda u: phi(u) ** 2, q)
    return weight_var * second + bias_var


def _erf_cross(q1: float, q2: float, c: float, act: str) -> float:
    """``E[φ(u) φ(v)]`` for ``φ = a erf(b ·) + c0`` and centred Gaussians of variances ``q1``,
    ``q2`` and correlation ``c`` (Williams 1997): ``a² (2/π) arcsin(...) + c0²``."""
    a, b, c0 = ERF_FAMILY[act]
    s1, s2 = 2 * b * b * q1, 2 * b * b * q2
    arg = c * np.sqrt(s1 * s2) / np.sqrt((1 + s1) * (1 + s2))
    return a * a * 2 / np.pi * np.arcsin(arg) + c0 * c0


def fixed_point(
    weight_var: float, bias_var: float, act: str, q0: float = 1.0, tol: float = 1e-12
) -> float:
    """The fixed point ``q*`` of the variance map reached from ``q0``; ``inf`` if it diverges."""
    _check_act(act)
    if act == "relu":
        if weight_var < 2:
            return bias_var / (1 - weight_var / 2)
        return q0 if (weight_var == 2 and bias_var == 0) else np.inf
    if act in ERF_FAMILY:
        return _erf_fixed_point(weight_var, bias_var, act)
    q = q0
    for _ in range(100_000):
        new = variance_map(q, weight_var, bias_var, act)
        if not np.isfinite(new) or new > 1e12:
            return np.inf
        if abs(new - q) <= tol * max(1.0, q):
            return new
        q = new
    return q


def _erf_fixed_point(weight_var: float, bias_var: float, act: str) -> float:
    """Stable fixed point of an erf-family variance map: the map is increasing and concave in
    ``q``, between ``σ_w² c² + σ_b²`` and ``σ_w² (a² + c²) + σ_b²``. A centred one (``c = 0``)
    with ``σ_b² = 0`` has ``q* = 0`` unless its slope at 0, ``4 σ_w² a² b²/π``, exceeds 1."""
    a, b, c = ERF_FAMILY[act]
    floor, top = weight_var * c * c + bias_var, weight_var * (a * a + c * c) + bias_var
    if floor == 0 and 4 * weight_var * (a * b) ** 2 / np.pi <= 1:
        return 0.0
    # With floor 0, the positive root: start where the map is still above the diagonal.
    lo = floor if floor > 0 else top * 1e-9
    h = lambda q: variance_map(q, weight_var, bias_var, act) - q  # noqa: E731
    return float(scipy.optimize.brentq(h, lo, top, xtol=1e-14, rtol=1e-13))


def chi1(weight_var: float, bias_var: float, act: str, numeric: bool = False) -> float:
    """``χ₁ = σ_w² E[φ'(√q* z)²]``, the correlation map's slope at 1; ``numeric``: quadrature."""
    _check_act(act, closed_form=not numeric)
    if not numeric:
        if act == "relu":
            return weight_var / 2
        a, b, _ = ERF_FAMILY[act]
        q = fixed_point(weight_var, bias_var, act)
        return weight_var * (a * b) ** 2 * 4 / np.pi / np.sqrt(1 + 4 * b * b * q)
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
        cross = _erf_cross(q, q, c, act)
    return (weight_var * cross + bias_var) / variance_map(q, weight_var, bias_var, act)


def correlation_fixed_point(
    weight_var: float, bias_var: float, act: str, depth: int = 100_000, tol: float = 1e-12
) -> float:
    """The correlation ``c*`` that two inputs with ``c = 1/2`` reach at ``q*`` (1 below and at
    the edge of chaos, below 1 in a chaotic phase). ReLU without bias is homogeneous: its
    correlation map does not depend on ``q`` and reaches ``c* = 1`` in every phase, slowly."""
    _check_act(act, closed_form=True)
    q = fixed_point(weight_var, bias_var, act)
    if act == "relu" and bias_var == 0:
        q = 1.0
    if not np.isfinite(q) or q == 0:
        raise ValueError(f"no finite q* > 0 for {act} at σ_w² = {weight_var}, σ_b² = {bias_var}")
    c = 0.5  # not 0: an odd activation without bias keeps c = 0 in every phase
    for _ in range(depth):
        new = correlation_map(c, q, weight_var, bias_var, act)
        if abs(new - c) <= tol:
            return float(new)
        c = new
    return float(c)


def depth_scale(weight_var: float, bias_var: float, act: str) -> float:
    """Ordered-phase depth scale ``ξ = -1 / ln χ₁`` (layers) over which gradients vanish and,
    where ``q* > 0``, input correlations converge to 1 (Schoenholz et al. 2017; ReLU without
    bias has ``q* = 0`` and correlations that converge only polynomially); ``inf`` at and
    beyond the edge of chaos."""
    chi = chi1(weight_var, bias_var, act)
    return -1.0 / np.log(chi) if chi < 1 else np.inf


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


def phase_chis(act: str) -> dict[str, float]:
    """``{phase: χ₁}`` of the chapter's initializations for ``act`` (:data:`PHASE_CHI`)."""
    return dict(PHASE_CHI.get(act, DEFAULT_CHI))


def phase_points(
    act: str, bias_var: float = BIAS_VAR, chis: dict[str, float] | None = None
) -> dict[str, tuple[float, float]]:
    """``{phase: (σ_w², σ_b²)}`` at fixed ``σ_b²`` where ``χ₁`` equals :func:`phase_chis`."""
    chis = phase_chis(act) if chis is None else chis
    return {ph: (weight_var_for_chi(chi, bias_var, act), bias_var) for ph, chi in chis.items()}


def chi1_grid(weight_vars: np.ndarray, bias_vars: np.ndarray, act: str) -> np.ndarray:
    """``χ₁`` on a grid, shape ``(len(bias_vars), len(weight_vars))`` (rows: σ_b²)."""
    return np.array([[chi1(w, b, act) for w in weight_vars] for b in bias_vars])

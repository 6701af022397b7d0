"""Mean-field signal propagation and NTK statistics over many random initializations.

Used by the chapter on Seleznova & Kutyniok (2022). Conventions follow
neural-tangents' ``stax.Dense`` in NTK parameterization: a hidden layer computes
``z = sqrt(weight_var / fan_in) * W x + sqrt(bias_var) * b`` with ``W, b ~ N(0, 1)``,
so ``weight_var`` is the σ_w² and ``bias_var`` the σ_b² of the mean-field literature
(Poole et al. 2016; Schoenholz et al. 2017).

Infinite-width theory. The pre-activation variance follows the *variance map*
``q' = σ_w² E[φ(√q z)²] + σ_b²`` (``z ~ N(0, 1)``) to a fixed point ``q*``; the
correlation ``c`` of two inputs follows the *correlation map*, whose slope at ``c = 1``,
``χ₁ = σ_w² E[φ'(√q* z)²]``, separates the ordered phase (``χ₁ < 1``: inputs become
perfectly correlated, gradients vanish) from the chaotic phase (``χ₁ > 1``: gradients
explode); ``χ₁ = 1`` is the edge of chaos. Closed forms exist for ``relu`` (arc-cosine
kernel) and ``erf`` (arcsine kernel); any other activation in :data:`NUMERIC` is
integrated with Gauss-Hermite quadrature.

Finite width. :func:`init_many` draws many initializations at once, :func:`ntk_many`
computes their empirical NTKs with ``jax.vmap`` (in chunks, to bound memory), and
:func:`train_many` trains all of them at once by full-batch gradient descent.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import neural_tangents as nt  # noqa: F401  (ntkrepro.compat is applied by the package)
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
    """``E[fn(√q z)]`` for ``z ~ N(0, 1)``, by numerical integration.

    Default (``adaptive=None``): for ``q <= 4`` probabilists' Gauss-Hermite of even
    ``order`` (no node at ``z = 0``, where ReLU's derivative jumps); for larger ``q``
    adaptive quadrature in ``u = √q z`` split at 0, because features of width O(1) in
    ``u`` (erf's derivative) become too narrow in ``z`` for fixed nodes. ReLU terms are
    positively homogeneous, so the symmetric Gauss-Hermite rule is exact for them at any
    ``q`` (``adaptive=False``).
    """
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
    """One layer of the variance map ``q' = σ_w² E[φ(√q z)²] + σ_b²``.

    Closed forms: ReLU ``E = q/2``; erf ``E = (2/π) arcsin(2q / (1 + 2q))``.
    """
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
    """The fixed point ``q*`` of the variance map reached from ``q0``; ``inf`` if it diverges.

    ReLU has ``q* = σ_b² / (1 - σ_w²/2)`` for ``σ_w² < 2`` and no finite fixed point
    otherwise (unless ``σ_w² = 2`` and ``σ_b² = 0``, where every ``q`` is fixed).
    """
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
    """Stable fixed point of the erf variance map, by root finding.

    The map is increasing and concave with ``q' <= σ_w² + σ_b²`` and slope ``4 σ_w²/π``
    at ``q = 0``: for ``σ_b² > 0`` the fixed point is unique; for ``σ_b² = 0`` it is
    ``0`` unless the slope exceeds 1, when the positive root is the stable one.
    """
    top = weight_var + bias_var
    if bias_var == 0 and 4 * weight_var / np.pi <= 1:
        return 0.0
    lo = bias_var if bias_var > 0 else 1e-300
    if bias_var == 0:  # positive root: start where the map is still above the diagonal
        lo = top * 1e-9
    h = lambda q: variance_map(q, weight_var, bias_var, "erf") - q  # noqa: E731
    return float(scipy.optimize.brentq(h, lo, top, xtol=1e-14, rtol=1e-13))


def chi1(weight_var: float, bias_var: float, act: str, numeric: bool = False) -> float:
    """``χ₁ = σ_w² E[φ'(√q* z)²]``: slope of the correlation map at ``c = 1``.

    Closed forms: ReLU ``χ₁ = σ_w²/2`` (any ``q*``); erf ``χ₁ = σ_w² (4/π) / √(1 + 4 q*)``.
    With ``numeric=True`` both the fixed point and the expectation use quadrature.
    """
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
    """Correlation after one layer of two inputs with variance ``q`` and correlation ``c``.

    ``c' = (σ_w² E[φ(u)φ(v)] + σ_b²) / q'`` with ``(u, v)`` centred Gaussian, variances
    ``q``, covariance ``c q``; ``q'`` from :func:`variance_map`. Closed forms: ReLU
    (arc-cosine, ``E = q (sin θ + (π - θ) cos θ) / 2π``, ``θ = arccos c``) and erf
    (``E = (2/π) arcsin(2 c q / (1 + 2 q))``).
    """
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


# --------------------------------------------------------------------------------------
# Finite networks over many initializations (vectorized with jax.vmap)
# --------------------------------------------------------------------------------------


def init_many(init_fn: Callable, key: jax.Array, n: int, input_shape: tuple[int, ...]):
    """``n`` independent initializations of a stax network, stacked on a leading axis."""
    keys = jax.random.split(key, n)
    return jax.vmap(lambda k: init_fn(k, input_shape)[1])(keys)


def ntk_many(apply_fn: Callable, params_batch, x, chunk: int = 8) -> np.ndarray:
    """Empirical NTKs ``J(x) J(x)^T`` of every initialization: ``(S, n, n)`` float64.

    ``params_batch`` holds ``S`` parameter sets on a leading axis; they are processed
    ``chunk`` at a time (``jax.lax.map`` with ``batch_size``, i.e. ``vmap`` per chunk),
    which bounds memory by ``chunk * n * n_params`` Jacobian entries. The kernel is the
    mean over outputs (``trace_axes=(-1,)``).
    """
    ntk_fn = nt.empirical_ntk_fn(
        apply_fn,
        trace_axes=(-1,),
        vmap_axes=0,  # examples are independent: one backward pass per example
        implementation=nt.NtkImplementation.JACOBIAN_CONTRACTION,
    )
    x = jnp.asarray(x)
    fn = jax.jit(lambda pb: jax.lax.map(lambda p: ntk_fn(x, None, p), pb, batch_size=chunk))
    return np.asarray(fn(params_batch), np.float64)


def dispersion(ntks: np.ndarray) -> dict[str, float]:
    """Dispersion of kernels over initializations; ``ntks`` is ``(S, n, n)``.

    Returns ``cv_frobenius = sqrt(mean_s ||Θ_s - Θ̄||_F²) / ||Θ̄||_F`` (a coefficient of
    variation of the whole matrix that stays finite when off-diagonal means are near
    zero) and ``cv_diag``, the mean over inputs of ``std_s Θ_s(x, x) / mean_s Θ_s(x, x)``.
    """
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


def _mse(f, y):
    return 0.5 * jnp.mean((f - y) ** 2)


def top_ntk_eigenvalue(
    apply_fn: Callable, params_batch, x, iters: int = 30, key: jax.Array | None = None
) -> np.ndarray:
    """Largest eigenvalue of each network's NTK on ``x`` (summed over outputs), ``(S,)``.

    Power iteration on ``v -> J J^T v`` with one JVP and one VJP per step, so the
    ``(n k, n_params)`` Jacobian is never formed. ``λ_max / k`` is the largest eigenvalue
    of the output-averaged kernel that :func:`ntkrepro.kernels.max_learning_rate` takes.
    """
    x = jnp.asarray(x)
    key = jax.random.PRNGKey(0) if key is None else key

    def one(params):
        f0, vjp = jax.vjp(lambda p: apply_fn(p, x), params)
        v = jax.random.normal(key, f0.shape, f0.dtype)

        def step(v, _):
            v = v / jnp.linalg.norm(v)
            (g,) = vjp(v)
            jv = jax.jvp(lambda p: apply_fn(p, x), (params,), (g,))[1]
            return jv, jnp.vdot(v, jv)

        _, lams = jax.lax.scan(step, v, None, length=iters)
        return lams[-1]

    return np.asarray(jax.jit(jax.vmap(one))(params_batch), np.float64)


def max_learning_rates(lam_max: np.ndarray, n_entries: int) -> np.ndarray:
    """Largest stable GD learning rate for ``0.5 * mean((f - y)**2)`` over ``n_entries``
    (``n*k``) entries: ``2 n k / λ_max(J J^T)``, given the top eigenvalue of the full NTK
    from :func:`top_ntk_eigenvalue`."""
    return 2.0 * n_entries / np.asarray(lam_max, np.float64)


def train_many(
    apply_fn: Callable,
    params_batch,
    x,
    y,
    lr,
    steps: int,
    chunk_steps: int = 100,
):
    """Full-batch gradient descent on ``0.5 * mean((f - y)**2)`` for every initialization.

    ``lr`` is a scalar or ``(S,)`` (one rate per network). All networks train at once
    (``vmap`` inside a ``lax.scan``). Returns ``(params_batch, losses)`` with losses
    ``(S, steps)`` float64; a diverged network shows non-finite losses.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    leaves = jax.tree_util.tree_leaves(params_batch)
    n_nets = leaves[0].shape[0]
    lr = jnp.broadcast_to(jnp.asarray(lr, leaves[0].dtype), (n_nets,))

    def step_one(params, rate):
        loss, grads = jax.value_and_grad(lambda p: _mse(apply_fn(p, x), y))(params)
        return jax.tree_util.tree_map(lambda p, g: p - rate * g, params, grads), loss

    @jax.jit
    def run_chunk(params, length_marker):
        def body(p, _):
            return jax.vmap(step_one)(p, lr)

        return jax.lax.scan(body, params, None, length=length_marker.shape[0])

    losses = []
    done = 0
    while done < steps:
        n = min(chunk_steps, steps - done)
        params_batch, chunk_losses = run_chunk(params_batch, jnp.zeros(n))
        losses.append(np.asarray(chunk_losses, np.float64).T)
        done += n
    return params_batch, np.concatenate(losses, axis=1) if losses else np.zeros((n_nets, 0))


def apply_many(apply_fn: Callable, params_batch, x) -> np.ndarray:
    """Outputs of every network on ``x``: ``(S, n, k)`` float64."""
    return np.asarray(jax.jit(jax.vmap(lambda p: apply_fn(p, x)))(params_batch), np.float64)


def relative_changes(k_t: np.ndarray, k_0: np.ndarray) -> np.ndarray:
    """``||Θ_T - Θ_0||_F / ||Θ_0||_F`` per network, for stacks ``(S, n, n)``."""
    k_t, k_0 = np.asarray(k_t, np.float64), np.asarray(k_0, np.float64)
    return np.linalg.norm(k_t - k_0, axis=(1, 2)) / np.linalg.norm(k_0, axis=(1, 2))


# --------------------------------------------------------------------------------------
# Infinite-width prediction of the trained ensemble (mean and covariance)
# --------------------------------------------------------------------------------------


def ensemble_prediction(
    nngp: dict[str, np.ndarray], ntk: dict[str, np.ndarray], y_train: np.ndarray, t: float
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance over initializations of an infinitely wide network trained by
    gradient flow for time ``t`` on ``0.5 * mean((f - y)**2)`` (Lee et al. 2019, eq. 16).

    ``nngp``/``ntk`` hold blocks ``"tt"`` (n, n), ``"st"`` (m, n) and ``"ss"`` (m, m) for
    train ``t`` and test ``s`` inputs; ``y_train`` is ``(n, k)``. With
    ``A = Θ_st Θ_tt^{-1} (I - exp(-Θ_tt t / (n k)))``:
    mean ``A y``, covariance ``K_ss + A K_tt A^T - (A K_ts + K_st A^T)``. Float64,
    through the eigendecomposition of ``Θ_tt`` (no inverse of small eigenvalues:
    ``(1 - e^{-λ s}) / λ → s``). This is what ``nt.predict.gradient_descent_mse_ensemble``
    computes; doing it here in float64 keeps deep, ill-conditioned kernels accurate.
    Returns ``(mean (m, k), cov (m, m))``.
    """
    y = np.asarray(y_train, np.float64)
    scale = t / y.size
    lam, v = np.linalg.eigh(np.asarray(ntk["tt"], np.float64))
    lam = np.clip(lam, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.where(lam > 0, -np.expm1(-lam * scale) / lam, scale)
    a = np.asarray(ntk["st"], np.float64) @ v @ np.diag(g) @ v.T  # (m, n)
    k_tt = np.asarray(nngp["tt"], np.float64)
    k_st = np.asarray(nngp["st"], np.float64)
    cov = np.asarray(nngp["ss"], np.float64) + a @ k_tt @ a.T - a @ k_st.T - k_st @ a.T
    return a @ y, cov


def as_list(values: Sequence[float]) -> list[float]:
    """Plain floats (for JSON)."""
    return [float(v) for v in values]


# --------------------------------------------------------------------------------------
# What training reached, over many initializations (figures ntk_change, trainability and
# output_variance of the chapter)
# --------------------------------------------------------------------------------------


def stable_rates(
    apply_fn: Callable,
    params_batch,
    x,
    n_outputs: int,
    fraction: float,
    iters: int = 30,
    key: jax.Array | None = None,
) -> np.ndarray:
    """The learning-rate rule of the chapter: for each network, ``fraction`` of its largest
    stable GD rate ``2 n k / λ_max`` (:func:`max_learning_rates`) on the training inputs
    ``x`` ``(n, d)``, with ``λ_max`` of its own empirical NTK at initialization
    (:func:`top_ntk_eigenvalue`, ``iters`` power iterations). Returns ``(S,)`` float64.

    One rule for every phase and depth, so no rate is tuned per configuration.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction} must lie in (0, 1]: a fraction of the stable rate")
    lam = top_ntk_eigenvalue(apply_fn, params_batch, x, iters=iters, key=key)
    return fraction * max_learning_rates(lam, len(x) * n_outputs)


def loss_ratios(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``mean((f_s - y)²) / mean(y²)`` per network: the MSE reached relative to that of the
    zero predictor (1 = no better than predicting 0, which with centred targets is the
    best constant). ``f`` ``(S, n, k)``, ``y`` ``(n, k)``; returns ``(S,)`` (NaN/inf for a
    diverged network)."""
    f, y = np.asarray(f, np.float64), np.asarray(y, np.float64)
    if f.ndim != 3 or f.shape[1:] != y.shape:
        raise ValueError(f"f must be (S, n, k) with (n, k) = y.shape {y.shape}, got {f.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        return np.mean((f - y) ** 2, axis=(1, 2)) / np.mean(y**2)


def accuracies(f: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Classification accuracy (argmax over outputs) of each network: ``f`` ``(S, n, k)``,
    integer ``labels`` ``(n,)``; returns ``(S,)``. A network with non-finite outputs
    scores NaN."""
    f = np.asarray(f, np.float64)
    acc = np.mean(f.argmax(-1) == np.asarray(labels)[None], axis=1)
    return np.where(np.all(np.isfinite(f), axis=(1, 2)), acc, np.nan)


def first_mismatch(depths: Sequence[int], ratios: Sequence[float], factor: float) -> int | None:
    """The first depth at which ``ratio`` (measured / predicted) leaves
    ``[1 / factor, factor]`` (a non-finite ratio counts as leaving); ``None`` if none does."""
    if factor <= 1.0:
        raise ValueError(f"factor={factor} must be > 1")
    for depth, r in zip(depths, ratios, strict=True):
        if not (np.isfinite(r) and 1.0 / factor <= r <= factor):
            return int(depth)
    return None

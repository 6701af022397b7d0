"""Kernels of a network and what they predict.

Conventions: ``x1`` has shape ``(n1, ...)``, ``x2`` ``(n2, ...)``; kernels are ``(n1, n2)``
numpy arrays for a single output (neural-tangents' ``trace_axes=(-1,)`` averages the
identical per-output blocks). Targets ``y`` are ``(n, k)``. Training uses the loss
``0.5 * mean((f - y)**2)`` over all ``n*k`` entries (neural-tangents' normalization),
so gradient descent with learning rate ``lr`` for ``steps`` steps follows gradient flow
for time ``t = lr * steps``:  ``df/dt = -(1/(n*k)) K (f - y)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import neural_tangents as nt
import numpy as np
import scipy.linalg

from ntkrepro import memory
from ntkrepro.memo import memoized

IMPLEMENTATIONS = {
    "jacobian_contraction": nt.NtkImplementation.JACOBIAN_CONTRACTION,
    "ntk_vector_products": nt.NtkImplementation.NTK_VECTOR_PRODUCTS,
    "structured_derivatives": nt.NtkImplementation.STRUCTURED_DERIVATIVES,
    "auto": nt.NtkImplementation.AUTO,
}


def _pad(x: jax.Array, multiple: int) -> tuple[jax.Array, int]:
    """Pad the batch axis of ``x`` with zeros up to a multiple (``nt.batch`` needs one)."""
    n = x.shape[0]
    extra = -n % multiple
    if extra:
        x = jnp.concatenate([x, jnp.zeros((extra, *x.shape[1:]), x.dtype)])
    return x, n


def _batched(fn: Callable, x1, x2, batch_size: int, *args):
    """Apply a kernel function ``fn(x1, x2, *args)`` in ``batch_size`` blocks via ``nt.batch``.

    ``nt.batch`` splits both inputs into blocks (and across all visible devices), so
    peak memory grows with ``batch_size**2``, not ``n1 * n2``. It jit-compiles ``fn``
    and caches the compilation keyed on ``fn`` itself: pass the same ``fn`` object
    (arrays such as parameters in ``args``) for repeated calls not to recompile.
    """
    same = x2 is None
    x2 = x1 if same else x2
    b = max(1, min(batch_size, x1.shape[0], x2.shape[0]))
    x1p, n1 = _pad(jnp.asarray(x1), b)
    x2p, n2 = (x1p, n1) if same else _pad(jnp.asarray(x2), b)
    out = nt.batch(fn, batch_size=b, store_on_device=False)(x1p, None if same else x2p, *args)
    return jax.tree_util.tree_map(lambda k: np.asarray(k)[:n1, :n2], out)


def analytic(
    kernel_fn: Callable,
    x1,
    x2=None,
    get: str | Sequence[str] = ("nngp", "ntk"),
    batch_size: int = 256,
    *,
    check_memory: bool = True,
):
    """Infinite-width NNGP and/or NTK of a stax ``kernel_fn``, computed in blocks.

    Returns a ``(n1, n2)`` array, or a dict ``{name: array}`` when ``get`` is a sequence.
    The dtype follows JAX's (float64 when ``jax_enable_x64`` is on). With
    ``check_memory``, a kernel whose estimated size (:func:`analytic_bytes`, a lower
    bound) exceeds the available memory is refused before computing
    (:class:`ntkrepro.memory.MemoryBudgetError`).
    """
    names = (get,) if isinstance(get, str) else tuple(get)
    if check_memory:
        n1, n2 = len(x1), len(x1 if x2 is None else x2)
        parts = analytic_bytes(
            n1, n2, n_kernels=len(names), batch_size=batch_size, image_shape=x1.shape[1:]
        )
        what = f"the analytic {'/'.join(names)} of {n1} x {n2} examples"
        _require(what, parts, device_part="blocks")

    out = _batched(_analytic_fn(kernel_fn, names), x1, x2, batch_size)
    result = dict(zip(names, out, strict=True))
    return result[get] if isinstance(get, str) else result


# One function object per (kernel_fn, names): nt.batch keys its jit cache on it, so a
# repeated call (another data set size, ridge sweeps) reuses the compilation.
@memoized(32)
def _analytic_fn(kernel_fn: Callable, names: tuple[str, ...]) -> Callable:
    def fn(a, b):
        return kernel_fn(a, b, names)

    return fn


# Jacobian contraction keeps the Jacobians of all examples, instead of recomputing both
# blocks' Jacobians for every block pair as nt.batch does, when they fit in this many
# bytes: for small models (a CNN with a few thousand parameters) the recomputation, not
# the contraction, dominated (8x slower at n = 4000).
KEEP_JACOBIANS_BYTES = 2**30


def empirical_ntk(
    apply_fn: Callable,
    params,
    x1,
    x2=None,
    *,
    batch_size: int = 128,
    implementation: str = "jacobian_contraction",
    trace_axes: tuple[int, ...] = (-1,),
    check_memory: bool = True,
) -> np.ndarray:
    """Empirical NTK ``J(x1) J(x2)^T`` of a finite network at ``params``, in blocks.

    With ``trace_axes=(-1,)`` the result is ``(n1, n2)``, the mean over outputs of the
    per-output kernels; with ``()`` it is ``(n1, n2, k, k)``. With ``check_memory``, a
    computation whose estimate (:func:`empirical_ntk_bytes`: the kernel on the host, the
    Jacobians on the device) exceeds the available memory is refused before computing
    (:class:`ntkrepro.memory.MemoryBudgetError`).

    ``jacobian_contraction`` on one device computes each example's Jacobian once and
    contracts ``batch_size`` blocks of them (only the upper triangle when ``x2`` is None)
    when all Jacobians fit in :data:`KEEP_JACOBIANS_BYTES`; otherwise, and for the other
    implementations, ``nt.batch`` computes each block pair from scratch (and shards the
    blocks across all visible devices).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown eNTK implementation {implementation!r}; known: {', '.join(IMPLEMENTATIONS)}"
        )
    trace_axes = tuple(trace_axes)
    shapes = _model_shapes(apply_fn, params, x1)  # traces the model once, computes nothing
    kept_bytes = _kept_jacobian_bytes(*shapes, x1, x2, trace_axes)
    keep = implementation == "jacobian_contraction" and kept_bytes is not None
    if check_memory:
        _check_empirical_memory(
            *shapes, x1, x2, batch_size, implementation, trace_axes, kept_bytes if keep else None
        )
    if keep:
        return _entk_kept_jacobians(apply_fn, params, x1, x2, batch_size, bool(trace_axes))
    ntk_fn = _empirical_ntk_fn(apply_fn, implementation, trace_axes)
    return _batched(ntk_fn, x1, x2, batch_size, params)


def _model_shapes(apply_fn: Callable, params, x) -> tuple[int, tuple[int, ...]]:
    """(number of parameters, output shape of one example), from shapes alone."""
    # Works on abstract parameters (jax.eval_shape of init_fn) too: nothing is computed.
    leaves = jax.tree_util.tree_leaves(params)
    n_params = sum(math.prod(getattr(leaf, "shape", np.shape(leaf))) for leaf in leaves)
    out = jax.eval_shape(apply_fn, params, jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype))
    return n_params, tuple(out.shape[1:])


def keeps_jacobians(apply_fn: Callable, params, x1, x2=None, trace_axes=(-1,)) -> bool:
    """Whether :func:`empirical_ntk` (Jacobian contraction) keeps all Jacobians: one
    device, outputs ``(n, k)``, and ``(n1 [+ n2]) * k * n_params`` floats within
    :data:`KEEP_JACOBIANS_BYTES`."""
    shapes = _model_shapes(apply_fn, params, x1)
    return _kept_jacobian_bytes(*shapes, x1, x2, tuple(trace_axes)) is not None


def _kept_jacobian_bytes(n_params: int, out_shape, x1, x2, trace_axes) -> int | None:
    """Bytes of all examples' Jacobians, or None where they are not kept (see
    :func:`keeps_jacobians`)."""
    if jax.local_device_count() > 1 or trace_axes not in ((-1,), (1,), ()):
        return None
    if len(out_shape) != 1:
        return None
    n = len(x1) + (0 if x2 is None else len(x2))
    n_bytes = n * out_shape[0] * n_params * _itemsize()
    return n_bytes if n_bytes <= KEEP_JACOBIANS_BYTES else None


@memoized(32)
def _jacobian_fn(apply_fn: Callable) -> Callable:
    """jit ``(params, x (b, ...)) -> (b, k, n_params)``: per-example Jacobians, flattened."""

    def one(p, xi):
        return apply_fn(p, xi[None])[0]

    @jax.jit
    def jacobians(params, x):
        leaves = jax.tree_util.tree_leaves(jax.vmap(jax.jacrev(one), (None, 0))(params, x))
        return jnp.concatenate([leaf.reshape(*leaf.shape[:2], -1) for leaf in leaves], -1)

    return jacobians


@jax.jit
def _contract_traced(j1: jax.Array, j2: jax.Array) -> jax.Array:
    """(b1, k, P), (b2, k, P) -> (b1, b2): mean over outputs of the per-output kernels."""
    return jnp.einsum("ikp,jkp->ij", j1, j2) / j1.shape[1]


@jax.jit
def _contract_full(j1: jax.Array, j2: jax.Array) -> jax.Array:
    """(b1, k, P), (b2, k, P) -> (b1, b2, k, k)."""
    return jnp.einsum("ikp,jlp->ijkl", j1, j2)


def _entk_kept_jacobians(apply_fn, params, x1, x2, batch_size: int, traced: bool) -> np.ndarray:
    """:func:`empirical_ntk` with each example's Jacobian computed once (see there)."""
    jacobians = _jacobian_fn(apply_fn)
    b = max(1, batch_size)

    def blocks(x) -> list[tuple[int, jax.Array]]:
        x = jnp.asarray(x)
        return [(s, jacobians(params, x[s : s + b])) for s in range(0, len(x), b)]

    rows = blocks(x1)
    cols = rows if x2 is None else blocks(x2)
    contract = _contract_traced if traced else _contract_full
    k = rows[0][1].shape[1]
    shape = (len(x1), len(x1 if x2 is None else x2)) + (() if traced else (k, k))
    out = np.empty(shape, rows[0][1].dtype)
    for i, (s1, j1) in enumerate(rows):
        for s2, j2 in cols[i if x2 is None else 0 :]:
            block = np.asarray(contract(j1, j2))
            out[s1 : s1 + len(j1), s2 : s2 + len(j2)] = block
            if x2 is None and s2 != s1:  # the mirror block of a symmetric kernel
                mirror = block.T if traced else block.transpose(1, 0, 3, 2)
                out[s2 : s2 + len(j2), s1 : s1 + len(j1)] = mirror
    return out


# One kernel function per (model, implementation, trace axes). nt.batch keys its jit
# cache on the function object, so repeated calls (snapshots during training, new
# parameters) reuse one compilation per block shape instead of compiling every call.
@memoized(32)
def _empirical_ntk_fn(apply_fn: Callable, implementation: str, trace_axes: tuple[int, ...]):
    """neural-tangents' ``(x1, x2, params) -> kernel`` for one model (``nt.batch`` jits it)."""
    return nt.empirical_ntk_fn(
        apply_fn,
        trace_axes=trace_axes,
        vmap_axes=0,
        implementation=IMPLEMENTATIONS[implementation],
    )


def max_learning_rate(k_train_train: np.ndarray, n_outputs: int) -> float:
    """Largest stable gradient-descent learning rate for the MSE convention above.

    Gradient descent on ``0.5*mean((f-y)**2)`` over ``n*k`` entries is stable for
    ``lr < 2 * n * k / lambda_max(K)``.
    """
    n = k_train_train.shape[0]
    lam = scipy.linalg.eigvalsh(np.asarray(k_train_train, np.float64), subset_by_index=[n - 1] * 2)
    return float(2 * n * n_outputs / lam[-1])


def diag_regularize(k: np.ndarray, eps: float) -> np.ndarray:
    """``K + eps * tr(K)/n * I`` (the diagonal regularizer of Lee et al. 2020)."""
    n = k.shape[0]
    return k + eps * np.trace(k) / n * np.eye(n, dtype=k.dtype)


def kernel_regression(
    k_train_train: np.ndarray,
    k_test_train: np.ndarray,
    y_train: np.ndarray,
    diag_reg: float = 0.0,
    *,
    dtype=np.float64,
) -> np.ndarray:
    """Infinite-time kernel prediction ``K_st (K_tt + reg)^{-1} y`` (Cholesky), computed in
    ``dtype`` (float64 by default; float32 for Lee et al.'s precision experiment).

    Shapes: ``(n, n)``, ``(m, n)``, ``(n, k)`` → ``(m, k)``.

    Raises:
      SingularKernelError: the Cholesky factorization fails in ``dtype`` (the message
        gives the condition number against ``1/eps``; :func:`kernel_regression_report`
        records this instead of raising).
    """
    k = diag_regularize(np.asarray(k_train_train, np.float64), diag_reg).astype(dtype)
    try:
        factor = scipy.linalg.cho_factor(k, lower=True)
    except np.linalg.LinAlgError as err:
        report = solve_report(k_train_train, dtype, diag_reg)
        raise SingularKernelError(_singular_message(report), report) from err
    alpha = scipy.linalg.cho_solve(factor, np.asarray(y_train, dtype))
    return np.asarray(k_test_train, dtype) @ alpha


def gradient_flow(
    k_train_train: np.ndarray,
    k_test_train: np.ndarray,
    y_train: np.ndarray,
    times: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """Mean predictions of an infinitely wide network trained by gradient flow on MSE.

    Uses the convention of the module docstring (``t = lr * steps``) and zero initial
    outputs (the mean over initializations). Float64 eigendecomposition.

    Returns:
      ``(f_train, f_test)`` of shapes ``(len(times), n, k)`` and ``(len(times), m, k)``.
      ``times`` may contain ``np.inf`` (kernel regression without regularization).
    """
    y = np.asarray(y_train, np.float64)
    n_entries = y.size
    lam, v = np.linalg.eigh(np.asarray(k_train_train, np.float64))
    lam = np.clip(lam, 0.0, None)
    vy = v.T @ y
    kst_v = np.asarray(k_test_train, np.float64) @ v
    f_train, f_test = [], []
    for t in times:
        decay = np.exp(-lam * t / n_entries) if np.isfinite(t) else np.zeros_like(lam)
        fitted = (1.0 - decay)[:, None] * vy  # spectral coefficients of f_train(t)
        f_train.append(v @ fitted)
        with np.errstate(divide="ignore", invalid="ignore"):
            coef = np.where(lam[:, None] > 0, fitted / lam[:, None], 0.0)
        f_test.append(kst_v @ coef)
    return np.stack(f_train), np.stack(f_test)


def eigh_desc(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns) of a symmetric kernel, float64."""
    lam, v = np.linalg.eigh(np.asarray(k, np.float64))
    return lam[::-1], v[:, ::-1]


def kernel_distance(k1: np.ndarray, k2: np.ndarray) -> float:
    """``1 - <K1, K2>_F / (||K1||_F ||K2||_F)`` (Fort et al. 2020); 0 for parallel kernels."""
    k1 = np.asarray(k1, np.float64)
    k2 = np.asarray(k2, np.float64)
    return float(1.0 - np.vdot(k1, k2) / (np.linalg.norm(k1) * np.linalg.norm(k2)))


def relative_change(k_t: np.ndarray, k_0: np.ndarray) -> float:
    """``||K_t - K_0||_F / ||K_0||_F``."""
    k_0 = np.asarray(k_0, np.float64)
    return float(np.linalg.norm(np.asarray(k_t, np.float64) - k_0) / np.linalg.norm(k_0))


def alignment(k: np.ndarray, y: np.ndarray, centered: bool = True) -> float:
    """Kernel-target alignment ``<K, y y^T>_F / (||K||_F ||y y^T||_F)``.

    ``y`` is ``(n,)`` or ``(n, k)``; with ``centered`` both are centered first
    (Cortes et al. 2012).
    """
    k = np.asarray(k, np.float64)
    y = np.asarray(y, np.float64).reshape(k.shape[0], -1)
    if centered:
        h = np.eye(k.shape[0]) - 1.0 / k.shape[0]
        k = h @ k @ h
        y = y - y.mean(0)
    yy = y @ y.T
    return float(np.vdot(k, yy) / (np.linalg.norm(k) * np.linalg.norm(yy)))


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Classification accuracy: argmax of ``(m, k)`` outputs, or sign of ``(m,)``/``(m, 1)``
    outputs against labels in {-1, +1}."""
    pred = np.asarray(pred)
    labels = np.asarray(labels)
    if pred.ndim == 2 and pred.shape[1] > 1:
        return float(np.mean(pred.argmax(1) == labels))
    return float(np.mean(np.sign(pred.reshape(-1)) == np.sign(labels.reshape(-1))))


# ---------------------------------------------------------------------------- numerical trouble


class SingularKernelError(np.linalg.LinAlgError):
    """A kernel solve failed because the matrix is numerically singular in its dtype.

    ``report`` is :func:`solve_report`'s dict. In float32 this is a finding of Lee et al.
    (2020) (kernel regression collapses beyond a critical data set size), not a bug.
    """

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def solve_report(k_train_train: np.ndarray, dtype=np.float32, diag_reg: float = 0.0) -> dict:
    """Whether solving with ``K + reg`` in ``dtype`` is numerically singular.

    A solve in a precision with machine epsilon ``eps`` keeps no correct digit once the
    condition number ``lambda_max / lambda_min`` reaches ``1/eps`` (about 8.4e6 in
    float32, 4.5e15 in float64). Eigenvalues are computed in float64.

    Returns:
      ``{"dtype", "n", "eps", "critical_condition" (1/eps), "condition_number" (None if
      the smallest eigenvalue is <= 0, i.e. infinite), "min_eigenvalue",
      "max_eigenvalue", "singular"}`` with JSON-ready values.
    """
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
    """:func:`kernel_regression` in ``dtype`` that records numerical trouble, never raises.

    Returns:
      ``(prediction, report)``: the ``(m, k)`` prediction (all NaN if the factorization
      failed) and :func:`solve_report`'s dict plus ``"failed"`` (the Cholesky
      factorization broke down) and ``"finite"`` (the prediction has no NaN/inf).
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


# ---------------------------------------------------------------------------- memory estimates


def _itemsize() -> int:
    """Bytes per float of JAX computations: 8 with ``jax_enable_x64``, else 4."""
    return 8 if jax.config.jax_enable_x64 else 4


def analytic_bytes(
    n1: int,
    n2: int | None = None,
    *,
    n_kernels: int = 2,
    batch_size: int = 256,
    image_shape: Sequence[int] = (),
    spatial: int | None = None,
    itemsize: int | None = None,
) -> dict[str, int]:
    """Estimated bytes of :func:`analytic`, by part (a lower bound).

    ``kernel``: the ``n1 x n2`` result per kernel, held on the host. ``blocks``: one
    ``batch_size x batch_size`` block, times ``spatial`` entries per pair of examples
    (default: ``H*W`` for image inputs ``(H, W, C)``, the diagonal-spatial minimum; pass
    ``(H*W)**2`` for a CNN with global average pooling, whose kernel keeps every pair of
    positions), for the NNGP, the NTK and the layer's input covariance.
    """
    n2 = n1 if n2 is None else n2
    itemsize = itemsize or _itemsize()
    if spatial is None:
        spatial = int(np.prod(image_shape[:-1])) if len(image_shape) >= 2 else 1
    b1, b2 = min(batch_size, n1), min(batch_size, n2)
    return {
        "kernel": n1 * n2 * n_kernels * itemsize,
        "blocks": b1 * b2 * spatial * (n_kernels + 1) * itemsize,
    }


def empirical_ntk_bytes(
    n1: int,
    n2: int | None = None,
    *,
    n_params: int,
    n_outputs: int = 1,
    batch_size: int = 128,
    traced: bool = True,
    itemsize: int | None = None,
) -> dict[str, int]:
    """Estimated bytes of :func:`empirical_ntk` (Jacobian contraction), by part.

    ``kernel``: the result on the host (``n1 x n2``, times ``n_outputs**2`` when not
    traced over outputs). ``jacobians``: the Jacobians of two blocks of ``batch_size``
    examples, ``n_outputs x n_params`` floats per example, on the device. This is what
    makes a wide and deep network's eNTK expensive: parameters grow like width² · depth.
    """
    n2 = n1 if n2 is None else n2
    itemsize = itemsize or _itemsize()
    per_pair = 1 if traced else n_outputs**2
    b1, b2 = min(batch_size, n1), min(batch_size, n2)
    return {
        "kernel": n1 * n2 * per_pair * itemsize,
        "jacobians": (b1 + b2) * n_outputs * n_params * itemsize,
    }


def _check_empirical_memory(
    n_params, out_shape, x1, x2, batch_size, implementation, trace_axes, kept_bytes
):
    """Refuse an eNTK whose estimate exceeds the memory (see :func:`empirical_ntk_bytes`);
    ``kept_bytes``: the Jacobians of all examples, where they are kept, else None."""
    n_outputs = math.prod(out_shape)
    n1, n2 = len(x1), len(x1 if x2 is None else x2)
    parts = empirical_ntk_bytes(
        n1,
        n2,
        n_params=n_params,
        n_outputs=n_outputs,
        batch_size=batch_size,
        traced=bool(trace_axes),
    )
    if kept_bytes is not None:  # all examples' Jacobians, each once
        parts["jacobians"] = kept_bytes
    elif implementation not in ("jacobian_contraction", "auto"):
        parts["jacobians"] = 0  # other implementations never hold whole Jacobians
    what = f"the empirical NTK of {n1} x {n2} examples ({n_params:,} parameters)"
    fix = "Reduce width or depth (parameters), batch_size, or the number of examples"
    _require(what, parts, device_part="jacobians", fix=fix)


def _require(what: str, parts: dict[str, int], device_part: str, fix: str = "") -> None:
    """Check the result (host) and the working blocks (device) against their memories;
    on a CPU both share the host's RAM, so their sum is checked."""
    if jax.devices()[0].platform == "cpu":
        memory.require_memory(what, parts, where="host", fix=fix)
        return
    host = {k: v for k, v in parts.items() if k != device_part}
    memory.require_memory(what, host, where="host", fix=fix)
    memory.require_memory(what, {device_part: parts[device_part]}, where="device", fix=fix)


# ------------------------------------------------- sweeps and posteriors (Lee et al. 2020)


def ridge_sweep(
    k_train_train: np.ndarray,
    k_test_train: np.ndarray,
    y_train: np.ndarray,
    diag_regs: Sequence[float],
) -> np.ndarray:
    """Kernel regression for many diagonal regularizers from one eigendecomposition.

    For each ``eps`` in ``diag_regs``: ``K_st (K_tt + eps * tr(K_tt)/n * I)^{-1} y``
    (see :func:`diag_regularize`), in float64. ``eps = 0`` uses the pseudo-inverse on
    the positive eigenvalues. Shapes: ``(n, n)``, ``(m, n)``, ``(n, k)`` →
    ``(len(diag_regs), m, k)``.
    """
    regs = np.asarray(diag_regs, np.float64)
    if regs.ndim != 1 or np.any(regs < 0) or not np.all(np.isfinite(regs)):
        raise ValueError(f"diag_regs must be a list of finite numbers >= 0, got {diag_regs!r}")
    k = np.asarray(k_train_train, np.float64)
    lam, v = np.linalg.eigh(k)
    lam = np.clip(lam, 0.0, None)
    vy = v.T @ np.asarray(y_train, np.float64)
    kst_v = np.asarray(k_test_train, np.float64) @ v
    scale = np.trace(k) / k.shape[0]
    out = []
    for eps in regs:
        denom = lam + eps * scale
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(denom > 0, 1.0 / denom, 0.0)
        out.append(kst_v @ (inv[:, None] * vy))
    return np.stack(out)


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
    """Mean and per-point variance over initializations of an infinitely wide network
    trained by gradient flow for time ``t`` (``nt.predict.gradient_descent_mse_ensemble``).

    ``get="ntk"`` is the gradient-descent ensemble (the variance includes the random
    initial function); ``get="nngp"`` is the Bayesian posterior (``t = np.inf``). The time
    convention is that of this module (``t = lr * steps``). Kernels are computed in one
    block, so keep ``n`` and ``m`` small (a few thousand).

    Returns:
      ``(mean, variance)`` of shapes ``(m, k)`` and ``(m,)`` (the variance is the same for
      every output).
    """
    if get not in ("ntk", "nngp"):
        raise ValueError(f"get={get!r}: use 'ntk' or 'nngp'")
    predict = nt.predict.gradient_descent_mse_ensemble(
        kernel_fn, jnp.asarray(x_train), jnp.asarray(y_train), diag_reg=diag_reg
    )
    out = predict(t=t, x_test=jnp.asarray(x_test), get=get, compute_cov=True)
    return np.asarray(out.mean), np.diagonal(np.asarray(out.covariance)).copy()


# ------------------------------------------- learning rate from a normalized step size


def ntk_scale(k_train_train: np.ndarray) -> float:
    """``lambda_hat = lambda_max(K) / n`` of an ``(n, n)`` kernel matrix.

    Gradient descent on a mean-over-examples loss moves the outputs along the kernel's
    top eigenvector at the rate ``lr * lambda_hat`` per step (times the loss curvature),
    so ``lr * lambda_hat`` is the step size in function space.
    """
    k = np.asarray(k_train_train, np.float64)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] == 0:
        raise ValueError(f"ntk_scale needs a square (n, n) kernel matrix, got shape {k.shape}")
    n = k.shape[0]
    lam = scipy.linalg.eigvalsh(k, subset_by_index=[n - 1, n - 1])
    return float(lam[-1] / n)


def lr_for_normalized_step(
    apply_fn: Callable, params, x, normalized_step: float, **ntk_kw
) -> tuple[float, float]:
    """Learning rate giving a model the normalized step ``lr * lambda_hat`` of another.

    ``lambda_hat`` is :func:`ntk_scale` of the empirical NTK (:func:`empirical_ntk`, mean
    over outputs; ``ntk_kw`` passed on, speed only) of ``apply_fn`` at ``params`` on the
    inputs ``x`` of shape ``(n, ...)``. Two models trained with the same normalized step
    move their outputs at the same speed at initialization, whatever their
    parameterization or size.

    Returns:
      ``(lr, lambda_hat)`` with ``lr = normalized_step / lambda_hat``.
    """
    if not (normalized_step > 0 and np.isfinite(normalized_step)):
        raise ValueError(f"normalized_step={normalized_step!r} must be a positive finite number")
    lam = ntk_scale(empirical_ntk(apply_fn, params, x, **ntk_kw))
    if not lam > 0:
        raise ValueError(f"the empirical NTK has lambda_max/n = {lam!r} <= 0: cannot set lr")
    return normalized_step / lam, lam

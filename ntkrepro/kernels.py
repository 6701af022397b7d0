"""Kernels of a network: infinite-width NNGP/NTK, empirical NTKs (one network, or many
parameter sets at once), the top eNTK eigenvalue, eigendecompositions, memory estimates.

Conventions: ``x1`` is ``(n1, ...)``, ``x2`` ``(n2, ...)``; kernels are ``(n1, n2)`` numpy
arrays for a single output (neural-tangents' ``trace_axes=(-1,)`` averages the identical
per-output blocks). What kernels predict is in :mod:`ntkrepro.predict`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import neural_tangents as nt
import numpy as np

from ntkrepro import cost, memory
from ntkrepro.memo import memoized, spec_key

IMPLEMENTATIONS = {
    "jacobian_contraction": nt.NtkImplementation.JACOBIAN_CONTRACTION,
    "ntk_vector_products": nt.NtkImplementation.NTK_VECTOR_PRODUCTS,
    "structured_derivatives": nt.NtkImplementation.STRUCTURED_DERIVATIVES,
    "auto": None,  # choose_implementation, for the whole computation (not neural-tangents' AUTO)
}


def _pad(x: jax.Array, multiple: int) -> tuple[jax.Array, int]:
    """Pad the batch axis of ``x`` with zeros up to a multiple (``nt.batch`` needs one)."""
    n = x.shape[0]
    extra = -n % multiple
    if extra:
        x = jnp.concatenate([x, jnp.zeros((extra, *x.shape[1:]), x.dtype)])
    return x, n


def _batched(fn: Callable, x1, x2, batch_size: int, *args):
    """``fn(x1, x2, *args)`` in ``batch_size`` blocks by ``nt.batch`` (across all devices;
    peak memory ~ ``batch_size**2``); on one device, where both fit in one block, one call.
    ``nt.batch`` caches its compilation on ``fn``: pass the same ``fn`` object (arrays such as
    parameters in ``args``) not to recompile."""
    same = x2 is None
    x2 = x1 if same else x2
    one_block = max(x1.shape[0], x2.shape[0]) <= batch_size
    if one_block and jax.local_device_count() == 1:  # no padding, no nt.batch
        out = _jitted(fn)(jnp.asarray(x1), None if same else jnp.asarray(x2), *args)
        return jax.tree_util.tree_map(np.asarray, out)
    b = max(1, min(batch_size, x1.shape[0], x2.shape[0]))
    x1p, n1 = _pad(jnp.asarray(x1), b)
    x2p, n2 = (x1p, n1) if same else _pad(jnp.asarray(x2), b)
    out = nt.batch(fn, batch_size=b, store_on_device=False)(x1p, None if same else x2p, *args)
    return jax.tree_util.tree_map(lambda k: np.asarray(k)[:n1, :n2], out)


@memoized(32)
def _jitted(fn: Callable) -> Callable:
    """``jax.jit(fn)``, one per function object (its compilations are cached on it)."""
    return jax.jit(fn)


def analytic(
    kernel_fn: Callable,
    x1,
    x2=None,
    get: str | Sequence[str] = ("nngp", "ntk"),
    batch_size: int = 256,
    *,
    check_memory: bool = True,
):
    """Infinite-width NNGP and/or NTK of a stax ``kernel_fn`` in blocks: ``(n1, n2)``, or
    ``{name: array}`` when ``get`` is a sequence, in JAX's dtype. With ``check_memory`` a
    kernel whose :func:`analytic_bytes` (a lower bound) exceeds the available memory is
    refused first (:class:`ntkrepro.errors.MemoryBudgetError`)."""
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
    implementation: str = "auto",
    trace_axes: tuple[int, ...] = (-1,),
    check_memory: bool = True,
) -> np.ndarray:
    """Empirical NTK ``J(x1) J(x2)^T`` of a network at ``params``, in blocks: ``(n1, n2)`` (mean
    over outputs) with ``trace_axes=(-1,)``, ``(n1, n2, k, k)`` with ``()``. With ``check_memory`` a
    computation whose :func:`empirical_ntk_bytes` exceeds the memory is refused first
    (:class:`ntkrepro.errors.MemoryBudgetError`). ``jacobian_contraction`` on one device computes
    each Jacobian once and contracts blocks of them (the upper triangle when ``x2`` is None) when
    all fit in :data:`KEEP_JACOBIANS_BYTES`; otherwise ``nt.batch`` computes each block pair afresh.
    ``"auto"``: the cheaper of that and structured derivatives, for the whole computation
    (:func:`choose_implementation`); ``batch_size`` then bounds the blocks where the whole does
    not fit in memory.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown eNTK implementation {implementation!r}; known: {', '.join(IMPLEMENTATIONS)}"
        )
    trace_axes = tuple(trace_axes)
    shapes = _model_shapes(apply_fn, params, x1)  # traces the model once, computes nothing
    kept_bytes = _kept_jacobian_bytes(*shapes, x1, x2, trace_axes)
    working = None
    if implementation == "auto":
        choice = choose_implementation(apply_fn, params, x1, x2, trace_axes, batch_size)
        implementation, batch_size = choice.implementation, choice.batch_size
        working = choice.working_bytes
    keep = implementation == "jacobian_contraction" and kept_bytes is not None
    if check_memory:
        kept = kept_bytes if keep else None
        _check_empirical_memory(
            *shapes, x1, x2, batch_size, implementation, trace_axes, kept, working
        )
    if keep:
        return _entk_kept_jacobians(apply_fn, params, x1, x2, batch_size, bool(trace_axes))
    ntk_fn = _empirical_ntk_fn(apply_fn, implementation, trace_axes)
    return _batched(ntk_fn, x1, x2, batch_size, params)


def _model_shapes(apply_fn: Callable, params, x) -> tuple[int, tuple[int, ...]]:
    """(number of parameters, output shape of one example), from shapes alone (cached: tracing
    the model took ~1.5 ms, a fifth of a small CNN's whole kernel on 200 inputs)."""
    # Works on abstract parameters (jax.eval_shape of init_fn) too: nothing is computed.
    return _shapes(apply_fn, *spec_key(params), x.shape[1:], str(x.dtype))


@memoized(64)
def _shapes(apply_fn, treedef, specs, example_shape, dtype) -> tuple[int, tuple[int, ...]]:
    n_params = sum(math.prod(shape) for shape, _ in specs)
    params = jax.tree_util.tree_unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in specs])
    out = jax.eval_shape(apply_fn, params, jax.ShapeDtypeStruct((1, *example_shape), dtype))
    return n_params, tuple(out.shape[1:])


def keeps_jacobians(apply_fn: Callable, params, x1, x2=None, trace_axes=(-1,)) -> bool:
    """Whether :func:`empirical_ntk` keeps all Jacobians: one device, outputs ``(n, k)``,
    ``(n1 [+ n2]) * k * n_params`` floats within :data:`KEEP_JACOBIANS_BYTES`."""
    shapes = _model_shapes(apply_fn, params, x1)
    return _kept_jacobian_bytes(*shapes, x1, x2, tuple(trace_axes)) is not None


def _kept_jacobian_bytes(n_params: int, out_shape, x1, x2, trace_axes) -> int | None:
    """Bytes of all examples' Jacobians, or None where they are not kept (see
    :func:`keeps_jacobians`)."""
    if jax.local_device_count() > 1 or trace_axes not in ((-1,), (1,), ()):
        return None
    if len(out_shape) != 1:
        return None
    n = x1.shape[0] + (0 if x2 is None else x2.shape[0])  # arrays or their specs
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


# Rows of kept Jacobians contracted at once: fewer, larger products than blocks of
# batch_size (the Jacobians are held anyway; a block of the kernel is CONTRACT_ROWS² floats).
CONTRACT_ROWS = 1024


@memoized(32)
def _one_call_fn(apply_fn: Callable, traced: bool) -> Callable:
    """jit ``(params, x) -> J(x) J(x)ᵀ``: a symmetric kernel in one block, in one call."""
    jacobians = _jacobian_fn(apply_fn)
    contract = _contract_traced if traced else _contract_full
    return jax.jit(lambda params, x: contract(*(2 * (jacobians(params, x),))))


def _entk_kept_jacobians(apply_fn, params, x1, x2, batch_size: int, traced: bool) -> np.ndarray:
    """:func:`empirical_ntk` with each example's Jacobian computed once, in blocks of
    ``batch_size``, and contracted in blocks of up to :data:`CONTRACT_ROWS` rows (see there)."""
    jacobians = _jacobian_fn(apply_fn)
    b = max(1, batch_size)
    if x2 is None and len(x1) <= b:
        return np.asarray(_one_call_fn(apply_fn, traced)(params, jnp.asarray(x1)))
    group = max(b, CONTRACT_ROWS // b * b)

    def blocks(x) -> list[tuple[int, jax.Array]]:
        x = jnp.asarray(x)
        out = []
        for start in range(0, len(x), group):  # Jacobians of up to `group` rows, b at a time
            stop = min(start + group, len(x))
            part = [jacobians(params, x[s : s + b]) for s in range(start, stop, b)]
            out.append((start, part[0] if len(part) == 1 else jnp.concatenate(part)))
        return out

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


def ntk_many(apply_fn: Callable, params_batch, x, chunk: int = 8) -> np.ndarray:
    """Empirical NTKs ``J(x) J(x)^T`` (mean over outputs) of ``S`` stacked parameter sets (leading
    axis, e.g. :func:`ntkrepro.models.init_many`): ``(S, n, n)`` float64. ``jax.lax.map`` with
    ``batch_size=chunk`` (``vmap`` per chunk) bounds memory by ``chunk * n * n_params`` Jacobian
    entries."""
    ntk_fn = nt.empirical_ntk_fn(
        apply_fn,
        trace_axes=(-1,),
        vmap_axes=0,  # examples are independent: one backward pass per example
        implementation=nt.NtkImplementation.JACOBIAN_CONTRACTION,
    )
    x = jnp.asarray(x)
    fn = jax.jit(lambda pb: jax.lax.map(lambda p: ntk_fn(x, None, p), pb, batch_size=chunk))
    return np.asarray(fn(params_batch), np.float64)


def top_ntk_eigenvalue(
    apply_fn: Callable,
    params,
    x,
    iters: int = 30,
    key: jax.Array | None = None,
    *,
    batched: bool = True,
) -> np.ndarray:
    """Top eigenvalue of the full eNTK ``J J^T`` (``(n k) x (n k)``) on ``x`` ``(n, ...)``,
    float64: ``(S,)`` for ``S`` stacked parameter sets (``batched``), else 0-d. ``iters``
    power iterations of ``v -> J (J^T v)`` (one VJP and one JVP each; ``J`` is never
    formed) from a normal start drawn with ``key`` (default ``PRNGKey(0)``). ``λ_max / k``
    is the top eigenvalue of the output-averaged :func:`empirical_ntk`.

    The batch runs as one vmapped ``lax.scan``; one network steps from the host. Both
    orders are kept because their float32 results differ in the 7th digit and each is
    what its notebooks have always computed (Seleznova: batched; Lee et al.: one).
    """
    if iters < 1:
        raise ValueError(f"iters={iters} must be >= 1")
    x = jnp.asarray(x)
    key = jax.random.PRNGKey(0) if key is None else key

    def jjt(p, xs, v):  # J (J^T v) at p
        _, vjp = jax.vjp(lambda q: apply_fn(q, xs), p)
        return jax.jvp(lambda q: apply_fn(q, xs), (p,), vjp(v))[1]

    if not batched:  # params and x are arguments: XLA would constant-fold closed-over ones
        step, out = jax.jit(jjt), jax.eval_shape(apply_fn, params, x)
        v = jax.random.normal(key, out.shape, out.dtype)
        v = v / jnp.linalg.norm(v)
        for _ in range(iters):
            w = step(params, x, v)
            lam = float(jnp.vdot(v, w))  # Rayleigh quotient: v has unit norm
            v = w / jnp.linalg.norm(w)
        return np.asarray(lam, np.float64)

    def one(params):
        f0, vjp = jax.vjp(lambda p: apply_fn(p, x), params)

        def step(v, _):
            v = v / jnp.linalg.norm(v)
            jv = jax.jvp(lambda p: apply_fn(p, x), (params,), vjp(v))[1]
            return jv, jnp.vdot(v, jv)

        _, lams = jax.lax.scan(step, jax.random.normal(key, f0.shape, f0.dtype), None, iters)
        return lams[-1]

    return np.asarray(jax.jit(jax.vmap(one))(params), np.float64)


def eigh_desc(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns) of a symmetric kernel, float64."""
    lam, v = np.linalg.eigh(np.asarray(k, np.float64))
    return lam[::-1], v[:, ::-1]


def top_eigh(k: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` largest eigenvalues (descending, float64) of a symmetric kernel ``k``
    ``(n, n)`` and their unit eigenvectors (columns, ``(n, count)``).

    Where ``count`` is at most a tenth of ``n``, Lanczos iterations on products with ``k``
    in its own precision (``scipy.sparse.linalg.eigsh``): O(n² count) time and no float64
    copy, where a full ``eigh`` of the paper's kernels (n = 60,000: 14 GB in float32) needs
    29 GB more and O(n³). Otherwise :func:`eigh_desc`, cut to ``count``: faster there, and
    exactly what the cpu profiles computed before."""
    n = np.shape(k)[0]
    if np.shape(k) != (n, n) or not 1 <= count <= n:
        raise ValueError(f"need a square kernel and 1 <= count <= n; got {np.shape(k)}, {count}")
    if count > n // 10:
        lam, v = eigh_desc(k)
        return lam[:count], v[:, :count]
    from scipy.sparse.linalg import LinearOperator, eigsh

    a = np.asarray(k)
    op = LinearOperator(
        (n, n), matvec=lambda x: np.asarray(a @ x.astype(a.dtype), np.float64), dtype=np.float64
    )
    # A fixed start vector: ARPACK's default is random, and runs must repeat to the bit.
    start = np.random.default_rng(0).standard_normal(n)
    # Products in float32 carry ~1e-7 relative error: ARPACK's default tolerance (float64
    # machine precision) would then be out of reach.
    tol = 10 * float(np.finfo(a.dtype).eps) if a.dtype == np.float32 else 0.0
    lam, v = eigsh(op, k=count, which="LA", v0=start, tol=tol)
    order = np.argsort(lam)[::-1]
    return lam[order], v[:, order]


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
    """Estimated bytes of :func:`analytic` by part (a lower bound): ``kernel``, the
    ``n1 x n2`` results (host); ``blocks``, one block pair times ``spatial`` entries per
    pair of examples (default ``H*W`` of images ``(H, W, C)``; ``(H*W)**2`` for CNN-GAP)
    for the NNGP, the NTK and the input covariance (device)."""
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
    """Estimated bytes of :func:`empirical_ntk` (Jacobian contraction) by part: ``kernel``
    (host; ``n1 x n2``, times ``n_outputs**2`` untraced) and ``jacobians`` of two blocks,
    ``n_outputs x n_params`` floats per example (device; parameters ~ width² · depth)."""
    n2 = n1 if n2 is None else n2
    itemsize = itemsize or _itemsize()
    per_pair = 1 if traced else n_outputs**2
    b1, b2 = min(batch_size, n1), min(batch_size, n2)
    return {
        "kernel": n1 * n2 * per_pair * itemsize,
        "jacobians": (b1 + b2) * n_outputs * n_params * itemsize,
    }


def _check_empirical_memory(
    n_params, out_shape, x1, x2, batch_size, implementation, trace_axes, kept_bytes, working=None
):
    """Refuse an eNTK whose estimate exceeds the memory (see :func:`empirical_ntk_bytes`);
    ``kept_bytes``: the Jacobians of all examples, where they are kept, else None;
    ``working``: the compiled working memory of one block, where known (structured
    derivatives chosen by ``"auto"``)."""
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
    elif implementation != "jacobian_contraction":
        parts["jacobians"] = 0  # other implementations never hold whole Jacobians
    device_part = "jacobians"
    if working is not None and implementation != "jacobian_contraction":
        del parts["jacobians"]
        device_part = "working memory of a block (compiled)"
        parts[device_part] = working
    what = f"the empirical NTK of {n1} x {n2} examples ({n_params:,} parameters)"
    fix = "Reduce width or depth (parameters), batch_size, or the number of examples"
    _require(what, parts, device_part=device_part, fix=fix)


def _require(what: str, parts: dict[str, int], device_part: str, fix: str = "") -> None:
    """Check the result (host) and the working blocks (device) against their memories;
    on a CPU both share the host's RAM, so their sum is checked."""
    if jax.devices()[0].platform == "cpu":
        memory.require_memory(what, parts, where="host", fix=fix)
        return
    host = {k: v for k, v in parts.items() if k != device_part}
    memory.require_memory(what, host, where="host", fix=fix)
    memory.require_memory(what, {device_part: parts[device_part]}, where="device", fix=fix)


class Choice(NamedTuple):
    """How :func:`empirical_ntk` computes one kernel: ``implementation``, ``batch_size`` (the
    whole problem where it fits in memory, for structured derivatives), the estimated seconds
    of each way considered, ``estimates`` ``{name: s}``, and for structured derivatives over
    more than one block the compiled working memory of the block size chosen
    (``working_bytes``, else None)."""

    implementation: str
    batch_size: int
    estimates: dict[str, float]
    working_bytes: int | None = None


def _spec(x) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(np.shape(x), getattr(x, "dtype", np.float32))


def choose_implementation(
    apply_fn: Callable, params, x1, x2=None, trace_axes=(-1,), batch_size: int = 128
) -> Choice:
    """The cheaper way to compute ``empirical_ntk(apply_fn, params, x1, x2)``, estimated for the
    whole computation from XLA's operation and byte counts (:mod:`ntkrepro.cost`): the kept
    Jacobians and one contraction (where they fit, :func:`keeps_jacobians`) against structured
    derivatives in one block (or in ``batch_size`` blocks where one block's working memory,
    from its compilation, exceeds half the memory available now). The estimates are cached per
    model, shapes and device: they trace and lower the computation (~0.1-0.4 s; a compilation
    where the one block is checked, which the call then reuses), nothing runs."""
    devices = jax.devices()
    estimates, one_block_bytes, block_bytes = _estimates(
        apply_fn,
        memory.device_name(devices[0]),
        len(devices),
        KEEP_JACOBIANS_BYTES,
        tuple(trace_axes),
        _spec(x1),
        None if x2 is None else _spec(x2),
        *spec_key(params),
        batch_size,
    )
    best = min(estimates, key=estimates.get)
    if one_block_bytes is None:  # Jacobian contraction, or the whole is one block already
        return Choice(best, batch_size, estimates)
    limit, _ = memory.available_memory("device")
    fits = limit is None or one_block_bytes <= limit / 2
    whole = max(len(x1), len(x1 if x2 is None else x2))
    if fits:
        return Choice(best, whole, estimates, one_block_bytes)
    return Choice(best, batch_size, estimates, block_bytes)


@memoized(64)
def _estimates(apply_fn, device, n_devices, keep_bytes, trace_axes, s1, s2, treedef, specs, batch):
    """``({implementation: estimated s}, compiled bytes of structured derivatives in one block
    and in a ``batch`` block, or None, None where not needed)``, from shapes alone: cached per
    model, device (name and count), keep budget, trace axes, input and parameter shapes, block
    size; see :func:`choose_implementation`."""
    del n_devices, keep_bytes  # in the cache key only: _kept_jacobian_bytes reads them
    rates = cost.device_rates(device)
    p_spec = jax.tree_util.tree_unflatten(treedef, [jax.ShapeDtypeStruct(s, d) for s, d in specs])
    estimates: dict[str, float] = {}  # seconds; XLA's counts are a ranking, not a forecast
    n_params, out_shape = _shapes(apply_fn, treedef, specs, s1.shape[1:], str(s1.dtype))
    if _kept_jacobian_bytes(n_params, out_shape, s1, s2, trace_axes) is not None:
        jc = _jitted(_empirical_ntk_fn(apply_fn, "jacobian_contraction", trace_axes))
        estimates["jacobian_contraction"] = cost.of(jc.lower(s1, s2, p_spec)).seconds(rates)
    sd = _jitted(_empirical_ntk_fn(apply_fn, "structured_derivatives", trace_axes))
    lowered = sd.lower(s1, s2, p_spec)
    estimates["structured_derivatives"] = cost.of(lowered).seconds(rates)
    whole = max(s1.shape[0], s1.shape[0] if s2 is None else s2.shape[0])
    if min(estimates, key=estimates.get) != "structured_derivatives" or whole <= batch:
        return estimates, None, None

    def working(lowered) -> int:
        stats = lowered.compile().memory_analysis()
        return int(sum(getattr(stats, f"{part}_size_in_bytes", 0) for part in ("temp", "output")))

    b1, b2 = min(batch, s1.shape[0]), min(batch, whole if s2 is None else s2.shape[0])
    block = sd.lower(_spec_rows(s1, b1), _spec_rows(s1 if s2 is None else s2, b2), p_spec)
    return estimates, working(lowered), working(block)


def _spec_rows(spec: jax.ShapeDtypeStruct, rows: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((rows, *spec.shape[1:]), spec.dtype)

"""Run neural-tangents 0.6.5 (its last release) on JAX 0.10.x / 0.11.x without TensorFlow.

Importing this applies the layer (idempotently; before any ``import neural_tangents``): aliases
for missing JAX names, a stub ``neural_tangents.experimental``, and fixes scoped to NT's modules
(views of their globals, replaced private functions). JAX, flax and optax are left alone."""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import itertools
import platform
import sys
import types
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core
import jax.interpreters.ad

LIMITATIONS: list[str] = []
"""What does not work under this layer, with the error text. Empty: nothing known."""

_TF_MESSAGE = (
    "neural_tangents.experimental (empirical_ntk_fn_tf, get_apply_fn_and_params) needs "
    "tensorflow and tf2jax, which ntkrepro does not install. Install both to use it; the "
    "rest of neural_tangents works without them."
)
_applied = False


class _ModuleView(types.ModuleType):
    """Reads like module `base`, except for the attributes given in `overrides`."""

    def __init__(self, base: types.ModuleType, **overrides: Any) -> None:
        super().__init__(base.__name__, base.__doc__)
        self.__dict__.update(overrides, _compat_base=base)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_compat_base"], name)


def _new_module(name: str, doc: str) -> types.ModuleType:
    """An empty module with a spec, so that importlib.util.find_spec(name) works on it."""
    module = types.ModuleType(name, doc)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    return module


def _safe_map(f: Callable, *args: Any) -> list:
    return list(itertools.starmap(f, zip(*args, strict=True)))


def _safe_zip(*args: Any) -> list:
    return list(zip(*args, strict=True))


def _set_missing(obj: Any, name: str, value: Any) -> None:
    if not hasattr(obj, name):
        setattr(obj, name, value)


def _install_aliases() -> None:
    """Set the names NT imports at import time, where this JAX lacks them."""
    # JAX 0.6.0 removed the jaxpr classes from jax.core (they live in jax.extend.core).
    for name in ("Jaxpr", "JaxprEqn", "Literal", "Var", "Primitive"):
        _set_missing(jax.core, name, getattr(jax.extend.core, name))
    # JAX 0.7.0 removed jax.util.safe_map/safe_zip, and 0.8.0 the jax.util module itself.
    if "jax.util" in sys.modules or importlib.util.find_spec("jax.util") is not None:
        util = importlib.import_module("jax.util")
    else:
        util = sys.modules["jax.util"] = jax.util = _new_module("jax.util", "Set by ntkrepro.")
    _set_missing(util, "safe_map", _safe_map)
    _set_missing(util, "safe_zip", _safe_zip)
    # JAX 0.10.0 removed ad.zeros_like_p; NT only uses it as a rule-table key (never bound).
    _set_missing(jax.interpreters.ad, "zeros_like_p", jax.extend.core.Primitive("zeros_like"))


def _tf_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("tensorflow", "tf2jax"))


def _install_experimental_stub() -> None:
    """Register a stub `neural_tangents.experimental` so that NT does not import TF."""
    name = "neural_tangents.experimental"
    if name in sys.modules or _tf_available():
        return

    def __getattr__(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise ImportError(f"{name}.{attr}: {_TF_MESSAGE}")

    stub = _new_module(name, f"Stub installed by ntkrepro.compat. {_TF_MESSAGE}")
    stub.__getattr__ = __getattr__
    sys.modules[name] = stub


class _Unknown:
    """Stands in for the old `pe.PartialVal` of an output tangent. It is never known."""

    @staticmethod
    def is_known() -> bool:
        return False


def _linearize(fn_flat: Any, *primals: Any, has_aux: bool = False) -> tuple:
    """JAX < 0.5's internal `ad.linearize` on public APIs: `(primals_out, pvals, jaxpr, consts)`."""
    if has_aux:
        raise NotImplementedError("ntkrepro.compat._linearize: has_aux=True is not supported.")
    primals_out, jvp_fn = jax.linearize(lambda *p: fn_flat.call_wrapped(*p), *primals)
    closed = jax.make_jaxpr(jvp_fn)(*primals)
    return primals_out, [_Unknown()] * len(primals_out), closed.jaxpr, closed.consts


def _eqn_vjp_fn(eqn: Any, cts_in: Any, *invals: Any) -> tuple:
    """Input cotangents of `eqn` (None if known); NT's version used tables JAX 0.8-0.10 removed."""
    ad = jax.interpreters.ad
    if eqn is None:  # identity
        return (cts_in,)
    unknown = [i for i, x in enumerate(invals) if ad.is_undefined_primal(x)]
    if isinstance(cts_in, ad.Zero):
        return tuple(ad.Zero(x.aval) if i in unknown else None for i, x in enumerate(invals))

    def linear_fn(*xs: Any) -> Any:
        args = list(invals)
        for i, x in zip(unknown, xs, strict=True):
            args[i] = x
        return eqn.primitive.bind(*args, **eqn.params)

    transpose = jax.linear_transpose(linear_fn, *(invals[i].aval for i in unknown))
    cts = iter(transpose(jax.numpy.asarray(cts_in, eqn.outvars[0].aval.dtype)))
    return tuple(next(cts) if i in unknown else None for i in range(len(invals)))


def _get_flops(f: Callable, optimize: bool, *a: Any, **kw: Any) -> float:
    """FLOPs of `f(*a, **kw)` for AUTO. JAX 0.5 made `cost_analysis()` a dict, not a list."""
    lowered = jax.jit(f).lower(*a, **kw)
    analysis = lowered.compile().cost_analysis() if optimize else lowered.cost_analysis()
    if isinstance(analysis, list | tuple):
        analysis = analysis[0]
    return analysis["flops"]


def _eigvalsh(a: Any, *args: Any, eigvals: tuple[int, int] | None = None, **kw: Any) -> Any:
    """`scipy.linalg.eigvalsh` that still accepts `eigvals=`, which scipy 1.14 removed."""
    import scipy.linalg

    if eigvals is not None:
        kw["subset_by_index"] = eigvals
    return scipy.linalg.eigvalsh(a, *args, **kw)


class _RemovedType:
    """Placeholder for removed JAX types that NT tests with `type(x) is ...`."""


def _patch_nt_modules() -> None:
    """Apply the scoped fixes to NT's empirical, predict and stax.linear modules."""
    import neural_tangents._src.empirical as emp
    import neural_tangents._src.predict as predict
    import neural_tangents._src.stax.linear as linear
    import scipy
    import scipy.linalg

    # JAX 0.4.36: core.eval_context leaks tracers of gradient_descent_mse under jit/vmap.
    jax_view = _ModuleView(
        jax, core=_ModuleView(jax.core, eval_context=jax.ensure_compile_time_eval)
    )
    for module in (predict, linear):
        if not isinstance(module.jax, _ModuleView):
            module.jax = jax_view
    # scipy 1.14 removed eigvalsh(eigvals=...), which predict.max_learning_rate uses.
    if not isinstance(predict.sp, _ModuleView):
        predict.sp = _ModuleView(scipy, linalg=_ModuleView(scipy.linalg, eigvalsh=_eigvalsh))
    if isinstance(emp.ad, _ModuleView):
        return
    emp.ad = _ModuleView(
        jax.interpreters.ad,
        # JAX 0.5.0 and 0.10 changed the signature and results of the internal ad.linearize.
        linearize=_linearize,
        # JAX 0.4.26 removed ad.source_info_util; NT only labels equations with it.
        source_info_util=types.SimpleNamespace(
            transform_name_stack=lambda *_: contextlib.nullcontext()
        ),
        # JAX 0.4.26 removed ad.config; NT's optional check needs core.lattice_join (gone).
        config=types.SimpleNamespace(jax_enable_checks=False),
    )
    # JAX 0.9.0 removed core.DShapedArray; NT's _read_primal still compares types with it.
    emp.core = _ModuleView(jax.core, DShapedArray=_RemovedType)
    emp._eqn_vjp_fn = _eqn_vjp_fn
    emp._get_flops = _get_flops


def apply() -> None:
    """Apply the layer, idempotently. Imports neural_tangents if it is not imported yet."""
    global _applied
    if _applied:
        return
    _install_aliases()
    _install_experimental_stub()
    _patch_nt_modules()
    _applied = True


def versions() -> dict[str, str]:
    """Versions of the numerical stack, for the provenance recorded with every result."""
    out = {}
    for name in ("jax", "jaxlib", "neural-tangents", "flax", "optax", "numpy", "scipy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    return out


apply()

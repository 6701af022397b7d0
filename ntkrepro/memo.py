"""One compiled function per model: memoized factories. JAX caches a compilation on the
function object, so a factory of jitted functions (or of functions for ``nt.batch``) must
return the *same* object for the same model not to recompile on every call; unhashable
arguments still work, with a fresh function (compiled every call)."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache, wraps
from typing import TypeVar

F = TypeVar("F", bound=Callable)


def memoized(maxsize: int) -> Callable[[F], F]:
    """Decorator: cache a factory's results on its (hashable) arguments, keeping up to
    ``maxsize`` of them; unhashable arguments bypass the cache. ``cache_info`` and
    ``cache_clear`` are those of the underlying :func:`functools.lru_cache`."""

    def wrap(make: F) -> F:
        cached = lru_cache(maxsize=maxsize)(make)

        @wraps(make)
        def get(*args):
            try:
                return cached(*args)
            except TypeError:  # an unhashable argument
                return make(*args)

        get.cache_info = cached.cache_info
        get.cache_clear = cached.cache_clear
        return get

    return wrap


def spec_key(tree) -> tuple:
    """``(treedef, ((shape, dtype), ...))``: a hashable key of a pytree's structure, leaf shapes
    and dtypes (arrays, or ``jax.ShapeDtypeStruct``), for caches keyed on shapes alone."""
    import jax  # here: the other factories of this module need no JAX
    import numpy as np

    def spec(leaf) -> tuple:
        # Python scalars as leaves too: they have neither .shape nor .dtype.
        dtype = getattr(leaf, "dtype", None)
        return tuple(np.shape(leaf)), str(np.result_type(leaf) if dtype is None else dtype)

    leaves = jax.tree_util.tree_leaves(tree)
    return jax.tree_util.tree_structure(tree), tuple(spec(leaf) for leaf in leaves)

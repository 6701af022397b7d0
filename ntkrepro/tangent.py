"""The tangent model of a network at an anchor: its kernel, without its function.

``f_a(θ) = J(θ_a)(θ - θ_a)`` is the first-order Taylor model of a network at the anchor
``θ_a`` with the offset ``f(θ_a)`` removed: at ``θ = θ_a`` it is the zero function, and
gradient descent on it is kernel regression with the empirical NTK at ``θ_a``. Two such
models at different anchors (initialization, after pretraining) differ only in their
kernel, which is what Ortiz-Jiménez et al. (2021) compare when they linearize a network
after non-linear pretraining.
"""

from __future__ import annotations

from collections.abc import Callable

import jax


def tangent_model(apply_fn: Callable, anchor) -> Callable:
    """``(θ, x) -> J(θ_a, x)(θ - θ_a)``, outputs ``(n, k)`` like ``apply_fn``.

    Train it from ``params = anchor`` (zero initial function); its empirical NTK is the
    network's at ``anchor`` for every ``θ``.
    """

    def f(params, x):
        delta = jax.tree_util.tree_map(lambda p, a: p - a, params, anchor)
        return jax.jvp(lambda q: apply_fn(q, x), (anchor,), (delta,))[1]

    return f

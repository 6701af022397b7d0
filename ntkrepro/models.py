"""Architectures as ``stax`` triples ``(init_fn, apply_fn, kernel_fn)``: network and kernels."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import neural_tangents as nt  # noqa: F401  (ntkrepro.compat is applied by the package)
import numpy as np
from neural_tangents import stax

Triple = tuple[Callable, Callable, Callable]

ACTIVATIONS: dict[str, Callable[[], tuple]] = {
    "relu": stax.Relu,
    "erf": stax.Erf,
    "sigmoid": stax.Sigmoid_like,  # 0.5 erf(x / 2.402) + 0.5, the logistic fit; closed forms
    "gelu": stax.Gelu,
    "identity": stax.Identity,
}


def activation(name: str) -> tuple:
    """The stax layer for an activation name (``relu``, ``erf``, ``gelu``, ``identity``)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}") from None


def _check(width: int, depth: int, parameterization: str) -> None:
    if width < 1 or depth < 0:
        raise ValueError(f"width={width} must be >= 1 and depth={depth} >= 0")
    if parameterization not in ("ntk", "standard"):
        raise ValueError(f"parameterization={parameterization!r}: use 'ntk' or 'standard'")


def fcn(
    width: int,
    depth: int,
    out_dim: int = 1,
    *,
    act: str = "relu",
    W_std: float = 2**0.5,
    b_std: float = 0.05,
    parameterization: str = "ntk",
) -> Triple:
    """``depth`` dense hidden layers of ``width``, then a readout: ``(n, d) -> (n, out_dim)``."""
    _check(width, depth, parameterization)
    dense = dict(W_std=W_std, b_std=b_std, parameterization=parameterization)
    hidden = [stax.serial(stax.Dense(width, **dense), activation(act)) for _ in range(depth)]
    return stax.serial(*hidden, stax.Dense(out_dim, **dense))


READOUTS = {"vec": stax.Flatten, "gap": stax.GlobalAvgPool}


def cnn(
    channels: int,
    depth: int,
    out_dim: int = 1,
    *,
    readout: str = "gap",
    act: str = "relu",
    W_std: float = 2**0.5,
    b_std: float = 0.05,
    parameterization: str = "ntk",
) -> Triple:
    """``depth`` 3x3 convs, a ``"vec"``/``"gap"`` readout, a dense layer: NHWC -> (n, out_dim)."""
    _check(channels, depth, parameterization)
    if readout not in READOUTS:
        raise ValueError(f"readout={readout!r}: use one of {', '.join(READOUTS)}")
    dense = dict(W_std=W_std, b_std=b_std, parameterization=parameterization)
    conv = partial(stax.Conv, channels, (3, 3), padding="SAME", **dense)
    body = [stax.serial(conv(), activation(act)) for _ in range(depth)]
    return stax.serial(*body, READOUTS[readout](), stax.Dense(out_dim, **dense))


cnn_vec = partial(cnn, readout="vec")
cnn_gap = partial(cnn, readout="gap")


def lenet(
    out_dim: int = 1,
    *,
    act: str = "relu",
    W_std: float = 1.0,
    b_std: float = 0.0,
    parameterization: str = "standard",
) -> Triple:
    """LeNet-like CNN of Ortiz-Jiménez et al. (2021); defaults: LeCun init, zero biases."""
    _check(1, 0, parameterization)
    dense = dict(W_std=W_std, b_std=b_std, parameterization=parameterization)
    return stax.serial(
        stax.Conv(6, (5, 5), padding="SAME", **dense),
        activation(act),
        stax.AvgPool((2, 2), strides=(2, 2)),
        stax.Conv(16, (5, 5), padding="SAME", **dense),
        activation(act),
        stax.AvgPool((2, 2), strides=(2, 2)),
        stax.Flatten(),
        stax.Dense(120, **dense),
        activation(act),
        stax.Dense(84, **dense),
        activation(act),
        stax.Dense(out_dim, **dense),
    )


def ortiz2021(architecture: str, width: int = 100, depth: int = 2, out_dim: int = 1) -> Triple:
    """Ortiz-Jiménez et al. (2021)'s ``"mlp"`` (LeCun init, zero biases) or ``"lenet"``."""
    if architecture == "mlp":
        return fcn(width, depth, out_dim, W_std=1.0, b_std=0.0, parameterization="standard")
    if architecture == "lenet":
        return lenet(out_dim)
    raise ValueError(f"architecture={architecture!r}: use 'mlp' or 'lenet'")


def count_params(params) -> int:
    """Number of scalar parameters in a pytree."""
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))


def init_many(init_fn: Callable, key: jax.Array, n: int, input_shape: tuple[int, ...]):
    """``n`` independent initializations (keys ``split(key, n)``), stacked on a leading axis."""
    keys = jax.random.split(key, n)
    return jax.vmap(lambda k: init_fn(k, input_shape)[1])(keys)


def concat_many(*batches):
    """Stacked parameter sets (leading axes ``S_1, S_2, ...``) as one stack of ``S_1 + S_2 + ...``
    networks, e.g. before and after training, for one vmapped call and one compilation."""
    return jax.tree_util.tree_map(lambda *leaves: jax.numpy.concatenate(leaves), *batches)


def apply_many(apply_fn: Callable, params_batch, x) -> np.ndarray:
    """Outputs of each of ``S`` stacked networks on ``x`` ``(n, ...)``: ``(S, n, k)`` float64."""
    return np.asarray(jax.jit(jax.vmap(lambda p: apply_fn(p, x)))(params_batch), np.float64)

"""Preprocessing and tasks: subsets, targets, normalization, ZCA, pooling, eigenvector tasks,
and :func:`load_task` (a reproducible task from :mod:`ntkrepro.datasets`). Images are NHWC
float32 ``(n, H, W, C)``; labels int32 ``(n,)``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ntkrepro.datasets import _info, load


def _stratified_quotas(counts: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Per-class sizes summing to n, as equal as possible (water-filling; leftovers by ``rng``)."""
    quotas = np.zeros(len(counts), dtype=np.int64)
    open_classes = list(np.argsort(counts, kind="stable"))
    remaining = n
    while open_classes:
        share = remaining // len(open_classes)
        small = [c for c in open_classes if counts[c] <= share]
        if not small:
            break
        for c in small:
            quotas[c] = counts[c]
            remaining -= counts[c]
        open_classes = [c for c in open_classes if counts[c] > share]
    if open_classes:
        share, extra = divmod(remaining, len(open_classes))
        quotas[open_classes] = share  # every open class has more than `share` examples
        quotas[rng.choice(np.array(open_classes), size=extra, replace=False)] += 1
    return quotas


def subset(
    x: np.ndarray, y: np.ndarray, n: int, seed: int, *, stratified: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random examples of ``x`` ``(N, ...)``, ``y`` ``(N,)``, shuffled, fixed by ``seed``."""
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    if not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if n > len(y):
        raise ValueError(
            f"asked for n={n} examples but only {len(y)} are available; use n <= {len(y)} "
            "(or a larger split / fewer excluded classes)"
        )
    rng = np.random.Generator(np.random.PCG64(seed))
    if stratified:
        _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
        quotas = _stratified_quotas(counts, n, rng)
        picks = [rng.permutation(np.flatnonzero(inverse == c))[:q] for c, q in enumerate(quotas)]
        idx = rng.permutation(np.concatenate(picks))  # interleave classes for minibatching
    else:
        idx = rng.choice(len(y), size=n, replace=False)
    return x[idx], y[idx]


def binary_task(y: np.ndarray, positive: Sequence[int]) -> np.ndarray:
    """Binary targets: +1 where ``y`` is in ``positive``, -1 elsewhere; int32, shape (n,)."""
    positive = list(positive)
    if not positive:
        raise ValueError("positive must name at least one class")
    return np.where(np.isin(y, positive), 1, -1).astype(np.int32)


def one_hot(y: np.ndarray, k: int, centered: bool = True) -> np.ndarray:
    """Targets (n, k) float32: one-hot, minus ``1/k`` if ``centered`` (Lee et al. 2020)."""
    y = np.asarray(y)
    if y.ndim != 1 or (len(y) and (y.min() < 0 or y.max() >= k)):
        raise ValueError(f"labels must be a 1-d array of integers in [0, {k})")
    targets = np.eye(k, dtype=np.float32)[y]
    return targets - np.float32(1.0 / k) if centered else targets


def flatten(x: np.ndarray) -> np.ndarray:
    """(n, ...) -> (n, prod(...)), row-major (for NHWC images: pixel by pixel, C fastest)."""
    return np.reshape(x, (len(x), -1))


_flatten = flatten  # load_task has a boolean argument of the same name


def normalize_per_channel(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardize the last axis with the float64 mean and std of ``x_train``; float32 out."""
    train = np.asarray(x_train, dtype=np.float64)
    axes = tuple(range(train.ndim - 1))
    mean, std = train.mean(axis=axes), train.std(axis=axes)
    std = np.where(std > 0, std, 1.0)

    def apply(x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float64) - mean) / std).astype(np.float32)

    return apply(x_train), apply(x_test)


def _standardize_examples(x: np.ndarray) -> np.ndarray:
    """Center each row and scale it to unit norm."""
    x = x - x.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def zca_whiten(
    x_train: np.ndarray, x_test: np.ndarray, reg: float, *, standardize_examples: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """ZCA whitening (Lee et al. 2020), ``eps = reg * trace / d``, of the flattened inputs;
    numerically null directions stay unscaled, as in the reference code. Float32 out."""
    if not reg >= 0:
        raise ValueError(f"reg must be >= 0, got {reg!r}")
    train = flatten(np.asarray(x_train, dtype=np.float64))
    test = flatten(np.asarray(x_test, dtype=np.float64))
    if train.shape[1] != test.shape[1]:
        raise ValueError(f"train has {train.shape[1]} features but test has {test.shape[1]}")
    if standardize_examples:
        train, test = _standardize_examples(train), _standardize_examples(test)
    n, d = train.shape
    second_moment = train.T @ train / n
    s, u = np.linalg.eigh(second_moment)
    s = np.clip(s, 0.0, None)  # eigh can return tiny negative values for a PSD matrix
    eps = reg * s.sum() / d
    null = s <= s.max() * d * np.finfo(np.float64).eps
    scale = np.where(null, 1.0, 1.0 / np.sqrt(np.where(null, 1.0, s + eps)))
    w = (u * scale) @ u.T
    out_train = (train @ w).reshape(np.shape(x_train)).astype(np.float32)
    out_test = (test @ w).reshape(np.shape(x_test)).astype(np.float32)
    return out_train, out_test


def _check_count(label: str, n: Any, available: int, name: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"{label} must be a positive integer, got {n!r}")
    if n > available:
        raise ValueError(
            f"{label}={n} but {name} has only {available} examples in that split; "
            f"use {label} <= {available}"
        )


def load_task(
    name: str,
    n_train: int,
    n_test: int,
    seed: int,
    *,
    classes: Sequence[int] | None = None,
    binary: Sequence[int] | None = None,
    flatten: bool = False,
    normalize: bool = True,
    zca_reg: float | None = None,
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """A reproducible task: a dict of float32 ``x_train``/``x_test``, int32 ``y_train``/``y_test``
    (±1 with ``binary``, else the index into ``classes``) and the arguments as metadata."""
    info = _info(name)
    _check_count("n_train", n_train, info.n_train, info.name)
    _check_count("n_test", n_test, info.n_test, info.name)
    if classes is not None:
        classes = [int(c) for c in classes]
        if len(set(classes)) != len(classes) or len(classes) < 2:
            raise ValueError(f"classes must be at least 2 distinct labels, got {classes}")
        if not all(0 <= c < info.n_classes for c in classes):
            raise ValueError(f"classes must lie in 0..{info.n_classes - 1}, got {classes}")
    if binary is not None:
        binary = [int(c) for c in binary]
        allowed = classes if classes is not None else list(range(info.n_classes))
        if not binary or not set(binary) < set(allowed):
            raise ValueError(
                f"binary must be a non-empty proper subset of the classes {allowed}, got {binary}"
            )

    def prepare(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = load(info.name, split, data_dir)
        if classes is not None:
            keep = np.isin(y, classes)
            x, y = x[keep], y[keep]
        return subset(x, y, n, seed)

    x_train, y_train = prepare("train", n_train)
    x_test, y_test = prepare("test", n_test)
    if binary is not None:
        y_train, y_test = binary_task(y_train, binary), binary_task(y_test, binary)
        n_classes = 2
    elif classes is not None:
        lookup = np.full(info.n_classes, -1, dtype=np.int32)
        lookup[classes] = np.arange(len(classes), dtype=np.int32)
        y_train, y_test = lookup[y_train], lookup[y_test]
        n_classes = len(classes)
    else:
        n_classes = info.n_classes
    if normalize:
        x_train, x_test = normalize_per_channel(x_train, x_test)
    if zca_reg is not None:
        x_train, x_test = zca_whiten(x_train, x_test, zca_reg)
    if flatten:
        x_train, x_test = _flatten(x_train), _flatten(x_test)
    return {
        "x_train": x_train,
        "y_train": y_train.astype(np.int32),
        "x_test": x_test,
        "y_test": y_test.astype(np.int32),
        "dataset": info.name,
        "n_train": n_train,
        "n_test": n_test,
        "seed": seed,
        "classes": None if classes is None else tuple(classes),
        "binary": None if binary is None else tuple(binary),
        "n_classes": n_classes,
        "image_shape": info.image_shape,
        "normalize": normalize,
        "zca_reg": zca_reg,
        "flatten": flatten,
    }


def pool(x: np.ndarray, factor: int, *, crop: bool = False) -> np.ndarray:
    """Average-pool NHWC images over ``factor x factor`` blocks (``crop``: drop the remainder)."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"pool expects NHWC images (n, H, W, C), got shape {x.shape}")
    n, h, w, c = x.shape
    if factor < 1 or (not crop and (h % factor or w % factor)):
        raise ValueError(
            f"factor={factor} must be a positive divisor of the image size {h}x{w} "
            "(e.g. 2, 4 or 7 for 28x28 MNIST), or pass crop=True"
        )
    x = x[:, : h - h % factor, : w - w % factor]
    return x.reshape(n, h // factor, factor, w // factor, factor, c).mean((2, 4))


def sphere(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` ``(n, d)`` rescaled to squared norm ``d`` (mean-field ``q0 = 1``)."""
    return x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(x.shape[1])


def log_indices(lo: int, hi: int, count: int) -> list[int]:
    """Up to ``count`` distinct integers, roughly log-spaced in ``[lo, hi]`` (``lo >= 1``)."""
    return [int(k) for k in np.unique(np.round(np.geomspace(lo, hi, count)).astype(int))]


def eigen_indices(n: int, count: int, first: int = 1) -> list[int]:
    """Log-spaced indices in ``[first, n // 2]``; 0 (near-constant sign: one class) skipped."""
    if count < 1 or not 1 <= first < n // 2:
        raise ValueError(f"need count >= 1 and 1 <= first < n//2, got count={count}, n={n}")
    return log_indices(first, n // 2, count)


def eigenfunction_labels(eigenvectors: np.ndarray, k: int) -> np.ndarray:
    """Sign (0 -> +1) of eigenvector ``k`` of ``(n, m)`` as ``(n, 1)`` float32 ±1 labels."""
    v = np.asarray(eigenvectors)[:, k]
    return np.where(v >= 0, 1.0, -1.0).astype(np.float32)[:, None]

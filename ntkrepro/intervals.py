"""95% intervals for the measured numbers of a claim check.

Two ways, one per figure, stated on its page:

- :func:`over_seeds`: the stochastic part of the experiment is repeated under several
  root seeds; the interval is Student's t over the per-seed values.
- :func:`bootstrap`: a paired percentile bootstrap over test examples (or tasks,
  inputs, initializations): every resample draws the same rows of every array, so two
  models compared on one test set keep their pairing.

Both return an :class:`Estimate`; :func:`ntkrepro.claims.compare` turns it and a
threshold into a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

LEVEL = 0.95


class Estimate(NamedTuple):
    """A measured number with its 95% interval.

    Attributes:
      value: the point estimate (the statistic on all data, or the mean over seeds).
      low, high: the interval's ends (NaN when it cannot be computed, e.g. one seed).
      method: how the interval was made, in words (shown on the page).
      n: the number of seeds, or of resampled units.
      samples: the per-seed values (empty for a bootstrap).
    """

    value: float
    low: float
    high: float
    method: str
    n: int
    samples: tuple[float, ...] = ()

    @property
    def interval(self) -> tuple[float, float]:
        return (self.low, self.high)

    def map(self, fn: Callable[[float], float], method: str | None = None) -> Estimate:
        """The estimate of ``fn(value)`` for a monotone increasing ``fn`` (ends map to ends)."""
        return self._replace(
            value=float(fn(self.value)),
            low=float(fn(self.low)),
            high=float(fn(self.high)),
            method=method or self.method,
            samples=tuple(float(fn(s)) for s in self.samples),
        )

    def magnitude(self) -> Estimate:
        """The estimate of ``|value|``, for a two-sided claim ("the effect is at least δ, of
        either sign"): the interval is the image of this one under ``abs``, from 0 when this
        one contains 0, so ``magnitude() >= δ`` holds iff the interval lies beyond ±δ."""
        low, high = self.low, self.high
        if math.isnan(low) or math.isnan(high):
            ends = (math.nan, math.nan)
        elif low > 0 or high < 0:
            ends = tuple(sorted((abs(low), abs(high))))
        else:
            ends = (0.0, max(-low, high))
        return self._replace(
            value=abs(self.value),
            low=float(ends[0]),
            high=float(ends[1]),
            method=f"{self.method}; its absolute value",
            samples=tuple(abs(s) for s in self.samples),
        )


def over_seeds(values: Sequence[float], level: float = LEVEL) -> Estimate:
    """Mean and Student-t interval of per-seed values (one value per root seed).

    NaN values (a seed whose run gave no number) make the interval NaN. With one seed
    the interval is NaN: a single run has no measured spread.
    """
    from scipy import stats

    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("over_seeds needs at least one value")
    mean = float(np.mean(x))
    if x.size < 2 or not np.all(np.isfinite(x)):
        low = high = math.nan
    elif np.all(x == x[0]):
        low = high = mean  # no spread: t.interval would return NaN for zero scale
    else:
        low, high = stats.t.interval(level, x.size - 1, loc=mean, scale=stats.sem(x))
    return Estimate(
        mean,
        float(low),
        float(high),
        f"t-interval over {x.size} seeds",
        int(x.size),
        tuple(float(v) for v in x),
    )


def bootstrap(
    statistic: Callable[..., float],
    *samples: np.ndarray,
    unit: str = "test examples",
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = LEVEL,
) -> Estimate:
    """Paired percentile bootstrap of ``statistic(*samples)``, resampling along axis 0.

    Args:
      statistic: maps arrays shaped like ``samples`` (same number of rows) to a number.
      samples: arrays whose first axis is the resampled unit (e.g. per-example 0/1
        correctness of each model, shape (n_test,) or (n_test, n_models)).
      unit: what a row is, in words ("test examples", "tasks", ...).
      n_resamples: bootstrap resamples; seed: the resampling's random seed.

    Returns:
      The statistic on all rows, with the percentile interval of the resampled values
      (NaN resamples are dropped; the interval is NaN if more than 1% are NaN).
    """
    arrays = [np.asarray(s) for s in samples]
    if not arrays:
        raise ValueError("bootstrap needs at least one sample array")
    n = arrays[0].shape[0]
    if n < 2 or any(a.shape[0] != n for a in arrays):
        raise ValueError(
            f"samples need the same number (>= 2) of rows: {[a.shape for a in arrays]}"
        )
    value = float(statistic(*arrays))
    # Our own loop: scipy.stats.bootstrap applies a non-vectorized statistic to 1-D
    # slices, but statistics here need whole rows of 2-D arrays (e.g. per-task columns).
    rng = np.random.default_rng(seed)
    draws = np.empty(n_resamples)
    for b in range(n_resamples):
        idx = rng.integers(0, n, n)
        draws[b] = statistic(*(a[idx] for a in arrays))
    finite = draws[np.isfinite(draws)]
    if finite.size < 0.99 * n_resamples:
        low = high = math.nan
    else:
        alpha = (1.0 - level) / 2.0
        low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return Estimate(
        value,
        float(low),
        float(high),
        f"paired bootstrap over {n} {unit} ({n_resamples} resamples, percentile)",
        int(n),
    )

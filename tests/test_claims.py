"""Claim checks, gates and method checks (ntkrepro.claims) and intervals (ntkrepro.intervals)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ntkrepro import claims, intervals
from ntkrepro.intervals import Estimate


def est(value, low, high, method="t-interval over 5 seeds", n=5):
    return Estimate(value, low, high, method, n)


@pytest.mark.parametrize(
    ("low", "high", "op", "verdict"),
    [
        # >= 1: wholly above, touching, straddling, wholly below
        (1.1, 1.5, ">=", claims.REPRODUCED),
        (1.0, 1.5, ">=", claims.REPRODUCED),
        (0.9, 1.5, ">=", claims.INCONCLUSIVE),
        (0.5, 0.99, ">=", claims.NOT_REPRODUCED),
        # > 1: an interval that touches the threshold does not decide for the claim
        (1.0, 1.5, ">", claims.INCONCLUSIVE),
        (0.5, 1.0, ">", claims.NOT_REPRODUCED),
        (1.01, 1.5, ">", claims.REPRODUCED),
        # <= 1 and < 1, mirrored
        (0.5, 1.0, "<=", claims.REPRODUCED),
        (0.5, 1.01, "<=", claims.INCONCLUSIVE),
        (1.01, 2.0, "<=", claims.NOT_REPRODUCED),
        (0.5, 1.0, "<", claims.INCONCLUSIVE),
        (1.0, 2.0, "<", claims.NOT_REPRODUCED),
        (0.2, 0.9, "<", claims.REPRODUCED),
        # an interval that could not be computed decides nothing
        (math.nan, math.nan, ">=", claims.INCONCLUSIVE),
        (-math.inf, math.inf, "<=", claims.INCONCLUSIVE),
        (1.5, math.inf, ">=", claims.REPRODUCED),
    ],
)
def test_the_verdict_follows_from_the_interval(low, high, op, verdict):
    assert claims.decide(low, high, op, 1.0) == verdict
    c = claims.compare("a", "c", "x", est((low + high) / 2, low, high), op, 1.0)
    assert c["verdict"] == verdict


def test_a_point_value_near_the_threshold_with_a_wide_interval_is_inconclusive():
    # the case the issue quotes: 0.0100000000000009 >= 0.01 on 500 test points
    c = claims.compare("a", "c", "gain", est(0.0100000000000009, -0.01, 0.03), ">=", 0.01)
    assert c["verdict"] == claims.INCONCLUSIVE
    assert c["interval"] == [-0.01, 0.03] and c["n"] == 5


def test_a_claim_check_refuses_a_bare_number():
    with pytest.raises(TypeError, match="95% interval"):
        claims.compare("a", "c", "gap", 0.01, "<=", 0.02)
    with pytest.raises(ValueError, match="op"):
        claims.compare("a", "c", "x", est(1, 0, 2), "==", 1)


def test_measured_numbers_become_json_types_and_seed_values_are_kept():
    e = intervals.over_seeds([np.float32(1.5), 1.7, 1.6])
    c = claims.compare("a", "c", "x", e, "<", 2, measured={"n": np.arange(3)})
    assert c["measured"]["x"] == pytest.approx(1.6) and c["measured"]["n"] == [0, 1, 2]
    assert c["measured"]["x_per_seed"] == pytest.approx([1.5, 1.7, 1.6])
    assert all(isinstance(v, int) for v in c["measured"]["n"])


def test_gates_make_their_checks_invalid_and_keep_the_interval_verdict():
    a = claims.compare("a", "c", "x", est(2, 1.5, 2.5), ">=", 1)
    b = claims.compare("b", "c", "y", est(0, -1, -0.5), ">=", 1)
    fit = claims.gate("fit", "the network fits", "train_acc", 0.8, ">=", 0.99, applies_to=["a"])
    ok = claims.gate("lr", "below the edge", "lr_over_edge", 0.5, "<", 1.0)
    assert fit["verdict"] == claims.FAILED and ok["verdict"] == claims.PASSED
    gated = claims.apply_gates([a, b], [fit, ok])
    assert gated[0]["verdict"] == claims.INVALID and gated[0]["failed_gates"] == ["fit"]
    assert gated[0]["interval_verdict"] == claims.REPRODUCED
    assert gated[1]["verdict"] == claims.NOT_REPRODUCED and gated[1]["gates"] == ["lr"]
    assert claims.overall(gated) == claims.NOT_REPRODUCED
    assert claims.overall(claims.apply_gates([a], [fit])) == claims.INVALID
    nan = claims.gate("g", "finite", "loss", math.nan, "<=", 1.0)
    assert nan["verdict"] == claims.FAILED
    with pytest.raises(ValueError, match="unknown checks"):
        claims.apply_gates([a], [claims.gate("g", "c", "q", 1, ">=", 0, applies_to=["z"])])


def test_overall_verdict_for_every_combination():
    r = {"verdict": claims.REPRODUCED}
    n = {"verdict": claims.NOT_REPRODUCED}
    i = {"verdict": claims.INCONCLUSIVE}
    v = {"verdict": claims.INVALID}
    assert claims.overall([r, r]) == claims.REPRODUCED
    assert claims.overall([r, n]) == claims.PARTLY
    assert claims.overall([r, i]) == claims.PARTLY
    assert claims.overall([r, v]) == claims.PARTLY
    assert claims.overall([n, i]) == claims.NOT_REPRODUCED
    assert claims.overall([n]) == claims.NOT_REPRODUCED
    assert claims.overall([i, v]) == claims.INCONCLUSIVE
    assert claims.overall([v, v]) == claims.INVALID
    with pytest.raises(ValueError):
        claims.overall([])


def test_method_checks_are_never_a_reproduction():
    m = claims.method_check("m", "closed form = quadrature", "max_abs_diff", 1e-9, "<=", 1e-6)
    bad = claims.method_check("m2", "identity", "err", 0.5, "<=", 1e-6)
    assert m["verdict"] == claims.PASSED and bad["verdict"] == claims.FAILED
    assert claims.overall([], [m]) == claims.METHOD_PASSED
    assert claims.overall([], [m, bad]) == claims.METHOD_FAILED
    r = claims.compare("a", "c", "x", est(2, 1.5, 2.5), ">=", 1)
    assert claims.overall([r], [bad]) == claims.REPRODUCED  # method checks are apart


def test_markdown_shows_interval_gates_and_method_checks():
    c = claims.compare("a", "claim text", "x", est(3, 2.5, 3.5), "<=", 2, threshold_parameter="t")
    g = claims.gate("fit", "fits its data", "train_acc", 0.5, ">=", 0.99)
    m = claims.method_check("m", "an identity", "err", 0.0, "<=", 1e-6)
    text = claims.as_markdown(claims.apply_gates([c], [g]), "cpu", [g], [m])
    assert "claim text" in text and "`x <= t = 2`" in text and "[2.5, 3.5]" in text
    assert "invalid at this scale (gate fit failed)" in text and "fits its data" in text
    assert "an identity" in text and "t-interval over 5 seeds" in text


def test_over_seeds_is_a_t_interval():
    e = intervals.over_seeds([1.0, 2.0, 3.0])
    # mean 2, sem 1/sqrt(3), t(0.975, 2) = 4.303
    assert e.value == 2.0 and e.n == 3
    assert e.low == pytest.approx(2 - 4.3027 / math.sqrt(3), abs=1e-3)
    assert e.high == pytest.approx(2 + 4.3027 / math.sqrt(3), abs=1e-3)
    assert math.isnan(intervals.over_seeds([1.0]).low)
    assert intervals.over_seeds([0.5, 0.5]).interval == (0.5, 0.5)
    assert math.isnan(intervals.over_seeds([1.0, math.nan]).high)


def test_bootstrap_is_paired_and_covers_the_mean():
    rng = np.random.default_rng(0)
    a = (rng.random(2000) < 0.8).astype(float)
    b = a.copy()
    b[:100] = 1 - b[:100]  # b differs from a on 100 of 2000 examples
    e = intervals.bootstrap(lambda x, y: x.mean() - y.mean(), a, b, seed=1)
    assert e.low <= e.value <= e.high
    # paired: the spread comes from the 100 differing examples only, so it is narrow
    assert e.high - e.low < 0.02
    unpaired = intervals.bootstrap(lambda x: x.mean(), a, seed=1)
    assert unpaired.high - unpaired.low > 0.02
    assert "paired bootstrap over 2000 test examples" in e.method
    # a 2-D sample is resampled by rows
    m = np.stack([a, b], axis=1)
    e2 = intervals.bootstrap(lambda x: x[:, 0].mean() - x[:, 1].mean(), m, seed=1)
    assert e2.interval == pytest.approx(e.interval)
    with pytest.raises(ValueError, match="rows"):
        intervals.bootstrap(np.mean, a, b[:10])


@pytest.mark.parametrize(
    ("low", "high", "ends", "verdict"),
    [
        # the signed interval wholly beyond +0.02 or -0.02: the claim "|change| >= 0.02" holds
        (0.03, 0.05, (0.03, 0.05), claims.REPRODUCED),
        (-0.05, -0.03, (0.03, 0.05), claims.REPRODUCED),
        # it contains 0: the magnitude may be 0, and the check cannot decide for the claim
        (-0.01, 0.04, (0.0, 0.04), claims.INCONCLUSIVE),
        # wholly inside (-0.02, 0.02): not reproduced, whichever sign
        (-0.015, 0.01, (0.0, 0.015), claims.NOT_REPRODUCED),
        (0.005, 0.01, (0.005, 0.01), claims.NOT_REPRODUCED),
        # beyond -0.02 on one end only: inconclusive
        (-0.03, 0.01, (0.0, 0.03), claims.INCONCLUSIVE),
    ],
)
def test_magnitude_judges_a_two_sided_claim(low, high, ends, verdict):
    e = Estimate((low + high) / 2, low, high, "t-interval over 5 seeds", 5, (low, high))
    m = e.magnitude()
    assert m.interval == pytest.approx(ends)
    assert m.value == pytest.approx(abs(e.value))
    assert m.samples == pytest.approx((abs(low), abs(high)))
    assert "absolute value" in m.method
    assert claims.decide(m.low, m.high, ">=", 0.02) == verdict
    assert math.isnan(Estimate(0.1, math.nan, math.nan, "one seed", 1).magnitude().low)


def test_map_transforms_the_ends():
    e = Estimate(1.0, 0.5, 2.0, "m", 3, (0.5, 1.0, 1.5))
    assert e.map(math.log).interval == (math.log(0.5), math.log(2.0))

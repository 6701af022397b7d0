"""Measurement helpers (ntkrepro.measure), the plain references of benchmarks/ (they must
compute the same kernels as ntkrepro), the benchmark report and the eNTK cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from ntkrepro import kernels, measure, models

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # benchmarks/ is not part of the package
from benchmarks import reference, report  # noqa: E402


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).normal(size=(13, 6)).astype(np.float32)


def test_jacobian_reference_equals_empirical_ntk(x):
    init_fn, apply_fn, _ = models.fcn(32, 2, 3)
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    ref = np.asarray(reference.entk_reference(apply_fn, params, x[:5], x))
    for impl in ("jacobian_contraction", "structured_derivatives"):
        got = kernels.empirical_ntk(apply_fn, params, x[:5], x, batch_size=4, implementation=impl)
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-5)
    same = np.asarray(reference.entk_reference(apply_fn, params, x))
    np.testing.assert_allclose(same[:5], ref, rtol=1e-5, atol=1e-6)


def test_jacobian_reference_on_a_cnn():
    xi = np.random.default_rng(1).normal(size=(6, 5, 5, 2)).astype(np.float32)
    init_fn, apply_fn, _ = models.cnn(4, 1, 2)
    _, params = init_fn(jax.random.PRNGKey(0), xi.shape)
    got = kernels.empirical_ntk(apply_fn, params, xi, batch_size=4)
    np.testing.assert_allclose(
        reference.entk_reference(apply_fn, params, xi), got, rtol=2e-4, atol=1e-5
    )


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_numpy_arccos_recursion_equals_analytic_kernel(x, depth):
    _, _, kernel_fn = models.fcn(8, depth, 1, W_std=1.3, b_std=0.2)
    with jax.enable_x64(True):
        want = kernels.analytic(kernel_fn, x[:4].astype(np.float64), x.astype(np.float64))
    nngp, ntk = reference.relu_fcn_kernels(x[:4], x, depth, W_std=1.3, b_std=0.2)
    np.testing.assert_allclose(nngp, want["nngp"], rtol=1e-8)
    np.testing.assert_allclose(ntk, want["ntk"], rtol=1e-8)
    nngp_same, _ = reference.relu_fcn_kernels(x, None, depth, W_std=1.3, b_std=0.2)
    np.testing.assert_allclose(nngp_same[:4], nngp, rtol=1e-12)


def test_fit_power_law_recovers_exponent():
    fit_power_law = pytest.importorskip("ntkrepro.metrics").fit_power_law
    n = np.array([100, 200, 400, 800, 1600])
    a, c = fit_power_law(n, 3e-7 * n**2.5)
    assert a == pytest.approx(2.5, abs=1e-9) and c == pytest.approx(3e-7, rel=1e-9)
    noisy = 2.0 * n**3 * np.exp(np.random.default_rng(0).normal(0, 0.05, n.size))
    assert fit_power_law(n, noisy)[0] == pytest.approx(3.0, abs=0.15)
    for bad in (([1], [1]), ([1, 1], [2, 3]), ([1, 2], [0, 1])):
        with pytest.raises(ValueError):
            fit_power_law(*bad)


def test_time_call_takes_the_median_of_warm_calls():
    calls = []
    out = measure.time_call(lambda: calls.append(1) or np.zeros(3), repeats=3, warmup=2)
    assert len(calls) == 5 and len(out["times_s"]) == 3
    assert out["min_s"] <= out["median_s"] and out["repeats"] == 3
    with pytest.raises(ValueError):
        measure.time_call(lambda: None, repeats=0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux-only")
def test_peak_memory_sees_a_large_temporary():
    small = measure.peak_memory_mib(lambda: np.ones(10).sum())[1]
    value, big = measure.peak_memory_mib(lambda: np.ones(64 * 2**20 // 8).sum())  # 64 MiB
    assert value == 64 * 2**20 // 8
    assert big is not None and small is not None
    assert big >= 60 and small < 30


def test_empirical_ntk_compiles_once_per_model(x, monkeypatch):
    init_fn, apply_fn, _ = models.fcn(16, 1, 2)
    _, params = init_fn(jax.random.PRNGKey(0), x.shape)
    first = kernels._empirical_ntk_fn(apply_fn, "jacobian_contraction", (-1,))
    assert kernels._empirical_ntk_fn(apply_fn, "jacobian_contraction", (-1,)) is first
    assert kernels._empirical_ntk_fn(apply_fn, "jacobian_contraction", ()) is not first
    k1 = kernels.empirical_ntk(apply_fn, params, x, batch_size=4)
    # A second call with new parameters must not trace (or compile) the model again.
    traces = []
    counted = lambda p, xb: traces.append(1) or apply_fn(p, xb)  # noqa: E731
    k_a = kernels.empirical_ntk(counted, params, x, batch_size=4)
    n_traces = len(traces)
    _, params2 = init_fn(jax.random.PRNGKey(1), x.shape)
    k2 = kernels.empirical_ntk(counted, params2, x, batch_size=4)
    assert n_traces > 0 and len(traces) == n_traces
    np.testing.assert_allclose(k_a, k1, rtol=1e-6)
    assert not np.allclose(k1, k2)


def test_time_side_by_side_interleaves_the_calls():
    order = []
    out = measure.time_side_by_side(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=2, warmup=1
    )
    assert order == ["a", "b", "a", "b", "a", "b"] and set(out) == {"a", "b"}
    assert out["a"]["repeats"] == 2 and len(out["b"]["times_s"]) == 2


def test_machine_record_is_json():
    record = measure.machine()
    assert record["cpu_count"] >= 1 and record["versions"]
    json.dumps(record)


def test_benchmark_summary_table(tmp_path):
    record = {
        "name": "entk",
        "machine": {"load_average_1_5_15": [3.0, 2.0, 1.0], "cpu_count": 2},
        "cases": [
            {"case": "mlp n=1000", "ratio": 2.5, "target": ">= 1", "met": True, "peak_mib": 10.0}
        ],
    }
    (tmp_path / "entk.json").write_text(json.dumps(record))
    text = report.markdown(tmp_path)
    assert "mlp n=1000" in text and "2.5" in text and "yes" in text

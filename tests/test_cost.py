"""ntkrepro.cost: XLA's operation counts and the device's measured rates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ntkrepro import cost


def test_a_matrix_product_costs_its_flops_and_its_bytes():
    n = 256
    a = jax.ShapeDtypeStruct((n, n), jnp.float32)
    c = cost.of(jax.jit(lambda x, y: x @ y).lower(a, a))
    assert c.flops == 2 * n**3
    assert c.bytes >= 3 * n * n * 4  # two operands read, the result written
    rates = cost.Rates(flops_per_s=1e9, bytes_per_s=1e8, device="test")
    assert np.isclose(c.seconds(rates), c.flops / 1e9 + c.bytes / 1e8)


def test_the_device_rates_are_measured_once():
    rates = cost.device_rates("this test")
    assert rates.flops_per_s > 1e8 and rates.bytes_per_s > 1e7  # any machine does this much
    assert np.isfinite([rates.flops_per_s, rates.bytes_per_s]).all()
    assert cost.device_rates("this test") is rates

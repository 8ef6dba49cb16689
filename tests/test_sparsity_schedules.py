"""Tests for jaxprune.sparsity.schedules."""

import jax
import numpy as np
import pytest

from jaxprune.sparsity import schedules as sch

KW = dict(final_rate=0.8, begin_step=10, num_prunes=4, frequency=5, initial_rate=0.2)


def _zhu_gupta(t):
    t = min(max(t, 10), 30)
    t = 10 + (t - 10) // 5 * 5
    return 0.8 + (0.2 - 0.8) * (1 - (t - 10) / 20) ** 3


def test_one_shot_and_iterative():
    assert sch.one_shot(0.5) == (0.5,)
    assert sch.iterative(0.5, 5) == (0.1, 0.2, 0.3, 0.4, 0.5)
    assert sch.iterative(0.9, 1) == (0.9,)
    with pytest.raises(ValueError):
        sch.check_rates([0.2, 0.1])
    with pytest.raises(ValueError):
        sch.one_shot(1.5)


def test_gradual_rate_follows_cubic_and_is_jittable():
    rate = jax.jit(lambda s: sch.gradual_rate(s, **KW))
    for t in range(0, 40):
        assert float(rate(t)) == pytest.approx(_zhu_gupta(t), abs=1e-6), t
    assert float(rate(0)) == pytest.approx(0.2)
    assert float(rate(10)) == pytest.approx(0.2)
    assert float(rate(15)) == pytest.approx(0.8 - 0.6 * 0.75**3)
    assert float(rate(30)) == pytest.approx(0.8)
    assert float(rate(1000)) == pytest.approx(0.8)
    assert float(rate(14)) == float(rate(10))


def test_is_pruning_step():
    fn = jax.jit(lambda s: sch.is_pruning_step(s, begin_step=10, num_prunes=4, frequency=5))
    steps = [t for t in range(0, 50) if bool(fn(t))]
    assert steps == [10, 15, 20, 25, 30]
    rates = np.diff([float(sch.gradual_rate(t, **KW)) for t in range(9, 40)])
    changed = [t + 10 for t in np.nonzero(rates)[0]]
    assert changed == [15, 20, 25, 30]
